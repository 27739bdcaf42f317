"""Arrivals: when the gRPC port last handed a call to a handler, which the drain waits to see go quiet."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable

import grpc

QUIET_SECONDS = 0.25
"""How long no call must have arrived before the drain stops grpc. grpc takes calls in on its own threads
and hands them to the event loop one at a time; under load a call waits its turn for milliseconds, so a
quarter second without one means none is waiting (the drain's own log says when it stops grpc)."""


class Arrivals(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio's interceptor base is untyped
    """Notes the loop time at which each call reaches the gateway's handlers.

    grpc's own stop cancels every call it has taken in but not yet handed to a handler, with no status
    detail, and the gateway never hears of them: no log line, no metric. So the drain refuses new calls
    in admission (UNAVAILABLE / SHUTTING_DOWN, logged) while it lets calls in flight finish, and stops
    grpc only once calls have stopped arriving (``quiet``)."""

    def __init__(self) -> None:
        self.last = -math.inf
        self._arrived = asyncio.Event()  # set by every arrival, for ``quiet`` to wait on

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.last = asyncio.get_running_loop().time()
        self._arrived.set()
        return await continuation(handler_call_details)

    async def quiet(self, seconds: float = QUIET_SECONDS) -> None:
        """Return once no call has arrived for ``seconds``."""
        loop = asyncio.get_running_loop()
        while (left := self.last + seconds - loop.time()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._arrived.wait()
