"""``python -m ovi.replay``."""

from __future__ import annotations

import sys

from ovi.replay._cli import main

if __name__ == "__main__":
    sys.exit(main())
