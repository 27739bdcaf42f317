"""``Pipeline``: Lua scripts sent to Redis, many calls to one round trip (the quota store's and the pool's).

Whatever is queued while a round trip is out goes together in the next, so under load the cost of a
round trip is shared, and an idle gateway sends at once. Scripts go by their sha1 (EVALSHA), loaded
again if Redis lost them (a restart, a flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

CLOSE_SECONDS = 2.0  # how long closing waits for what is queued to be sent


class Pipeline:
    """Sends the quota scripts to Redis, many calls to one round trip: whatever is queued while a round
    trip is out goes together in the next, so under load the cost of a round trip is shared, and an
    idle gateway sends at once. Scripts go by their sha1 (EVALSHA), loaded again if Redis lost them."""

    def __init__(self, client: aioredis.Redis, scripts: dict[str, str]) -> None:
        self._client = client
        self._scripts = scripts
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in scripts.items()}
        self._queue: list[tuple[str, list[str], tuple[Any, ...], asyncio.Future[Any] | None]] = []
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # set when every queued call has had its round trip
        self._sender: asyncio.Task[None] | None = None
        self.on_error: Callable[[BaseException], None] = lambda exc: None  # for failures no caller awaits

    def call(self, script: str, keys: list[str], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """The reply of ``script`` run on ``keys`` with ``args``, or the Redis error."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(script, keys, args, reply)
        return reply

    def send(self, script: str, keys: list[str], args: tuple[Any, ...]) -> None:
        """Run ``script`` without waiting for its reply (a failure goes to ``on_error``)."""
        self._put(script, keys, args, None)

    def _put(self, script: str, keys: list[str], args: tuple[Any, ...], reply: asyncio.Future[Any] | None) -> None:
        self._queue.append((script, keys, args, reply))
        self._sent.clear()
        self._wake.set()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())

    async def _send_all(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            try:
                replies = await self._round_trip(batch)
            except asyncio.CancelledError:
                self._fail(batch, ConnectionError("the gateway is closing"))
                raise
            except Exception as exc:  # every Redis or socket error is the batch's answer
                self._fail(batch, exc)
                if not self._queue:
                    self._sent.set()
                continue
            for (_, _, _, reply), value in zip(batch, replies, strict=True):
                if isinstance(value, Exception):
                    if reply is None:
                        self.on_error(value)
                    elif not reply.done():
                        reply.set_exception(value)
                elif reply is not None and not reply.done():
                    reply.set_result(value)
            if not self._queue:
                self._sent.set()

    async def _round_trip(self, batch: list[tuple[str, list[str], tuple[Any, ...], Any]]) -> list[Any]:
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    pipe.evalsha(self._shas[script], len(keys), *keys, *args)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in replies):
                for text in self._scripts.values():  # a restarted or flushed Redis: load them, send again
                    await self._client.script_load(text)
                continue
            return replies
        raise AssertionError("unreachable")

    def _fail(
        self, batch: list[tuple[str, list[str], tuple[Any, ...], asyncio.Future[Any] | None]], exc: BaseException
    ) -> None:
        self.on_error(exc)
        for _, _, _, reply in batch:
            if reply is not None and not reply.done():
                reply.set_exception(exc)

    async def sent(self) -> None:
        """Return once everything queued so far has had its round trip."""
        await self._sent.wait()

    async def close(self) -> None:
        """Send what is queued, then stop."""
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._sent.wait()
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
