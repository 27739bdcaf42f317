"""The upstream Messages API, reached through the official anthropic SDK.

The SDK builds and sends the request (auth header, API version, base URL, error bodies to
exceptions); the gateway reads the streaming body as raw bytes, because the SDK's event iterator
drops `ping` events and builds a pydantic object per event. The request goes through the SDK's
generic ``post`` (its documented way to send any body) rather than ``messages.create``: the body
is already the API's JSON, so the typed method's walk over every parameter is pure cost, which
grows with the prompt. Leaving ``Upstream.stream`` closes the HTTP response, and with it the
connection if the body was not read to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2

MESSAGES_PATH = "/v1/messages"


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
        # No read timeout: the gateway's watchdog bounds reads (idle, deadline) without a timer per
        # chunk, which is what a transport read timeout costs.
        limits = httpx2.Timeout(timeout, connect=min(self._connect_timeout, timeout), read=None)
        response = await self._client.post(
            MESSAGES_PATH,
            cast_to=httpx2.Response,  # the response as it arrives, body unread
            body={**body, "stream": True},
            options={"timeout": limits, "headers": {"anthropic-beta": ",".join(betas)}}
            if betas
            else {"timeout": limits},
            stream=True,
        )
        try:
            yield response.headers.get("request-id"), response.aiter_bytes()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.close()
