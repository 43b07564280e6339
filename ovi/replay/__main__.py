"""``python -m ovi.replay``."""

from __future__ import annotations

import sys

from ovi.replay._cli import main

# Guarded: the rebuild's worker processes import this module under another name.
if __name__ == "__main__":
    sys.exit(main())
