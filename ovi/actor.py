"""Who runs this command: the actor recorded with pauses, resumes and approvals.

``--by`` is free text a person chooses; the OS account (uid and name) and the
host are what the process runs as, recorded beside it so that an audit does
not rest on a name anyone can type.
"""

from __future__ import annotations

import os
import pwd
import socket

from ovi.events import Actor

__all__ = ["current_actor"]


def current_actor(by: str | None = None) -> Actor:
    """The actor of this process: ``by`` (default: the user name), the real
    uid and its name, and the host name."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers, DynamicUser)
        user = os.environ.get("USER") or str(uid)
    return Actor(by=by or user, user=user, uid=uid, host=socket.gethostname())
