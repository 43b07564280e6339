"""``python -m ovi``: the same as the ``ovi`` command."""

from __future__ import annotations

import sys

from ovi.cli import main

sys.exit(main())
