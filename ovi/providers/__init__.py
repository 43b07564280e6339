"""Cloud providers: the only code that talks to a cloud SDK.

:class:`AWSProvider` is imported on first use: aiobotocore takes a noticeable
fraction of a second to import, which commands that never reach AWS (and the
tests that use :class:`FakeProvider`) need not pay. :class:`FakeProvider` is
too, so that the pure naming rules (``ovi.providers._naming``, which the
config check uses) come without an I/O library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ovi.providers.base import Provider, ProviderError

if TYPE_CHECKING:
    from ovi.providers.aws import AWSProvider
    from ovi.providers.fake import FakeProvider

__all__ = ["AWSProvider", "FakeProvider", "Provider", "ProviderError"]


def __getattr__(name: str) -> object:
    if name == "AWSProvider":
        from ovi.providers.aws import AWSProvider

        return AWSProvider
    if name == "FakeProvider":
        from ovi.providers.fake import FakeProvider

        return FakeProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
