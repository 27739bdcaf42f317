"""The upstream Messages API, reached through the official anthropic SDK.

The SDK builds and sends the request (auth header, API version, base URL, error bodies to
exceptions); the gateway reads the streaming body as raw bytes, because the SDK's event iterator
drops `ping` events and builds a pydantic object per event. The request goes through the SDK's
generic ``post`` (its documented way to send any body) rather than ``messages.create``: the body
is already the API's JSON, so the typed method's walk over every parameter is pure cost, which
grows with the prompt. Leaving ``Upstream.stream`` closes the HTTP response, and with it the
connection if the body was not read to its end.

Nothing the upstream sends is trusted (see README "Limits and hardening"): ``http_client`` builds
the SDK's HTTP client with a response hook that refuses redirects and compressed bodies and reads at
most ``max_error_body_bytes`` of an error body; every request asks for ``accept-encoding:
identity`` and says not to follow redirects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import httpx2

from server.config import Settings
from server.errors import GatewayError, Reason, fail

MESSAGES_PATH = "/v1/messages"
_IDENTITY = ("", "identity")


def http_client(settings: Settings) -> httpx2.AsyncClient:
    """The SDK's HTTP client on the transport the settings name, with the gateway's response checks."""
    hooks: dict[str, list[Callable[..., Any]]] = {"response": [_ResponseCheck(settings.max_error_body_bytes)]}
    if settings.http_client == "aiohttp":
        # The SDK's own aiohttp transport: about half the CPU per relayed event of its default (bench/).
        return anthropic.DefaultAioHttpClient(event_hooks=hooks, follow_redirects=False)
    return anthropic.DefaultAsyncHttpxClient(event_hooks=hooks, follow_redirects=False)


class _ResponseCheck:
    """An httpx response hook, run when the headers arrive and before the SDK reads any of the body."""

    def __init__(self, max_error_body_bytes: int) -> None:
        self._limit = max_error_body_bytes

    async def __call__(self, response: httpx2.Response) -> None:
        status = response.status_code
        if 300 <= status < 400:
            raise GatewayError(
                fail(Reason.UPSTREAM_REDIRECTED, f"upstream answered HTTP {status}, a redirect; not followed")
            )
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in _IDENTITY:
            raise GatewayError(
                fail(Reason.UPSTREAM_COMPRESSED, "upstream sent a compressed body although identity was asked for")
            )
        if not response.is_success:
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _Capped(response.stream, self._limit)


class _Capped(httpx2.AsyncByteStream):
    """The first ``limit`` bytes of a body; the rest is never read (closing drops the connection)."""

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._left = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if len(chunk) >= self._left:
                yield chunk[: self._left]
                self._left = 0
                return
            self._left -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def body_reader(response: httpx2.Response) -> Callable[[], Awaitable[bytes]]:
    """How to read ``response``'s body: what has arrived, b"" at the end.

    On the SDK's aiohttp transport this is aiohttp's own ``readany`` on the response under the SDK's
    adapter and httpx2's timing wrapper: one await per read instead of five nested async generators
    (httpx2's raw and bound streams, the adapter's chunker and exception mapper, aiohttp's chunk
    iterator). The response hook already refused any content-encoding, so the bytes are the same.
    On httpx, or if those layers ever change shape, it is httpx2's raw iterator (no decoder, for the
    same reason).
    """
    inner = getattr(response.stream, "_stream", None)  # httpx2's BoundAsyncStream around the transport's
    raw = getattr(inner, "_aiohttp_response", None)  # the SDK's AiohttpResponseStream
    if isinstance(raw, aiohttp.ClientResponse):
        return raw.content.readany
    chunks = response.aiter_raw()

    async def read() -> bytes:
        return await anext(chunks, b"")

    return read


class Upstream:
    """Opens streaming Messages API calls. One per process; it owns the connection pool."""

    def __init__(self, client: anthropic.AsyncAnthropic, connect_timeout: float = 5.0) -> None:
        self._client = client.with_options(max_retries=0)  # the gateway decides what to retry
        self._connect_timeout = connect_timeout

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], betas: Sequence[str], timeout: float
    ) -> AsyncIterator[tuple[str | None, Callable[[], Awaitable[bytes]]]]:
        """POST /v1/messages with "stream": true; yields the upstream request id and a read function
        that returns the body's bytes as they arrive (b"" at its end).

        Raises the SDK's exceptions for HTTP errors and connection failures; a read raises its
        transport's (``server.errors.from_exception`` maps both).
        """
        # No read timeout: the gateway's watchdog bounds reads (idle, deadline) without a timer per
        # chunk, which is what a transport read timeout costs.
        limits = httpx2.Timeout(timeout, connect=min(self._connect_timeout, timeout), read=None)
        headers = {"accept-encoding": "identity"}
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        response = await self._client.post(
            MESSAGES_PATH,
            cast_to=httpx2.Response,  # the response as it arrives, body unread
            body={**body, "stream": True},
            options={"timeout": limits, "headers": headers, "follow_redirects": False},
            stream=True,
        )
        try:
            yield response.headers.get("request-id"), body_reader(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.close()
