"""Who runs this command: the actor recorded with pauses, resumes and approvals.

``--by`` is free text a person chooses; the OS account (uid and name) and the
host are what the process runs as, recorded beside it so that an audit does
not rest on a name anyone can type.
"""

from __future__ import annotations

import os
import pwd
import socket
import unicodedata

from ovi._exceptions import OviError
from ovi.events import Actor

__all__ = ["check_free_text", "current_actor"]

# Control and format characters (a newline, an escape sequence, a bidi
# override) and line separators would let free text print as something else:
# a line of `why` that reads as another person's approval.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_free_text(option: str, text: str) -> str:
    """``text`` given as ``option``, refused if it holds a character that
    does not print as itself on one line.

    :raises OviError: naming the option and the first such character.
    """
    for index, char in enumerate(text):
        if unicodedata.category(char) in _UNPRINTABLE:
            raise OviError(f"{option}: expected text on one line without control characters,"
                           f" got {char!r} at character {index + 1}")
    return text


def current_actor(by: str | None = None) -> Actor:
    """The actor of this process: ``by`` (default: the user name), the real
    uid and its name, and the host name.

    :raises OviError: if ``by`` holds a control character.
    """
    if by is not None:
        check_free_text("--by", by)
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers, DynamicUser)
        user = os.environ.get("USER") or str(uid)
    return Actor(by=by or user, user=user, uid=uid, host=socket.gethostname())
