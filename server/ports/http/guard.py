"""What the HTTP port will take from a connection before any application sees it.

uvicorn's h11 protocol, with the bounds the gRPC port has from grpc's core:

- a **request deadline** (``GATEWAY_HTTP_REQUEST_TIMEOUT``): from the connection's start (and, on a
  kept connection, from the end of the previous response) to a complete request head and body; past
  it the connection is closed, with 408 if no response has begun. A head sent a byte at a time, or a
  chunked body that never ends, holds a connection no longer than that;
- a **connection cap** (``GATEWAY_HTTP_MAX_CONNECTIONS``, by default half the process's open-file
  limit): a connection past it is closed at once, so the HTTP port can never take the descriptors the
  gRPC port, health and the upstream need;
- **framing**: a request head with a bare LF line end, or with both ``Content-Length`` and
  ``Transfer-Encoding`` (RFC 9112 6.1: the framing is ambiguous, the connection must close), gets 400
  and the connection is closed;
- a **body bound** (``GATEWAY_MAX_MESSAGE_BYTES``): a ``content-length`` over it gets 413 before a byte
  of the body is read; a chunked body that grows past it gets 413 there; the connection closes.

Every connection it keeps has ``TCP_NODELAY`` on, as grpc's core sets on the gRPC port's: asyncio sets it
only on sockets whose protocol number is TCP's, and ``socket.create_server`` (``web.bind``) leaves it 0,
so without it a small write after another (an event after the response head, the last chunk after
an event) waited for the client's delayed ACK, up to 40 ms on Linux.

``AcceptErrors`` keeps the event loop's complaint about a failed ``accept()`` (out of descriptors) to
one log line per interval, with the number seen, instead of one traceback per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ENVELOPE = 5  # the Connect and gRPC-Web envelope before a message: a body may be a message and this
ACCEPT_LOG_SECONDS = 10.0  # at most one log line about failed accepts per this many seconds


def default_max_connections() -> int:
    """Half the process's open-file limit: the rest stays for the gRPC port, health and the upstream."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)


def _refusal(status: int, reason: bytes, message: bytes) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written below h11 (which cannot answer a
    request it has not parsed)."""
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(message))
    )
    return head + message


def framing_problem(data: bytes) -> bytes | None:
    """What is wrong with the framing of the request head at the start of ``data`` (None if it is fine, or
    not complete yet): a line ended by a bare LF, or both Content-Length and Transfer-Encoding."""
    ends = [at for at in (data.find(b"\n\n"), data.find(b"\n\r\n")) if at >= 0]
    if not ends:
        return None
    head = data[: min(ends) + 1]
    if head.count(b"\n") != head.count(b"\r\n"):
        return b"a request line or header ends with a bare LF; lines end with CRLF\n"
    names = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:] if b":" in line}
    if b"content-length" in names and b"transfer-encoding" in names:
        return b"a request with both Content-Length and Transfer-Encoding is ambiguous (RFC 9112 6.1)\n"
    return None


class Guard:
    """The HTTP port's bounds, shared by its connections."""

    def __init__(self, request_timeout: float, max_connections: int, max_body_bytes: int) -> None:
        self.request_timeout = request_timeout
        self.max_connections = max_connections or default_max_connections()
        self.max_body_bytes = max_body_bytes + ENVELOPE
        self.connections = 0
        self.refused = 0  # connections closed at once at the cap, for tests and operators

    def protocol(self) -> type[H11Protocol]:
        """uvicorn's h11 protocol class bound to this guard."""
        guard = self

        class Guarded(GuardedProtocol):
            _guard = guard

        return Guarded

    def app(self, app: App, bounded_by_itself: tuple[str, ...] = ()) -> App:
        """``app`` behind the body bound, but for paths under ``bounded_by_itself``: those the application
        bounds itself, answering in its own protocol's words (the Messages API's error JSON)."""
        limit = self.max_body_bytes

        async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"].startswith(bounded_by_itself):
                await app(scope, receive, send)
                return
            length = _content_length(scope)
            if length is not None and length > limit:
                await _too_large(send, limit)
                return
            body = _BoundedBody(receive, send, limit)
            await app(scope, body.receive, body.send)

        return bounded


class _BoundedBody:
    """A request's ``receive`` and ``send`` that answer 413 once its body grows past ``limit``: the application
    then hears that the client left, and what it sends is dropped."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self._limit = receive, send, limit
        self._read = 0
        self._over = False
        self._started = False  # the application's own answer began

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._read += len(message.get("body", b""))
            if self._read > self._limit:
                if not self._over and not self._started:
                    await _too_large(self._send, self._limit)
                self._over = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self._over:
            return
        self._started = True
        await self._send(message)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline, a connection cap and stricter framing."""

    _guard: Guard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        guard = self._guard
        self._counted = guard.connections < guard.max_connections
        if not self._counted:
            guard.refused += 1
            transport.abort()  # the descriptor is freed now, not when a slow client lets go
            return
        guard.connections += 1
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self._guard.connections -= 1
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._guard.request_timeout, self._expired)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        """The request's head and body did not arrive in time: 408 if nothing was answered yet, and close."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if cycle is None or not cycle.response_started:
            if cycle is not None:
                cycle.disconnected = True  # the application hears the client left; its answer is dropped
            self.transport.write(_refusal(408, b"Request Timeout", b"the request was not complete in time\n"))
        self.transport.close()

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            problem = framing_problem(self.conn.trailing_data[0])
            if problem is not None:
                self.transport.write(_refusal(400, b"Bad Request", problem))
                self.transport.close()
                return
        super().handle_events()
        their = self.conn.their_state
        if their is h11.DONE or their is h11.MUST_CLOSE:
            self._disarm()  # the whole request is in: the deadline is the call's from here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # a kept connection: the next request has the same time to arrive


async def _too_large(send: Send, limit: int) -> None:
    body = b"the request body is over GATEWAY_MAX_MESSAGE_BYTES (%d bytes with its envelope)\n" % limit
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return int(value) if value.isdigit() and len(value) < 19 else None
    return None


class AcceptErrors:
    """An event loop exception handler that reports failed accepts (``socket.accept() out of system
    resource``: no descriptor left) once per ``ACCEPT_LOG_SECONDS``, with how many there were, and hands
    everything else to the handler it replaces."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        self._last = -ACCEPT_LOG_SECONDS
        self._since = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # The failed accept itself, and the retries asyncio schedules after it (each an error of its own
        # when the listener has closed meanwhile, at shutdown).
        handle = repr(context.get("handle", ""))
        if "accept" in str(context.get("message", "")) or "_start_serving" in handle or "_accept_connection" in handle:
            self._since += 1
            now = time.monotonic()
            if now - self._last >= ACCEPT_LOG_SECONDS:
                exc = context.get("exception")
                log.error(
                    "the HTTP port cannot accept connections (%d failed since the last report): %s",
                    self._since,
                    exc if exc is not None else context.get("message"),
                )
                self._last, self._since = now, 0
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
