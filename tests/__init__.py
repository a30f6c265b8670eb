"""alfx's test suite (a package: tests import the installed alfx)."""
