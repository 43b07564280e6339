"""Stand-ins on loopback for what the test server cannot do on demand.

:func:`password_refusing_server` speaks just enough of PostgreSQL's wire
protocol to ask for a password and refuse it, as a server with password
authentication does (the test server trusts every local connection); it
records the password it was sent. :func:`cutting_proxy` forwards to the real
server and, when told, cuts a connection at a chosen message: the network
failing at the worst moment.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["CuttingProxy", "PasswordRefusingServer", "cutting_proxy", "password_refusing_server"]

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


class PasswordRefusingServer:
    def __init__(self) -> None:
        self.passwords: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # SSL/GSS requests come first, and are declined with "N"
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code not in (_SSL_REQUEST, _GSS_REQUEST):
                    await reader.readexactly(length - 8)  # the startup packet's parameters
                    break
                writer.write(b"N")
                await writer.drain()
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if kind == b"p":
                self.passwords.append(body.rstrip(b"\0").decode())
            fields = b"".join(key + value.encode() + b"\0" for key, value in (
                (b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28P01"),
                (b"M", 'password authentication failed for user "ovi"'),
            )) + b"\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            await writer.wait_closed()


@asynccontextmanager
async def password_refusing_server() -> AsyncIterator[PasswordRefusingServer]:
    fake = PasswordRefusingServer()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


class CuttingProxy:
    """Forwards every connection to ``host:port``. Once :meth:`cut_at` is
    called, the next client chunk holding ``marker`` is handled as asked,
    then that connection is cut on both sides; later ones pass again."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self.cuts = 0
        self._marker: bytes | None = None
        self._forward = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    def cut_at(self, marker: bytes, *, forward: bool) -> None:
        """Cut at the next chunk holding ``marker``; with ``forward``, the
        server gets that chunk first (and acts on it), but its answer never
        comes back."""
        self._marker, self._forward = marker, forward

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self._writers += [client_w, server_w]

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       watch: bool) -> None:
            while chunk := await reader.read(65536):
                marker = self._marker
                if watch and marker is not None and marker in chunk:
                    self._marker = None
                    self.cuts += 1
                    client_w.transport.abort()  # the client sees the connection drop now
                    if self._forward:
                        server_w.write(chunk)
                        await server_w.drain()
                        await asyncio.sleep(0.3)  # the server acts on it before it sees EOF
                    server_w.transport.abort()
                    return
                writer.write(chunk)
                await writer.drain()
            writer.close()

        pumps = [asyncio.create_task(pump(client_r, server_w, True)),
                 asyncio.create_task(pump(server_r, client_w, False))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for writer in (client_w, server_w):
                writer.transport.abort()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()


@asynccontextmanager
async def cutting_proxy(host: str, port: int) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(host, port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.listen_port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await proxy.aclose()
        await server.wait_closed()
