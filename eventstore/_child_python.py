"""Starting a Python child that runs one of our own modules (the SQLite
import helper; an application's fold workers): the command and the
environment, chosen so the child runs the code its parent runs and learns
nothing it does not need.

- ``-P``: the working directory is never put on the child's ``sys.path``.
  With ``python -m``, it otherwise comes first, and an operator running Ovi
  from inside another checkout (an older Ovi, say) would get that
  checkout's modules in the child, half old and half new.
- ``PYTHONPATH`` starts with the directory the parent imported the package
  from, so the same code is found even when it is not installed.
- Nothing else of the parent's environment is passed but what a Python
  process needs to start and behave alike (locale, temp dir, hash seed,
  bytecode settings): the parent's may hold a database password
  (``PGPASSWORD``, a DSN in ``OVI_STORE``) or where its credentials are
  (``CREDENTIALS_DIRECTORY``), and a child that only writes a file or folds
  a log has no use for them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "child_command", "child_environment"]

#: where this package is imported from (a site-packages, or a checkout)
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

_PASSED = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
    "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONUTF8",
    "PYTHONIOENCODING", "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "VIRTUAL_ENV",
})


def child_command(module: str, *args: str) -> list[str]:
    """``python -P -m module args…`` with this interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def child_environment(root: str = PACKAGE_ROOT) -> dict[str, str]:
    """The child's environment: what a Python process needs of this one's,
    and ``PYTHONPATH`` with ``root`` first."""
    env = {name: value for name, value in os.environ.items()
           if name in _PASSED or name.startswith("LC_")}
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (root, os.environ.get("PYTHONPATH", "")) if part)
    return env
