"""What a group of figures implements, and what the harness hands it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import msgspec

from scripts.benchkit._child import BenchError, ChildError, run_child
from scripts.benchkit._figure import Detail, Figure, FigureSpec

__all__ = ["Context", "Group", "Task", "load_group", "serve_child"]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")


@dataclass(frozen=True)
class Context:
    """A group's run: its scratch directory (its own, removed afterwards),
    the workload size, whether to print progress, and which of its figures
    were asked for. Child tasks get one too (``wanted`` is then empty)."""

    group: str
    scratch: Path
    quick: bool = False
    quiet: bool = False
    wanted: frozenset[str] = frozenset()

    def say(self, message: str) -> None:
        """Progress, on stderr, unless the run is quiet."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def wants(self, *specs: FigureSpec) -> bool:
        """Whether any of ``specs`` was asked for."""
        return any(spec.name in self.wanted for spec in specs)

    async def child(self, task: str, params: msgspec.Struct, result: type[R]) -> R:
        """Run this group's child ``task`` in a fresh interpreter
        (:func:`~scripts.benchkit._child.run_child`).

        :raises ChildError: if the child fails.
        """
        return await run_child(f"{self.group}:{task}", params, result, scratch=self.scratch,
                               quick=self.quick, quiet=self.quiet)

    async def figure_in_child(self, spec: FigureSpec, params: msgspec.Struct) -> Figure:
        """``spec``'s figure from the child task of the same name; a failed
        child gives a failed figure that quotes the child's stderr."""
        try:
            figure = await self.child(spec.name, params, Figure)
        except ChildError as exc:
            return spec.failed(str(exc))
        if figure.name != spec.name:
            return spec.failed(f"child task {spec.name} returned figure {figure.name!r}")
        return figure


@dataclass(frozen=True)
class Task(Generic[P]):
    """A child task: the Struct its ``--params`` decode into, and the
    coroutine that measures; its result (a Struct, a Figure, a list of them)
    is printed as JSON."""

    params: type[P]
    run: Callable[[Context, P], Awaitable[object]]


@runtime_checkable
class Group(Protocol):
    """A group of figures. ``run`` measures the figures of ``specs`` that
    ``ctx.wanted`` names (it may measure more; the harness keeps what was
    asked for) and returns them, each made from its spec; a figure it could
    not measure it returns as ``spec.failed(why)``, or leaves out (the
    harness then reports it failed). ``tasks`` are its child tasks, run by
    name through :meth:`Context.child`; ``workload`` describes the sizes it
    measures at, for the report."""

    @property
    def name(self) -> str: ...

    @property
    def specs(self) -> Sequence[FigureSpec]: ...

    @property
    def tasks(self) -> Mapping[str, Task[Any]]: ...

    def workload(self, quick: bool) -> dict[str, Detail]: ...

    async def run(self, ctx: Context) -> list[Figure]: ...


def load_group(module: str) -> Group:
    """The ``GROUP`` a group module defines, imported only now, so that a
    child imports its own group's dependencies and no other's.

    :raises BenchError: if the module defines no such group.
    """
    group = getattr(importlib.import_module(module), "GROUP", None)
    if not isinstance(group, Group):
        raise BenchError(f"{module}: expected a GROUP implementing benchkit.Group, got {group!r}")
    return group


async def serve_child(group: Group, task: str, params: str, ctx: Context) -> bytes:
    """The child's side of the protocol: run ``group``'s ``task`` with
    ``params`` (JSON) and return its result as JSON.

    :raises BenchError: if the group has no such task or the params do not fit it.
    """
    found = group.tasks.get(task)
    if found is None:
        raise BenchError(f"group {group.name} has no child task {task!r}; it has: "
                         f"{', '.join(sorted(group.tasks)) or 'none'}")
    try:
        decoded = msgspec.json.decode(params, type=found.params)
    except msgspec.DecodeError as exc:
        raise BenchError(f"{group.name}:{task}: --params: {exc}") from exc
    return msgspec.json.encode(await found.run(ctx, decoded))
