"""The audit and debugging tool over an Ovi event log: ``python -m ovi.replay``.

Subcommands (``docs/replay.md`` has the details and the JSON shapes)::

    log [--since T] [--until T] [--type TYPE …] [--resource ID] [--cycle ID] [--limit N]
    timeline RESOURCE
    why RESOURCE [--decision ID]
    state [--at REV|TIME] [--all]
    stats [--since T]
    verify
    rebuild [--in-place]
    follow [filters of log]
    backtest --config NEW.yaml [--since T]
    copy --from STORE --to STORE

Every subcommand takes ``--store`` (default ``$OVI_STORE``, else ``./ovi.db``;
never created; a ``postgresql://`` URL is read through this host's mirror,
``--mirror``, else ``$OVI_MIRROR``, else ``./ovi-mirror.db``) and ``--json``.
Exit codes: 0 ok, 1 error or verification failure, 2 usage, 3 backtest
differences.
"""

from __future__ import annotations

from ovi.replay._backtest import BacktestReport, backtest
from ovi.replay._cli import main
from ovi.replay._errors import ReplayError
from ovi.replay._rebuild import RebuildReport, rebuild_and_compare
from ovi.replay._stats import collect_stats
from ovi.replay._verify import Verification, verify_log
from ovi.replay._why import Chain, explain

__all__ = [
    "BacktestReport",
    "Chain",
    "RebuildReport",
    "ReplayError",
    "Verification",
    "backtest",
    "collect_stats",
    "explain",
    "main",
    "rebuild_and_compare",
    "verify_log",
]
