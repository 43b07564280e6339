"""Choosing a backend from a spec, and DSNs shown without their passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

import eventstore
from eventstore import PostgresEventStore, SQLiteEventStore, mask_dsn, store_for
from eventstore._dsn import DEFAULT_APPLICATION_NAME, connect_settings
from tests.eventstore.sample_events import sample_registry


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://ovi:hunter2@db:5432/ovi", "postgresql://ovi:***@db:5432/ovi"),
        ("postgres://ovi:p%40ss%2Fw@db/ovi?sslmode=require",
         "postgres://ovi:***@db/ovi?sslmode=require"),
        ("postgresql://ovi:p@ss/w@db/ovi", "postgresql://ovi:***@db/ovi"),  # unescaped
        ("postgresql://ovi@db/ovi?password=hunter2&sslmode=require",
         "postgresql://ovi@db/ovi?password=***&sslmode=require"),
        ("postgresql://db/ovi?sslpassword=k3y&Password=x", "postgresql://db/ovi?sslpassword=***&Password=***"),
        ("postgresql://ovi:p?ss#w@db/ovi", "postgresql://ovi:***@db/ovi"),  # unescaped ? and #
        ("postgresql://ovi:pw@db/ovi?application_name=a@b",
         "postgresql://ovi:***@b"),  # an @ after the query: more is masked, never less
        ("postgresql://ovi@h1:5432,h2:5433/ovi", "postgresql://ovi@h1:5432,h2:5433/ovi"),
        ("postgresql:///ovi?host=/run/postgresql", "postgresql:///ovi?host=/run/postgresql"),
        ("host=db user=ovi password=hunter2 dbname=ovi",
         "host=db user=ovi password=*** dbname=ovi"),
        ("host=db password = 'hun ter\\'2' dbname=ovi", "host=db password = *** dbname=ovi"),
    ],
)
def test_mask_dsn_hides_every_password(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown


def test_connect_settings_take_what_asyncpg_leaves_out() -> None:
    settings = connect_settings(
        "postgresql://ovi:p%40ss@db/ovi?connect_timeout=3&sslmode=require",
        defaults={"lock_timeout": "10000ms"},
        forced={"search_path": '"ovi"'},
        environ={"PGAPPNAME": "ovi-host-a", "PGOPTIONS": "-cwork_mem=8MB",
                 "PGPASSWORD": "from-env", "PGCONNECT_TIMEOUT": "99"},
    )
    # connect_timeout is libpq's, not a server setting: taken out, and it wins over the env
    assert settings.dsn == "postgresql://ovi:p%40ss@db/ovi?sslmode=require"
    assert settings.timeout == 3.0
    assert settings.server_settings == {
        "application_name": "ovi-host-a",
        "options": "-cwork_mem=8MB",
        "lock_timeout": "10000ms",
        "search_path": '"ovi"',
    }
    assert sorted(settings.secrets) == ["from-env", "p@ss"]


def test_what_the_dsn_says_wins_over_environment_and_defaults() -> None:
    settings = connect_settings(
        "postgresql://db/ovi?application_name=mine&options=-csearch_path%3Dx&lock_timeout=1s",
        defaults={"lock_timeout": "10000ms"},
        forced={},
        environ={"PGAPPNAME": "env", "PGOPTIONS": "-cwork_mem=8MB", "PGCONNECT_TIMEOUT": "0"},
    )
    assert settings.server_settings == {}  # asyncpg sends the DSN's own as they are
    assert settings.timeout is None  # libpq: 0 waits for ever
    assert settings.secrets == []
    plain = connect_settings("postgresql://db/ovi", defaults={}, forced={}, environ={})
    assert (plain.timeout, plain.server_settings) == (
        10.0, {"application_name": DEFAULT_APPLICATION_NAME})


@pytest.mark.parametrize(
    ("dsn", "environ", "named"),
    [
        ("postgresql://db/ovi?connect_timeout=soon", {}, "the DSN's connect_timeout"),
        ("postgresql://db/ovi", {"PGCONNECT_TIMEOUT": "10s"}, "PGCONNECT_TIMEOUT"),
    ],
)
def test_a_bad_connect_timeout_is_named(dsn: str, environ: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=f"{named}: expected a number of seconds, got"):
        connect_settings(dsn, defaults={}, forced={}, environ=environ)


@pytest.mark.parametrize(
    "spec",
    ["postgresql://ovi@db/ovi", "postgres://ovi@db/ovi", "PostgreSQL://ovi@db/ovi"],
)
def test_store_for_a_dsn_is_a_postgres_store(spec: str) -> None:
    store = store_for(spec, sample_registry(), instance_id="me")
    assert isinstance(store, PostgresEventStore)
    assert store.instance_id == "me"


@pytest.mark.parametrize("spec", ["ovi.db", "/var/lib/ovi/ovi.db", "postgresql.db",
                                  "./postgresql:/x"])
def test_store_for_anything_else_is_a_sqlite_file(spec: str) -> None:
    store = store_for(spec, sample_registry())
    assert isinstance(store, SQLiteEventStore)
    assert store.path == Path(spec)
    assert isinstance(store_for(Path(spec), sample_registry()), SQLiteEventStore)


def test_store_for_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a path or a postgresql:// URL"):
        store_for("", sample_registry())


def test_the_package_exports_both_backends_and_the_helpers() -> None:
    for name in ("PostgresEventStore", "SQLiteEventStore", "store_for", "mask_dsn",
                 "ImportRejectedError"):
        assert name in eventstore.__all__
        assert getattr(eventstore, name) is not None
    missing = "Nope"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        getattr(eventstore, missing)


def test_secrets_include_the_pieces_of_a_password_a_parser_splits() -> None:
    settings = connect_settings("postgresql://u:p?Zq9-not-for-eyes@db/ovi", defaults={},
                                forced={}, environ={})
    assert sorted(settings.secrets) == ["Zq9-not-for-eyes", "p?Zq9-not-for-eyes"]


@pytest.mark.parametrize("spec", [
    "host=db user=ovi password=hunter2 dbname=ovi", "dbname=ovi", "  HOST = db port=5432"])
def test_libpq_key_value_form_is_refused_not_taken_for_a_path(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use a postgresql:// URL") as refused:
        store_for(spec, sample_registry())
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("spec", ["ovi.db", "logs/host=a.db", "a b=c.db"])
def test_paths_with_an_equals_sign_stay_sqlite_paths(spec: str) -> None:
    assert isinstance(store_for(spec, sample_registry()), SQLiteEventStore)
