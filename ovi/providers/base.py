"""The provider contract: observe a scope, create, adopt, update, delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ovi._exceptions import OviError
from ovi.model import (
    BLESSED_TAG,
    ID_TAG,
    OWNER_TAG,
    DesiredResource,
    FieldChange,
    Resource,
    Scope,
    Unreadable,
)

__all__ = [
    "ADOPT_GUARD",
    "DELETE_GUARD",
    "CreatedResourceGone",
    "Provider",
    "ProviderError",
    "check_unchanged",
    "create_token",
]


def create_token(decision_id: str, attempt: int = 1) -> str:
    """The idempotency token of a create: the decision id for its first
    attempt (what logs before attempts were recorded used), then
    ``<decision id>.<attempt>``. AWS's ``ClientToken`` takes up to 64 ASCII
    characters."""
    return decision_id if attempt <= 1 else f"{decision_id}.{attempt}"


class ProviderError(OviError):
    """A provider call failed. ``retryable`` tells transient (throttling, 5xx,
    timeouts) from permanent failures (access denied, validation).

    ``operation`` names the cloud API call when there was one
    (``ec2:RunInstances``) and ``code`` the cloud's error code
    (``UnauthorizedOperation``); both are ``None`` when they do not apply.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        operation: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.operation = operation
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are lost by the default exception pickling.
        return (
            _rebuild_provider_error,
            (str(self), self.retryable, self.operation, self.code),
        )


def _rebuild_provider_error(
    message: str, retryable: bool, operation: str | None, code: str | None
) -> ProviderError:
    return ProviderError(message, retryable=retryable, operation=operation, code=code)


class CreatedResourceGone(ProviderError):
    """A create's idempotency token answered with the resource an earlier
    call with that token made, and that resource is gone (terminated, or the
    token was first used with other parameters and nothing it made is alive).
    Retrying with the same token can never create anything: the next attempt
    needs a new token (:func:`create_token`), recorded before it is used.
    ``cloud_id`` names the dead resource when known."""

    def __init__(self, message: str, *, operation: str | None = None,
                 code: str | None = None, cloud_id: str | None = None) -> None:
        super().__init__(message, retryable=False, operation=operation,
                         code=code or "CreatedResourceGone")
        self.cloud_id = cloud_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_gone, (str(self), self.operation, self.code, self.cloud_id))


def _rebuild_gone(message: str, operation: str | None, code: str | None,
                  cloud_id: str | None) -> CreatedResourceGone:
    return CreatedResourceGone(message, operation=operation, code=code, cloud_id=cloud_id)


class Provider(Protocol):
    """What the engine and executor need from a cloud.

    Every method may raise :class:`ProviderError`; nothing else escapes an
    implementation.
    """

    name: str

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        """Every live resource of ``scope`` (terminated/deleting ones left
        out), with an empty ``id`` (the observer assigns identities). One that
        was listed but cannot be read is an :class:`~ovi.model.Unreadable`;
        the rest of the scope is still returned."""
        ...

    # adopt, create and update return the resource as the cloud answered,
    # with an empty ``id`` too: the provider does not know Ovi's identities,
    # the executor records the result under the decision's resource id.

    def natural_id(self, desired: DesiredResource) -> str | None:
        """The cloud id a create of ``desired`` would take when the cloud names
        resources after it (an S3 bucket's name), so that a resource already
        holding that name is found before any call; ``None`` when the cloud
        picks the id."""
        ...

    async def adopt(self, desired: DesiredResource, current: Resource, *, decision_id: str,
                    owner: str) -> Resource:
        """Make the existing ``current`` Ovi's ``desired``: tag it with
        ``ovi:id``, ``ovi:managed``, ``ovi:owner``, ``ovi:decision`` and the
        declared tags, keeping its other tags; refuse if its Ovi tags changed
        since it was observed."""
        ...

    async def create(self, desired: DesiredResource, *, decision_id: str, owner: str,
                     attempt: int = 1, token_unused: bool = False) -> Resource:
        """Create ``desired`` tagged with ``ovi:id``, ``ovi:managed``, ``ovi:owner``,
        ``ovi:decision`` and its declared tags. Idempotent per (``decision_id``,
        ``attempt``): the idempotency token is ``create_token(decision_id,
        attempt)``, and a live resource this decision made (any attempt) is
        returned instead of creating another.

        ``token_unused`` is the executor's word that no call was ever made for
        this decision: the log holds no write-ahead of it but the one just
        recorded, under a claim nobody held unreleased before, and this is the
        first call of the first attempt. Nothing can answer to the token or
        carry the decision's tag then, so a provider may skip looking (EC2: a
        listing before the launch and one after it, two of its three calls).

        :raises CreatedResourceGone: if the token answers with a resource an
            earlier call made that is gone: only a new attempt can create it.
        """
        ...

    async def update(
        self, desired: DesiredResource, current: Resource, changes: Sequence[FieldChange]
    ) -> Resource:
        """Bring ``current`` in line with ``desired`` for the given changes.

        ``current`` is the resource as the decision saw it, and it decides what
        a disruptive change restores: a resize that must stop the resource
        starts it again iff ``current`` was running, whatever state a retry
        finds it in (a retry resumes, it never decides afresh). A change of
        ``status`` to ``running`` starts a resource Ovi left stopped.
        """
        ...

    async def delete(self, current: Resource) -> None:
        """Delete ``current``."""
        ...


#: Tags that must not have moved since the observation an adoption was decided
#: on: someone else may have taken the resource meanwhile.
ADOPT_GUARD = (OWNER_TAG, ID_TAG)
#: ... and for a delete, also whether it was blessed since: a person who marks
#: a resource ``ovi:blessed=true`` after it was approved for deletion has
#: spoken last.
DELETE_GUARD = (OWNER_TAG, ID_TAG, BLESSED_TAG)


def check_unchanged(current: Resource, tags: dict[str, str], operation: str, *,
                    guard: Sequence[str], doing: str) -> None:
    """Refuse to go on with ``doing`` on ``current`` (the resource as the
    decision saw it) when one of the ``guard`` tags reads differently now
    (``tags``, read just before the call).

    :raises ProviderError: not retryable, code ``ChangedSinceObserved``; the
        next cycle decides afresh on what is there now.
    """
    for key in guard:
        if tags.get(key) != current.tags.get(key):
            raise ProviderError(
                f"{operation} {current.id or current.cloud_id} in {current.region}: not"
                f" {doing}: its {key} tag changed since it was observed"
                f" ({current.tags.get(key)!r} → {tags.get(key)!r})",
                operation=operation, code="ChangedSinceObserved")
