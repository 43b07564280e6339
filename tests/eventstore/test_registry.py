"""EventRegistry's per-type decoder, as the projection runner uses it."""

from __future__ import annotations

from eventstore import UnknownEvent
from tests.eventstore.sample_events import Note, Ping, sample_registry


def test_a_type_decoder_decodes_text_and_bytes_and_never_raises() -> None:
    registry = sample_registry()
    ping = registry.decoder("Ping")
    assert ping('{"n":3}') == Ping(n=3)
    assert ping(b'{"n":4}') == Ping(n=4)
    mismatched = ping(b'{"n":"four"}')
    assert isinstance(mismatched, UnknownEvent) and mismatched.type == "Ping"
    assert "does not match Ping" in mismatched.reason
    unknown = registry.decoder("Later")(b'{"x":1}')
    assert isinstance(unknown, UnknownEvent) and unknown.type == "Later"
    assert registry.decoder("Note")("{\"text\":\"h\\u00e9\"}") == Note(text="hé")
