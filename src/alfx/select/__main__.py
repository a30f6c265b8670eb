"""``python -m alfx.select``: the same as ``alfx-select``."""

from alfx.select import main

raise SystemExit(main())
