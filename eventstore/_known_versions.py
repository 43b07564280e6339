"""Stream versions a writer already knows, so a commit need not read them.

Every commit checks expected versions against the stream versions in the log,
read under the write lock. When this store was the last to commit, those are
the versions it wrote: a store remembers them together with the head its
commit left, and trusts them only while the log's head (read under the lock
at every commit anyway) is still that head. The head's hash commits to every
row before it, so an unchanged head means no other writer has committed
since, and the versions read from the log would be these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["KnownVersions"]

#: streams remembered at most; past this the memory starts again from the
#: streams of the latest commit (a service touches a few thousand streams)
LIMIT = 20_000


class KnownVersions:
    """The versions of the streams this store committed last, and the head
    its commit left. Used only inside the store's write transactions (one
    at a time, on its writer's thread)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._head: tuple[int, str] | None = None
        self._versions: dict[str, int] = {}

    def split(self, head: tuple[int, str], streams: Iterable[str]) -> tuple[dict[str, int],
                                                                          set[str]]:
        """The versions of ``streams`` known as of ``head`` (the log's head,
        read under the write lock), and the streams whose versions must be
        read from the log. Knows nothing after another writer's commit."""
        if head != self._head:
            self.forget()
            return {}, set(streams)
        known: dict[str, int] = {}
        unknown: set[str] = set()
        versions = self._versions
        for stream in streams:
            version = versions.get(stream)
            if version is None:
                unknown.add(stream)
            else:
                known[stream] = version
        return known, unknown

    def committed(self, head: tuple[int, str], versions: Mapping[str, int]) -> None:
        """A commit that started from the head :meth:`split` was given left
        ``head``, with the streams it touched at ``versions`` (read or
        written by it). Call only once the commit succeeded."""
        if len(self._versions) + len(versions) > self._limit:
            self._versions.clear()
        self._versions.update(versions)
        self._head = head

    def forget(self) -> None:
        self._head = None
        self._versions.clear()
