"""One upstream stream, read as batches of events, within the call's time bounds.

    async with UpstreamReader(bounds, route, watchdog, deadline) as reader:
        batch = await reader.open(body, betas, version)  # retries or fails over (``server.call.route``) first
        batch = await reader.next()               # None after message_stop; GatewayError on any failure

Every event is checked against the stream grammar (``server.call.grammar``) before it is passed on.
A batch holds the events of one network read, in order, so the gateway sends what was already
waiting in one gRPC message; a read of more than MAX_BATCH_EVENTS events is cut into batches of that
many, with the event loop free between them. Leaving the ``async with`` closes the upstream response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from server.call.bounds import Bounds
from server.call.events import OFFLOAD_BYTES, Event, EventStreamFramer, SseFramer, parse
from server.call.grammar import Grammar
from server.call.route import Route, Step
from server.call.watchdog import Watchdog
from server.errors import Failure, GatewayError, Reason, fail
from server.redaction import Redactor, Scanner
from server.upstream.client import EVENT_STREAM, Body
from server.upstream.failures import from_exception

log = logging.getLogger(__name__)

_ECHOED = fail(
    Reason.UPSTREAM_ECHOED_SECRET,
    "the upstream's reply holds the gateway's credentials: it was not passed on, and the call ends here",
)

# Most events in one batch: a read that completes more (a flood of small events) is delivered in batches of
# this many, the event loop free between them, so that health checks and other calls wait milliseconds.
MAX_BATCH_EVENTS = 256
FEED_BYTES = 64 * 1024  # most bytes of a read framed in one step of the event loop


class UpstreamReader:
    """Reads one upstream stream; each batch is the events that one network read completed."""

    def __init__(
        self, bounds: Bounds, route: Route, watchdog: Watchdog, deadline: float, redactor: Redactor | None = None
    ) -> None:
        self._bounds = bounds
        self._redactor = redactor or Redactor(())
        # The gateway's credentials, looked for in every read; or, where the framing encodes the events (Bedrock:
        # base64 in each chunk), in each event's decoded text, all of the body that reaches the caller (None).
        self._scanner: Scanner | None = self._redactor.scanner()
        self._route = route
        self._watchdog = watchdog
        self._deadline = deadline
        self._exchange: AbstractAsyncContextManager[Body] | None = None  # the open upstream response
        self._body: Body | None = None
        self._read_body: Callable[[], Awaitable[bytes]] | None = None
        self.request_id: str | None = None  # the upstream's, once it answered
        self._host: str | None = None  # the host of the upstream being read
        self._framer: SseFramer | EventStreamFramer = SseFramer(bounds.max_event_bytes)
        self._grammar = Grammar()
        self._failure: GatewayError | None = None  # raised after the events that came before it
        self._later: list[tuple[str, str]] = []  # frames of the last read beyond its first batches
        self._unfed = b""  # bytes of the last read beyond what was framed so far
        self.complete = False  # message_stop seen
        self.attempts = 0  # upstream attempts made by open()
        self.retried: list[str] = []  # the failure of each retried attempt (error type or reason), for metrics
        self.bytes_read = 0  # of upstream body, counted per network read

    async def __aenter__(self) -> UpstreamReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            await exchange.__aexit__(None, None, None)

    async def open(self, body: dict[str, Any], betas: Sequence[str], version: str | None = None) -> list[Event]:
        """Start the upstream stream and return its first events, trying again where the route says
        (``server.call.route``: the same upstream for what is safe to retry, or the next member of the
        pool), within max_attempts, the first-event bound and the call's deadline. A route that holds
        returns the events up to the first content delta (or the reply's end) together. ``version`` is
        the `anthropic-version` the caller asked for (the Messages API's; not sent to Bedrock or Vertex)."""
        loop = asyncio.get_running_loop()
        first_deadline = min(self._deadline, loop.time() + self._bounds.first_event_timeout)
        route = self._route
        failure: Failure | None = None
        while True:
            step = await route.next(body, failure, loop.time(), first_deadline, self.attempts)
            if failure is not None:
                self.retried.append(failure.error_type or failure.reason)
                self._framer = SseFramer(self._bounds.max_event_bytes)
                self._scanner = self._redactor.scanner()
                self._later, self._unfed = [], b""
                self._grammar = Grammar()
                self._failure, self.complete = None, False
                if step.wait > 0:
                    await asyncio.sleep(step.wait)
            self._watchdog.waiting()
            self.attempts += 1
            started = loop.time()
            try:
                if step.first_event_timeout is None:
                    batch = await self._attempt(step, betas, version, route.hold)
                else:
                    scope = asyncio.timeout(step.first_event_timeout)
                    try:
                        async with scope:
                            batch = await self._attempt(step, betas, version, route.hold)
                    except TimeoutError:
                        if not scope.expired():
                            raise
                        raise GatewayError(_slow_backend(step.first_event_timeout)) from None
                route.served(step, self._body_of(), loop.time() - started)
                self._watchdog.first_event_seen()
                return batch
            except Exception as exc:
                self._watchdog.reading = False
                await self._close()
                failure = from_exception(exc, step.upstream.host)

    async def _attempt(self, step: Step, betas: Sequence[str], version: str | None, hold: bool) -> list[Event]:
        self._host = step.upstream.host
        timeout = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        exchange = step.upstream.stream(step.body, betas, timeout, version if step.versioned else None)
        self._body = await exchange.__aenter__()
        self._exchange = exchange
        self.request_id, self._read_body = self._body.request_id, self._body.read
        if self._body.framing == EVENT_STREAM:
            self._framer = EventStreamFramer(self._bounds.max_event_bytes)
            self._scanner = None
        batch = await self.next()
        if batch is None:  # not before message_stop, which cannot come before the first read
            raise GatewayError(_incomplete())
        if hold:
            while not _content_in(batch):  # message_start, ping, content_block_start: not yet the caller's
                more = await self.next()
                if more is None:
                    break
                batch.extend(more)
        return batch

    def _body_of(self) -> Body:
        assert self._body is not None
        return self._body

    async def next(self) -> list[Event] | None:
        """The next events: those one network read completed (reading on until at least one is);
        None once message_stop was read. Raises GatewayError on any failure. Only events are life
        to the watchdog: bytes that complete none (a line that never ends, comments) are not."""
        if self._failure is not None:
            raise self._failure
        if self._later:
            # The rest of a read of many events: first let the other calls and health checks run.
            await asyncio.sleep(0)
            return await self._batch(self._take(self._later))
        if self.complete:
            return None
        read_body = self._read_body
        assert read_body is not None
        watchdog = self._watchdog
        watchdog.waiting()
        try:
            while True:
                if self._unfed:
                    await asyncio.sleep(0)  # the rest of a large read, a slice at a time (see below)
                    chunk = self._unfed
                else:
                    try:
                        chunk = await read_body()
                    except Exception as exc:
                        raise GatewayError(from_exception(exc, self._host)) from None
                    if not chunk:
                        raise GatewayError(_incomplete())
                    self.bytes_read += len(chunk)
                    scanner = self._scanner
                    if scanner is not None and scanner.found(chunk):  # before a byte of it is framed
                        raise GatewayError(_ECHOED)  # none of it reaches the caller
                # What was buffered while the gateway was busy can be megabytes of small events: it is framed
                # FEED_BYTES at a time, so that no step of the event loop frames more than that.
                chunk, self._unfed = chunk[:FEED_BYTES], chunk[FEED_BYTES:]
                try:
                    frames = self._framer.feed(chunk)
                except UnicodeDecodeError:
                    raise GatewayError(
                        fail(Reason.UPSTREAM_MALFORMED_EVENT, "upstream sent bytes that are not UTF-8")
                    ) from None
                if frames:
                    if self._scanner is None and self._redactor.holds([data for _, data in frames]):
                        raise GatewayError(_ECHOED)  # in an event's decoded text: none of this read is passed on
                    return await self._batch(self._take(frames))
        finally:
            watchdog.reading = False

    def _take(self, frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The first MAX_BATCH_EVENTS of ``frames``; the rest wait in ``_later`` for the next batches."""
        if len(frames) <= MAX_BATCH_EVENTS:
            self._later = []
            return frames
        self._later = frames[MAX_BATCH_EVENTS:]
        return frames[:MAX_BATCH_EVENTS]

    async def _batch(self, frames: list[tuple[str, str]]) -> list[Event]:
        text = 0
        for _, data in frames:
            text += len(data)
        if text < OFFLOAD_BYTES:
            return self._parse(frames)
        return await asyncio.to_thread(self._parse, frames)  # big JSON: parsed off the event loop

    def _parse(self, frames: list[tuple[str, str]]) -> list[Event]:
        batch: list[Event] = []
        check = self._grammar.check
        for name, data in frames:
            if self.complete:
                break  # nothing follows message_stop
            try:
                obj = parse(name, data)
                check(name, obj)
                batch.append((name, obj, data))
            except GatewayError as exc:
                if not batch:
                    raise
                self._failure = exc  # deliver what came before it first
                break
            if name == "message_stop":
                self.complete = True
                self._later = []
                assert self._body is not None
                self._body.complete = True  # what follows is the body's end: the connection can be kept
        return batch


def _content_in(batch: list[Event]) -> bool:
    """Whether ``batch`` holds a content delta or the reply's end: what a held stream waits for."""
    return any(name == "content_block_delta" or name == "message_stop" for name, _, _ in batch)


def _slow_backend(seconds: float) -> Failure:
    return fail(
        Reason.FIRST_EVENT_TIMEOUT,
        f"no upstream content within the backend's first_event_timeout ({seconds:g}s)",
        retryable=True,
    )


def _incomplete() -> Failure:
    return fail(Reason.UPSTREAM_INCOMPLETE_STREAM, "upstream stream ended without message_stop")
