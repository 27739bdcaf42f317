"""A hostile upstream on loopback: a bare asyncio HTTP/1.1 server whose every answer a test writes.

    async with Hostile(answer) as up:         # answer(up, request, writer) writes the whole response
        ... base_url=up.url ...
    up.requests, up.written                    # what it was asked, and how many body bytes it sent

Responses carry no content-length and `connection: close`, so a body runs until the answer stops
writing or the client leaves: the shape a misbehaving upstream or proxy can take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One request as the upstream received it."""

    path: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[["Hostile", Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Hostile:
    answer: Answer
    requests: list[Request] = field(default_factory=list)
    written: int = 0  # body bytes the client took (written and drained)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when a client left mid-answer
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Hostile:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            data = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(head[0].split(" ")[1], headers, data)
            self.requests.append(request)
            await self.answer(self, request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone.set()
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data`` and wait until the client took it (ConnectionError once it left)."""
        writer.write(data)
        await writer.drain()
        self.written += len(data)


def head(status: int, **headers: str) -> bytes:
    """A response head: status line, the given headers (``_`` for ``-``), connection: close."""
    lines = [f"HTTP/1.1 {status} X", "connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One event in the API's wire form."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
}
