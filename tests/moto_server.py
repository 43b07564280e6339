"""A moto server on loopback for tests that talk to "AWS".

moto's in-process ``mock_aws`` does not work with aiobotocore, so the AWS
provider is tested against moto in server mode. The server is started once per
test session (starting it costs about a second); tests reset its state with
:func:`reset_moto` instead of restarting it.

Use the fixture from a ``conftest.py``::

    from tests.moto_server import moto_endpoint as moto_endpoint
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

__all__ = ["moto_endpoint", "reset_moto", "set_moto_auth"]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto server on 127.0.0.1 (a free port), for the whole session."""
    # werkzeug logs every request at INFO; a test run would drown in it.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# Loopback never goes through a proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: bytes = b"") -> None:
    # Not form-encoded (urllib's default): moto reads the raw body.
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    with _OPENER.open(request, timeout=10) as response:
        response.read()


def reset_moto(endpoint: str) -> None:
    """Forget every resource of every service (moto's ``/moto-api/reset``)."""
    _post(f"{endpoint}/moto-api/reset")


def set_moto_auth(endpoint: str, free_requests: float) -> None:
    """Make moto enforce IAM after ``free_requests`` more requests (``0``: from
    now on; ``float("inf")``: never, moto's default). Enforcement is global to
    the server: restore ``inf`` when done."""
    _post(f"{endpoint}/moto-api/reset-auth", str(free_requests).encode())
