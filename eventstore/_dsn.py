"""PostgreSQL connection strings: telling them from paths, showing them
without their password, and the connection settings the driver leaves out.

asyncpg reads most of libpq's environment (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGPASSWORD``, ``PGPASSFILE``, ``PGDATABASE``, ``PGSERVICE``,
``PGSERVICEFILE``, ``PGSSLMODE`` and the other ``PGSSL*`` files,
``PGTARGETSESSIONATTRS``, ``PGKRBSRVNAME``, ``PGGSSLIB``) but not
``PGCONNECT_TIMEOUT``, ``PGAPPNAME`` or ``PGOPTIONS``, and it sends a
``connect_timeout`` query parameter to the server as a setting (which the
server refuses). :func:`connect_settings` fills those gaps, so a DSN means
what it means to ``psql``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote

import msgspec

__all__ = ["ConnectSettings", "connect_settings", "is_postgres_dsn", "looks_like_conninfo",
           "mask_dsn", "scrub"]

_SCHEMES = ("postgresql://", "postgres://")
_MASK = "***"
_QUERY_SECRET = re.compile(r"(?i)(^|&)((?:ssl)?password)=[^&#]*")
#: a libpq keyword at the start of a ``key=value`` pair
_CONNINFO = re.compile(r"(?i)(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|service"
                       r"|sslmode|options|application_name|connect_timeout|target_session_attrs)"
                       r"\s*=")
_KEYWORD_SECRET = re.compile(r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
#: the application name sessions carry unless the DSN or ``$PGAPPNAME`` says otherwise
DEFAULT_APPLICATION_NAME = "ovi-eventstore"
DEFAULT_CONNECT_TIMEOUT = 10.0


def is_postgres_dsn(spec: str) -> bool:
    """Whether ``spec`` is a ``postgresql://`` or ``postgres://`` URL (any case)."""
    return spec[:13].lower().startswith(_SCHEMES)


def looks_like_conninfo(spec: str) -> bool:
    """Whether ``spec`` is libpq's ``key=value`` form (``host=db dbname=ovi
    …``), which the store does not take: it must not become a file name."""
    return not is_postgres_dsn(spec) and _CONNINFO.search(spec) is not None


def _split(dsn: str) -> tuple[str, str, str]:
    """``scheme://``, the user info (empty without one) and the rest.

    The user info ends at the last ``@`` ahead of the query (``?``) or
    fragment (``#``); but if an ``@`` follows one of those, a password may
    hold an unescaped ``?`` or ``#``, and the user info runs to the first such
    ``@``. That may mask more than the password (a query value with an ``@``
    in it), never less. A password with an unescaped ``/`` or ``@`` still
    ends up in the user info, so it is masked all the same."""
    scheme_end = dsn.index("://") + 3
    rest = dsn[scheme_end:]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    late = rest.find("@", cut)
    at = late if late >= 0 else rest[:cut].rfind("@")
    if at < 0:
        return dsn[:scheme_end], "", rest
    return dsn[:scheme_end], rest[:at], rest[at:]


def mask_dsn(dsn: str) -> str:
    """``dsn`` with every password replaced by ``***``: the one in a URL's
    user info, a ``password=`` (or ``sslpassword=``) query parameter, or a
    ``password=`` keyword of the ``key=value`` form. Use it wherever a DSN is
    shown: messages, logs, reprs."""
    if "://" not in dsn:
        return _KEYWORD_SECRET.sub(lambda m: m.group(1) + _MASK, dsn)
    scheme, userinfo, rest = _split(dsn)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
    address, question, query = rest.partition("?")
    if question:
        query = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}={_MASK}", query)
    return f"{scheme}{userinfo}{address}{question}{query}"


def _secrets(dsn: str, environ: Mapping[str, str]) -> list[str]:
    found = []
    if "://" in dsn:
        _, userinfo, rest = _split(dsn)
        if ":" in userinfo:
            password = unquote(userinfo.split(":", 1)[1])
            found.append(password)
            # A parser that split the URL inside the password (at a raw ``?``,
            # ``#``, ``/`` or ``@``) quotes the pieces: scrub those too.
            found += [piece for piece in re.split(r"[?#/@]", password)[1:] if len(piece) >= 4]
        found += [value for key, value in parse_qsl(rest.partition("?")[2])
                  if key.lower() in ("password", "sslpassword")]
    if environ.get("PGPASSWORD"):
        found.append(environ["PGPASSWORD"])
    return [secret for secret in found if secret]


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``: for messages a
    driver or server wrote, which might quote what they were given."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


class ConnectSettings(msgspec.Struct, frozen=True):
    """What to hand the driver for one DSN (see the module docstring)."""

    dsn: str
    #: seconds to wait for a connection; None waits for ever
    timeout: float | None
    server_settings: dict[str, str]
    #: the passwords in play, to scrub from any message
    secrets: list[str]


def connect_settings(
    dsn: str,
    *,
    defaults: Mapping[str, str],
    forced: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> ConnectSettings:
    """The driver's arguments for ``dsn``: ``connect_timeout`` taken out of
    the query (else ``$PGCONNECT_TIMEOUT``, else 10 s), ``application_name``
    and ``options`` from ``$PGAPPNAME`` and ``$PGOPTIONS`` unless the DSN has
    them, the ``defaults`` session settings unless the DSN sets them itself,
    and the ``forced`` ones in any case (the caller asked for them by name).

    :raises ValueError: if ``connect_timeout`` is not a number of seconds.
    """
    env = os.environ if environ is None else environ
    base, _, query = dsn.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    timeout_text = next((v for k, v in pairs if k == "connect_timeout"), None)
    source = "the DSN's connect_timeout"
    if timeout_text is None:
        timeout_text, source = env.get("PGCONNECT_TIMEOUT"), "PGCONNECT_TIMEOUT"
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    if timeout_text:
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise ValueError(
                f"{source}: expected a number of seconds, got {timeout_text!r}"
            ) from None
        if timeout <= 0:  # libpq: 0 or less waits for ever
            timeout = None
    kept = "&".join(part for part in query.split("&")
                    if part and part.split("=", 1)[0] != "connect_timeout")
    given = {key for key, _ in pairs}
    unless_given = {
        "application_name": env.get("PGAPPNAME") or DEFAULT_APPLICATION_NAME,
        "options": env.get("PGOPTIONS", ""),
        **defaults,
    }
    settings = {key: value for key, value in unless_given.items()
                if key not in given and value}
    settings.update(forced)
    return ConnectSettings(
        dsn=f"{base}?{kept}" if kept else base,
        timeout=timeout,
        server_settings=settings,
        secrets=_secrets(dsn, env),
    )
