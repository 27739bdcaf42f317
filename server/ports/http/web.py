"""The HTTP port (``GATEWAY_HTTP_LISTEN``): ChatService for browsers and plain HTTP, and the chat page.

One ASGI application, served by uvicorn in the gateway's own event loop beside grpc.aio:

- ``POST /claude_gateway.v1.ChatService/<Method>``: Connect (``application/json``, ``application/proto``,
  ``application/connect+json``, ``application/connect+proto``) and gRPC-Web (``application/grpc-web*``),
  by ``server.ports.http.connect``; every call runs the same path as on the gRPC port.
- ``/v1/messages``, ``/v1/messages/count_tokens``, ``/v1/models``: the Messages API, for the official
  Anthropic SDKs and curl, by ``server.ports.http.messages_api``; the same call path again.
- ``GET /``, ``GET /chat.js`` and ``GET /favicon.svg``: the chat page, when ``GATEWAY_CHAT_PAGE`` is on.
- CORS for the origins in ``GATEWAY_CORS_ORIGINS``: preflights answered here, the gRPC-Web and Connect
  response headers exposed to the page. No CORS headers at all when it is empty.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from claude_gateway.wire import SERVICE

from server.call.resumable import StreamCalls
from server.call.runner import Calls
from server.config import Settings
from server.ports.http.connect import ChatApplication
from server.ports.http.guard import AcceptErrors, Guard
from server.ports.http.messages_api import PREFIX, MessagesApi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PAGE = Path(__file__).resolve().parents[2] / "page"  # server/page: data, not code
PAGE_FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/chat.js": ("chat.js", b"text/javascript"),
    "/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}

# What a browser may send and read: the Connect and gRPC-Web protocol headers, the caller's token.
CORS_REQUEST_HEADERS = (
    b"content-type, connect-protocol-version, connect-timeout-ms, connect-content-encoding, "
    b"connect-accept-encoding, grpc-timeout, x-grpc-web, x-user-agent, authorization, "
    b"x-api-key, anthropic-version, anthropic-beta, "  # the Messages API's (server.ports.http.messages_api)
    b"claude-gateway-detach-grace, last-event-id"  # a resumable stream on it
)
CORS_RESPONSE_HEADERS = (
    b"grpc-status, grpc-message, grpc-status-details-bin, anthropic-request-id, "
    b"claude-gateway-usage, trailer-claude-gateway-usage, "  # the usage report: a trailer, or Connect unary's header
    b"request-id, retry-after, retry-after-ms, "  # the Messages API's
    b"claude-gateway-stream-id"  # a stream's id, for ResumeStream and CancelStream
)


@dataclass(frozen=True)
class Cors:
    """Which browser origins may call the port (``*`` = any)."""

    origins: frozenset[str]

    @classmethod
    def parse(cls, setting: str) -> Cors:
        return cls(frozenset(o.strip().rstrip("/") for o in setting.split(",") if o.strip()))

    def allows(self, origin: bytes | None) -> bool:
        return origin is not None and ("*" in self.origins or origin.decode("latin-1") in self.origins)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), None without one."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class WebApplication:
    """Routes a request to ChatService, the chat page or a plain HTTP error; adds CORS headers."""

    def __init__(self, calls: Calls, streams: StreamCalls, settings: Settings) -> None:
        self._chat = ChatApplication(calls, streams, settings.max_message_bytes)
        self._messages = MessagesApi(calls, streams)
        self._cors = Cors.parse(settings.cors_origins)
        self._page = settings.chat_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        origin = header(scope, b"origin")
        cors = self._cors.allows(origin)
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":
            await self._preflight(scope, send, origin if cors else None)
            return
        if cors:
            assert origin is not None
            send = _with_headers(
                send,
                [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", CORS_RESPONSE_HEADERS)],
            )
        if path.startswith(f"/{SERVICE}/"):
            content_type = header(scope, b"content-type") or b""
            if content_type.startswith(b"application/grpc") and not content_type.startswith(b"application/grpc-web"):
                await _plain(
                    send, 415, b"gRPC (HTTP/2) is served on the gateway's gRPC port; here: Connect, gRPC-Web\n"
                )
                return
            await self._chat(scope, receive, send)
        elif path.startswith(PREFIX):
            await self._messages(scope, receive, send)
        elif self._page and method in ("GET", "HEAD") and path in PAGE_FILES:
            name, content_type = PAGE_FILES[path]
            await _plain(send, 200, (PAGE / name).read_bytes(), content_type, head=method == "HEAD")
        else:
            await _plain(send, 404, b"not found\n")

    async def _preflight(self, scope: Scope, send: Send, origin: bytes | None) -> None:
        if origin is None:
            await _plain(send, 403, b"origin not allowed (GATEWAY_CORS_ORIGINS)\n")
            return
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b"POST, GET"),
            (b"access-control-allow-headers", CORS_REQUEST_HEADERS),
            (b"access-control-max-age", b"7200"),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds ``extra`` headers to the response start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra, (b"vary", b"Origin")]}
        await send(message)

    return sending


async def _plain(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8", *, head: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def bind(listen: str, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``listen`` (host:port, IPv6 hosts in brackets); OSError if it cannot."""
    host, _, port = listen.rpartition(":")
    return socket.create_server((host.strip("[]") or "0.0.0.0", int(port)), reuse_port=reuse_port, backlog=1024)


class WebServer:
    """uvicorn serving ``WebApplication`` on a bound socket, in the running loop beside grpc.aio."""

    def __init__(self, app: WebApplication, sock: socket.socket, settings: Settings) -> None:
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self.guard = Guard(settings.http_request_timeout, settings.http_max_connections, settings.max_message_bytes)
        config = uvicorn.Config(
            self.guard.app(app, bounded_by_itself=(PREFIX,)),
            # The same certificate as the gRPC port: with TLS on, both ports speak only TLS (https://).
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            lifespan="off",
            http=self.guard.protocol(),  # uvicorn's h11, with the port's bounds (server.ports.http.guard)
            ws="none",
            log_config=None,
            access_log=False,  # the gateway's own line per call says what happened
            server_header=False,
            date_header=False,
            proxy_headers=False,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._started = False

    async def start(self) -> None:
        """Accept requests from now on. Only uvicorn's startup and shutdown steps run: its serve() would
        take over SIGTERM and SIGINT, which the gateway handles itself, and its main loop would wake the
        event loop ten times a second for nothing but the Date header (which is therefore not sent)."""
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors(loop))  # out of descriptors: one log line per interval
        await self._server.startup(sockets=[self._sock])
        self._started = True

    async def stop(self, *, force: bool = False) -> None:
        """Stop listening and close idle connections; ``force``: also cut requests still running."""
        self._server.should_exit = True
        self._server.force_exit = force
        if self._started:
            self._started = False
            await self._server.shutdown(sockets=[self._sock])
        self._sock.close()
