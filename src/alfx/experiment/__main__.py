"""``python -m alfx.experiment``: the same as ``alfx-experiment``."""

from alfx.experiment import main

raise SystemExit(main())
