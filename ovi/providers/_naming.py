"""How AWS names what Ovi creates, where the name is Ovi's to choose: pure,
so that the comparator's inputs (and ``backtest``) need no SDK."""

from __future__ import annotations

import re

from ovi.model import DesiredResource, ResourceType

__all__ = ["db_identifier", "natural_id"]

_MAX_IDENTIFIER = 63


def db_identifier(resource_id: str) -> str:
    """A valid DB instance identifier for ``resource_id``: 1 to 63 lowercase
    letters, digits and single hyphens, starting with a letter."""
    ident = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", resource_id.lower())).strip("-")
    if not ident[:1].isalpha():
        ident = f"ovi-{ident}" if ident else "ovi"
    return ident[:_MAX_IDENTIFIER].rstrip("-")


def natural_id(desired: DesiredResource) -> str | None:
    """The cloud id a create of ``desired`` takes: the bucket name (the
    desired id) for S3, the DB identifier for RDS; ``None`` for EC2, whose
    instance ids AWS picks."""
    if desired.type is ResourceType.S3:
        return desired.id
    if desired.type is ResourceType.RDS:
        return db_identifier(desired.id)
    return None
