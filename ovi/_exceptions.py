"""Errors raised by Ovi.

Every error Ovi raises on purpose derives from :class:`OviError`; third-party
exceptions (``yaml.YAMLError``, ``msgspec.ValidationError``, …) are translated
at the boundary and chained with ``from``::

    OviError
     ├── ConfigError    the config file is unreadable or invalid; nothing is executed
     ├── PolicyError    a decision policy broke its contract (relaxed a decision)
     └── ProviderError  a cloud call failed (ovi.providers.base); ``retryable`` tells
                        throttling/5xx/timeouts from permanent refusals

New branches (provider, coordination, …) hang directly off ``OviError``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "OviError", "PolicyError"]


class OviError(Exception):
    """Root of every error Ovi raises on purpose."""


class ConfigError(OviError):
    """The config file cannot be used.

    ``file`` is the file as the caller named it, ``path`` the field path
    (``resources[1].count``; empty for the whole file), ``line`` the 1-based
    line of the offending node when known, ``expected`` what a valid value
    looks like and ``got`` what was found (already rendered, ``None`` if it
    adds nothing). ``str()`` gives one line::

        ovi.yaml:7: resources[1].count: expected an integer ≥ 0, got -1
    """

    def __init__(
        self,
        file: str,
        path: str,
        expected: str,
        *,
        line: int | None = None,
        got: str | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.line = line
        self.expected = expected
        self.got = got
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" {self.path}:" if self.path else ""
        tail = "" if self.got is None else f", got {self.got}"
        return f"{where}:{field} expected {self.expected}{tail}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are lost by the default exception pickling.
        return (_rebuild_config_error, (self.file, self.path, self.expected, self.line, self.got))


def _rebuild_config_error(
    file: str, path: str, expected: str, line: int | None, got: str | None
) -> ConfigError:
    return ConfigError(file, path, expected, line=line, got=got)


class PolicyError(OviError):
    """A policy returned decisions that are not a more cautious version of its input."""

    def __init__(self, policy: str, reason: str) -> None:
        self.policy = policy
        self.reason = reason
        super().__init__(f"policy {policy!r} broke its contract: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (PolicyError, (self.policy, self.reason))
