"""A loopback server that speaks just enough of PostgreSQL's wire protocol to
ask for a password and refuse it, as a server with password authentication
does: the test server trusts every local connection, so a wrong password can
only be tried against this. It records the password it was sent."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["PasswordRefusingServer", "password_refusing_server"]

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
