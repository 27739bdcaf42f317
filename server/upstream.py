"""The upstream Messages API, reached through the official anthropic SDK.

The SDK builds and sends the request (auth header, API version, base URL, error bodies to
exceptions); the gateway reads the streaming body as raw bytes, because the SDK's event iterator
drops `ping` events and builds a pydantic object per event. Leaving ``Upstream.stream`` closes the
HTTP response, and with it the connection if the body was not read to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2

# The body keys the SDK's create() takes as required arguments; the rest travel as extra_body,
# so keys this SDK version does not know still reach the API.
_REQUIRED = ("model", "max_tokens", "messages")


class Upstream:
    """Opens streaming Messages API calls. One per process; it owns the connection pool."""

    def __init__(self, client: anthropic.AsyncAnthropic, connect_timeout: float = 5.0) -> None:
        self._client = client.with_options(max_retries=0)  # the gateway decides what to retry
        self._connect_timeout = connect_timeout

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], betas: Sequence[str], timeout: float
    ) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
        """POST /v1/messages with "stream": true; yields the upstream request id and the body's byte
        chunks as they arrive.

        Raises the SDK's exceptions for HTTP errors and connection failures.
        """
        rest = {k: v for k, v in body.items() if k not in _REQUIRED}
        headers = {"anthropic-beta": ",".join(betas)} if betas else None
        async with self._client.messages.with_streaming_response.create(
            model=body["model"],
            max_tokens=body["max_tokens"],
            messages=body["messages"],
            stream=True,
            extra_body=rest or None,
            extra_headers=headers,
            # No read timeout: the gateway's watchdog bounds reads (idle, deadline) without a timer
            # per chunk, which is what a transport read timeout costs.
            timeout=httpx2.Timeout(timeout, connect=min(self._connect_timeout, timeout), read=None),
        ) as response:
            yield response.http_response.headers.get("request-id"), response.http_response.aiter_bytes()

    async def aclose(self) -> None:
        await self._client.close()
