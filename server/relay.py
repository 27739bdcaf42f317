"""One upstream stream, read as ready-to-send responses, within the call's time bounds.

    relay = Relay(settings, upstream, deadline, expired)
    first = await relay.open(body, betas)     # retries what is safe to retry, before any event
    more = await relay.next()                 # None at message_stop; GatewayError on any failure

The bounds (first event, idle, the call's deadline) are kept by one ``Watchdog`` per call, which
cancels the call's task when one passes; the servicer turns that cancel into the status that
``Watchdog.fired`` names. A per-read timeout scope would cost a timer per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from claude_gateway.v1 import chat_pb2 as pb

from server.config import Settings
from server.errors import Code, Failure, GatewayError, from_exception
from server.events import SseFramer, fill_event
from server.upstream import Upstream

log = logging.getLogger(__name__)


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (from 1): the anthropic SDK's schedule.

    The upstream's retry-after wins; otherwise 0.5 s doubling up to 8 s, with 0-25 % jitter.
    """
    if retry_after is not None and retry_after > 0:
        return retry_after
    return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())


class Watchdog:
    """Cancels ``task`` when the upstream stays silent too long while being read, or at ``deadline``.

    One timer per quiet period, re-armed lazily; ``fired`` says which bound ended the call.
    Silence is counted from the start of the call until the first event (connect, retries and all),
    then from the start of each read: time spent writing to a slow client is not upstream silence.
    """

    def __init__(self, task: asyncio.Task[Any], deadline: float, expired: Failure, settings: Settings) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._deadline = deadline
        self._expired = expired
        self._settings = settings
        self._limit = settings.first_event_timeout
        self._first = True
        self.last = self._loop.time()
        self.reading = True  # waiting on the upstream (connect, headers, body), as opposed to writing
        self.fired: Failure | None = None
        self._handle = self._loop.call_at(self._due(), self._check)

    def waiting(self) -> None:
        """A read from the upstream begins."""
        self.reading = True
        if not self._first:
            self.last = self._loop.time()

    def _due(self) -> float:
        return min(self.last + self._limit, self._deadline)

    def first_event_seen(self) -> None:
        """From now on the idle bound applies."""
        self._first = False
        self._limit = self._settings.idle_timeout
        self.last = self._loop.time()
        self._handle.cancel()
        self._handle = self._loop.call_at(self._due(), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self.fired = self._expired
        elif self.reading and now >= self.last + self._limit:
            self.fired = self._silence()
        else:
            # Not due yet, or writing to the client (the next read restarts the count): look again later.
            due = self._due() if self.reading else now + self._limit
            self._handle = self._loop.call_at(min(due, self._deadline), self._check)
            return
        self._task.cancel()

    def _silence(self) -> Failure:
        if self._first:
            return Failure(
                Code.DEADLINE_EXCEEDED,
                "FIRST_EVENT_TIMEOUT",
                f"no upstream event within first_event_timeout ({self._settings.first_event_timeout:g}s)",
            )
        return Failure(
            Code.DEADLINE_EXCEEDED,
            "UPSTREAM_IDLE_TIMEOUT",
            f"upstream silent for idle_timeout ({self._settings.idle_timeout:g}s)",
        )

    def close(self) -> None:
        self._handle.cancel()


class Relay:
    """Reads one upstream stream; each ``StreamMessageResponse`` holds the events of one network read."""

    def __init__(self, settings: Settings, upstream: Upstream, watchdog: Watchdog, deadline: float) -> None:
        self._settings = settings
        self._upstream = upstream
        self._watchdog = watchdog
        self._deadline = deadline
        self._stack = contextlib.AsyncExitStack()
        self._chunks: AsyncIterator[bytes] | None = None
        self.request_id: str | None = None  # the upstream's, once it answered
        self._framer = SseFramer()
        self._failure: GatewayError | None = None  # raised after the events that came before it
        self.complete = False  # message_stop seen

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def open(self, body: dict[str, Any], betas: Sequence[str]) -> pb.StreamMessageResponse:
        """Start the upstream stream and return its first events, retrying what is safe to retry:
        HTTP 408/409/429/5xx, connection failures, and failures after the HTTP 200 but before any
        event, within max_attempts, the first-event bound and the call's deadline."""
        loop = asyncio.get_running_loop()
        first_deadline = min(self._deadline, loop.time() + self._settings.first_event_timeout)
        attempt = 1
        while True:
            self._watchdog.waiting()
            try:
                self.request_id, self._chunks = await self._stack.enter_async_context(
                    self._upstream.stream(body, betas, max(self._deadline - loop.time(), 0.001))
                )
                response = await self._read()
                if response is None:
                    raise GatewayError(_incomplete())
                self._watchdog.first_event_seen()
                return response
            except Exception as exc:
                self._watchdog.reading = False
                await self._stack.aclose()
                failure = from_exception(exc)
                delay = backoff(attempt, failure.retry_after)
                if (
                    not failure.retryable
                    or attempt >= self._settings.max_attempts
                    or loop.time() + delay >= first_deadline
                ):
                    raise GatewayError(failure) from None
                log.info("upstream attempt %d failed (%s); retrying in %.2fs", attempt, failure.reason, delay)
                attempt += 1
                self._framer = SseFramer()
                await asyncio.sleep(delay)

    async def next(self) -> pb.StreamMessageResponse | None:
        """The next events; None once message_stop was relayed. Raises GatewayError on any failure."""
        if self._failure is not None:
            raise self._failure
        if self.complete:
            return None
        try:
            response = await self._read()
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(from_exception(exc)) from None
        if response is None:
            raise GatewayError(_incomplete())
        return response

    async def _read(self) -> pb.StreamMessageResponse | None:
        """Read until at least one event is complete; None at the end of the body."""
        assert self._chunks is not None
        watchdog = self._watchdog
        while True:
            watchdog.waiting()
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return None
            finally:
                watchdog.reading = False
            try:
                frames = self._framer.feed(chunk)
            except UnicodeDecodeError:
                raise GatewayError(_malformed()) from None
            if frames:
                return self._convert(frames)

    def _convert(self, frames: list[tuple[str, str]]) -> pb.StreamMessageResponse:
        response = pb.StreamMessageResponse()
        events = response.events
        for name, data in frames:
            if self.complete:
                break  # nothing follows message_stop
            event = events.add()
            try:
                fill_event(event, name, data)
            except GatewayError as exc:
                del events[-1]
                if not events:
                    raise
                self._failure = exc  # deliver what came before it first
                break
            if name == "message_stop":
                self.complete = True
        return response


def _incomplete() -> Failure:
    return Failure(Code.UNAVAILABLE, "UPSTREAM_INCOMPLETE_STREAM", "upstream stream ended without message_stop")


def _malformed() -> Failure:
    return Failure(Code.DATA_LOSS, "UPSTREAM_MALFORMED_EVENT", "upstream sent bytes that are not UTF-8")
