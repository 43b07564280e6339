"""A reconcile environment on real SQLite files: store, projections, engine,
fake provider and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventstore import (
    ANY,
    Event,
    EventStore,
    MirroredStore,
    PostgresEventStore,
    RecordedEvent,
    SQLiteEventStore,
)
from ovi.config import Config, parse_config
from ovi.engine import CycleResult, Engine
from ovi.events import ActionExecuted, registry, resource_stream
from ovi.model import (
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    Action,
    CycleMode,
    Resource,
    ResourceType,
)
from ovi.providers.fake import FakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.postgres import LOG_BACKENDS, mirrored_log


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Env:
    """Everything a cycle needs, wired together."""

    def __init__(self, store: EventStore, views: ProjectionRunner,
                 provider: FakeProvider, clock: Callable[[], datetime], *,
                 claim_ttl: timedelta = timedelta(minutes=10)) -> None:
        self.store = store
        self.views = views
        self.provider = provider
        self._clock = clock
        # The engine reads the store's clock (the harness gives the store ``clock``).
        self.engine = Engine(store, views, provider, claim_ttl=claim_ttl)

    @property
    def clock(self) -> Clock:
        """The hand-moved clock (every environment but a real-time one has it)."""
        if not isinstance(self._clock, Clock):
            raise TypeError("this environment runs on the real clock")
        return self._clock

    async def cycle(self, config: Config | str) -> CycleResult:
        """One plan cycle (nothing executed)."""
        if isinstance(config, str):
            config = parse_config(config, "test.yaml")
        return await self.engine.run_cycle(config, source="test.yaml")

    async def apply(self, config: Config | str, *, dry_run: bool = False,
                    max_concurrency: int | None = None) -> CycleResult:
        """One apply cycle."""
        if isinstance(config, str):
            config = parse_config(config, "test.yaml")
        return await self.engine.run_cycle(config, source="test.yaml", mode=CycleMode.APPLY,
                                           dry_run=dry_run, max_concurrency=max_concurrency)

    async def record_created(self, *resources: Resource) -> None:
        """What the log says when Ovi itself created ``resources`` (one earlier
        cycle's executed creates): their deletes then need no approval of
        their provenance."""
        for r in resources:
            await self.store.append(resource_stream(r.tags[ID_TAG]), [ActionExecuted(
                cycle_id="earlier", decision_id=f"d-made-{r.cloud_id}", action=Action.CREATE,
                resource_id=r.tags[ID_TAG], cloud_id=r.cloud_id, token=0)])

    async def append_as(self, instance_id: str, stream: str, events: Sequence[Event], *,
                        expected_version: int | None = ANY) -> None:
        """Append as another instance would (its id in the rows): a crashed
        one's write-ahead is recorded by that instance, under its claim."""
        store = self.store
        other: EventStore
        if isinstance(store, MirroredStore):
            shared = store.shared
            assert isinstance(shared, PostgresEventStore)
            other = PostgresEventStore(shared._dsn, registry(), schema=shared.schema,
                                       instance_id=instance_id, clock=self._clock)
        else:
            assert isinstance(store, SQLiteEventStore)
            other = SQLiteEventStore(store.path, registry(), instance_id=instance_id,
                                     clock=self._clock)
        async with other:
            await other.append(stream, events, expected_version=expected_version)

    async def events(self, after: int = 0) -> list[RecordedEvent]:
        return [e async for e in self.store.read(after=after)]

    async def types(self, after: int = 0) -> list[str]:
        return [e.type for e in await self.events(after)]


@asynccontextmanager
async def _log(path: Path, backend: str, instance_id: str,
               clock: Callable[[], datetime]) -> AsyncIterator[EventStore]:
    if backend == "sqlite":
        async with SQLiteEventStore(path, registry(), instance_id=instance_id,
                                    clock=clock) as store:
            yield store
        return
    if backend != "postgres-mirror":
        raise ValueError(f"backend: expected one of {LOG_BACKENDS}, got {backend!r}")
    async with mirrored_log(path, registry(), instance_id=instance_id, clock=clock) as store:
        yield store


@asynccontextmanager
async def environment(tmp_path: Path, *resources: Resource, log_name: str = "ovi.db",
                      instance_id: str = "test", real_time: bool = False,
                      claim_ttl: timedelta = timedelta(minutes=10),
                      backend: str = "sqlite") -> AsyncIterator[Env]:
    """An environment on ``tmp_path/log_name``; ``real_time`` runs it on the
    wall clock (claims that expire while a test waits). ``backend`` is one
    of :data:`LOG_BACKENDS` (the ``log_backend`` fixture's value); with
    ``postgres-mirror``, ``log_name`` is the mirror."""
    clock: Callable[[], datetime] = (lambda: datetime.now(UTC)) if real_time else Clock()
    path = tmp_path / log_name
    async with _log(path, backend, instance_id, clock) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        yield Env(store, views, FakeProvider(resources), clock, claim_ttl=claim_ttl)


def managed(resource_id: str, cloud_id: str, *, type_: ResourceType = ResourceType.EC2,
            region: str = "us-east-1", size: str | None = "t3.micro", owner: str = "ovi",
            **tags: str) -> Resource:
    """A resource as Ovi would have created it."""
    return Resource(
        id=resource_id, cloud_id=cloud_id, type=type_, provider="aws", region=region,
        size=size if type_ != ResourceType.S3 else None, status="running",
        tags={ID_TAG: resource_id, MANAGED_TAG: "true", OWNER_TAG: owner, **tags},
    )


def unmanaged(cloud_id: str, *, type_: ResourceType = ResourceType.EC2,
              region: str = "us-east-1", **tags: str) -> Resource:
    return Resource(id=cloud_id, cloud_id=cloud_id, type=type_, provider="aws", region=region,
                    size="t3.micro" if type_ == ResourceType.EC2 else None,
                    status="running", tags=dict(tags))


def config_text(*specs: str, rules: str = "") -> str:
    body = "".join(f"  - {spec}\n" for spec in specs)
    text = f"version: v1\nprovider: aws\nregion: us-east-1\nresources:\n{body}"
    if not specs:
        text = "version: v1\nprovider: aws\nregion: us-east-1\nresources: []\n"
    if rules:
        text += "rules:\n" + "".join(f"  {line}\n" for line in rules.splitlines())
    return text
