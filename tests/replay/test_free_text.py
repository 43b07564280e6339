"""Free text a person types (``--by``, ``--reason``) is refused when it holds a
character that would not print as itself, and text already recorded (by an
older Ovi, or written into the log by hand) is printed escaped."""

from __future__ import annotations

import pytest

from ovi._exceptions import OviError
from ovi.actor import check_free_text, current_actor
from ovi.events import Actor
from ovi.replay._describe import who


@pytest.mark.parametrize("text", ["mallory\n 4 approval", "a\x1b[2Kb", "x\u202eevil", "a\u2028b"])
def test_free_text_that_would_not_print_as_itself_is_refused(text: str) -> None:
    with pytest.raises(OviError, match=r"^--by: expected text on one line"):
        current_actor(text)
    with pytest.raises(OviError, match=r"^--reason: "):
        check_free_text("--reason", text)


def test_recorded_free_text_is_printed_escaped() -> None:
    actor = Actor(by="mallory\n 4 approval   granted by alice", user="m\x1bx", uid=1000,
                  host="h\r")
    shown = who(actor.by, actor)
    assert shown == ("mallory\\n 4 approval   granted by alice (user m\\x1bx, uid 1000 on"
                     " h\\r)")
    assert current_actor("Zoë Ødegård, ops").by == "Zoë Ødegård, ops"
