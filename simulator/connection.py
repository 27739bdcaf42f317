"""One accepted TCP connection, spoken to in HTTP/1.1.

Requests are read by their head and `Content-Length` (request bodies with `Transfer-Encoding`
are refused). A task reads the socket all the time, so that the server learns at once that the
client has gone, even while it is waiting to write: end of input counts as the client leaving,
as it does for every HTTP client that pools connections. Writes are drained one by one, so each
chunk leaves as soon as it is written; once the connection is closed they are skipped. A drain
returns at once while the kernel takes the bytes, and loopback buffers take megabytes: so that an
unpaced reply does not hold the event loop for all of them (starving a gateway and a client that
share the loop, as in the tests), a connection yields to the loop every `_YIELD_BYTES` it writes,
as a reply arriving over a real network leaves the reader's loop free.
"""

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus

_MAX_HEAD = 64 * 1024
_YIELD_BYTES = 64 * 1024


class UnreadableRequestError(Exception):
    """The bytes received are not an HTTP/1.1 request this server can read."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.closed = asyncio.Event()
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._on_close: list[Callable[[float], None]] = []
        self.written = 0  # bytes handed to the socket, every response on this connection
        self._unyielded = 0  # bytes written since the last turn given to the event loop
        self._receiver = asyncio.create_task(self._receive())

    def on_close(self, callback: Callable[[float], None]) -> None:
        """Call `callback(loop.time())` when the connection closes."""
        self._on_close.append(callback)

    async def read_request(self) -> Request | None:
        """The next request, or None once the client has closed the connection."""
        head = await self._read_through(b"\r\n\r\n")
        if head is None:
            return None
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise UnreadableRequestError(f"bad request line {request_line!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in filter(None, lines):
            name, colon, value = line.partition(":")
            if not colon:
                raise UnreadableRequestError(f"bad header line {line!r}")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise UnreadableRequestError("request bodies must come with Content-Length")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise UnreadableRequestError(f"bad Content-Length {length!r}")
        body = await self._read_exactly(int(length))
        if body is None:
            return None
        persistent = "close" not in headers.get("connection", "").lower() and version == "HTTP/1.1"
        return Request(method, target, headers, body, persistent)

    async def send_response(self, status: int, headers: Mapping[str, str], body: bytes) -> bool:
        """Write a whole response; False if the connection is closed."""
        return await self._send(_head(status, {**headers, "content-length": str(len(body))}) + body)

    async def start_chunked(self, status: int, headers: Mapping[str, str]) -> bool:
        return await self._send(_head(status, {**headers, "transfer-encoding": "chunked"}))

    async def send_chunk(self, data: bytes) -> bool:
        return await self._send(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_chunked(self) -> bool:
        return await self._send(b"0\r\n\r\n")

    async def idle(self, seconds: float) -> bool:
        """Wait `seconds` unless the connection closes first; True if it is still open."""
        if seconds > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), seconds)
        return True

    def abort(self) -> None:
        """Drop the connection at once with a reset, without finishing the response."""
        if self.closed.is_set():
            return
        # Linger 0 turns the close into a RST, so the client sees a broken connection
        # (httpx2.ReadError), as when a real upstream drops, not a clean end of input.
        self._writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()
        self._mark_closed()

    async def close(self) -> None:
        self._writer.close()
        with suppress(OSError):
            await self._writer.wait_closed()
        self._mark_closed()
        await self._receiver

    async def _send(self, data: bytes) -> bool:
        if self.closed.is_set():
            return False
        self._writer.write(data)
        try:
            await self._writer.drain()
        except OSError:
            self._mark_closed()
            return False
        self.written += len(data)
        self._unyielded += len(data)
        if self._unyielded >= _YIELD_BYTES:
            self._unyielded = 0
            await asyncio.sleep(0)
        return True

    async def _receive(self) -> None:
        try:
            while chunk := await self._reader.read(65536):
                self._buffer += chunk
                self._arrived.set()
        except OSError:
            pass  # a reset is a close like any other
        self._mark_closed()
        self._arrived.set()

    async def _more(self) -> bool:
        """Wait for more input; False once there will be none."""
        if self.closed.is_set():
            return False
        self._arrived.clear()
        await self._arrived.wait()
        return True

    async def _read_through(self, marker: bytes) -> bytes | None:
        while (end := self._buffer.find(marker)) < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise UnreadableRequestError("request head too large")
            if not await self._more():
                return None
        return self._take(end + len(marker))

    async def _read_exactly(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._more():
                return None
        return self._take(size)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _mark_closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        now = asyncio.get_running_loop().time()
        for callback in self._on_close:
            callback(now)


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"  # e.g. 529, which the API uses but HTTP does not define
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")
