"""ChatService: admission, upstream call, relay, status.

Every call runs inside one time budget: the client's deadline, capped by max_stream_seconds.
Before the first event reaches the client the gateway may retry the upstream call (see
``Relay.open``); after it, never. Any failure ends the call with a status from ``server.errors``;
cancellation unwinds through ``async with``, which closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc
from anthropic._streaming import ServerSentEvent
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf.message import DecodeError, Message

from server.config import Settings
from server.errors import Code, Failure, GatewayError, Violation, from_exception, to_status
from server.events import SseFramer, to_event
from server.upstream import Upstream
from server.validation import violations

log = logging.getLogger(__name__)


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (from 1): the anthropic SDK's schedule.

    The upstream's retry-after wins; otherwise 0.5 s doubling up to 8 s, with 0-25 % jitter.
    """
    if retry_after is not None and retry_after > 0:
        return retry_after
    return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())


class Relay:
    """One upstream stream, read as batches of events, with the gateway's time bounds."""

    def __init__(self, settings: Settings, upstream: Upstream, deadline: float) -> None:
        self._settings = settings
        self._upstream = upstream
        self._deadline = deadline  # loop time
        self._stack = contextlib.AsyncExitStack()
        self._chunks: AsyncIterator[bytes] | None = None
        self._framer = SseFramer()
        self.complete = False  # message_stop seen

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _remaining(self) -> float:
        return self._deadline - asyncio.get_running_loop().time()

    async def open(self, body: dict[str, Any], betas: Sequence[str]) -> list[pb.MessageStreamEvent]:
        """Start the upstream stream and return its first events, retrying what is safe to retry.

        Retries cover HTTP 408/409/429/5xx, connection failures, and failures after the HTTP 200
        but before any event, within max_attempts and the call's time budget.
        """
        settings = self._settings
        first_deadline = min(self._deadline, asyncio.get_running_loop().time() + settings.first_event_timeout)
        attempt = 1
        while True:
            try:
                async with asyncio.timeout_at(first_deadline):
                    chunks = await self._stack.enter_async_context(
                        self._upstream.stream(body, betas, max(self._remaining(), 0.001))
                    )
                    self._chunks = chunks
                    batch = await self._read()
                    if not batch:
                        raise GatewayError(_incomplete())
                    return batch
            except TimeoutError:
                await self._stack.aclose()
                raise GatewayError(self._timeout_failure(first=True)) from None
            except Exception as exc:
                await self._stack.aclose()
                failure = from_exception(exc)
                delay = backoff(attempt, failure.retry_after)
                if (
                    not failure.retryable
                    or attempt >= settings.max_attempts
                    or asyncio.get_running_loop().time() + delay >= first_deadline
                ):
                    raise GatewayError(failure) from None
                log.info("upstream attempt %d failed (%s); retrying in %.2fs", attempt, failure.reason, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def next_batch(self) -> list[pb.MessageStreamEvent]:
        """The next events; empty at the end of the stream. Raises GatewayError on any failure."""
        if self.complete:
            return []
        idle = min(self._settings.idle_timeout, self._remaining())
        try:
            async with asyncio.timeout(idle):
                batch = await self._read()
        except TimeoutError:
            raise GatewayError(self._timeout_failure(first=False)) from None
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(from_exception(exc)) from None
        if not batch and not self.complete:
            raise GatewayError(_incomplete())
        return batch

    async def _read(self) -> list[pb.MessageStreamEvent]:
        """Read until at least one event is complete; [] at EOF."""
        assert self._chunks is not None
        while True:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return []
            sses = self._framer.feed(chunk)
            if sses:
                return self._convert(sses)

    def _convert(self, sses: list[ServerSentEvent]) -> list[pb.MessageStreamEvent]:
        batch = []
        for sse in sses:
            if self.complete:
                break  # nothing follows message_stop
            event = to_event(sse)
            batch.append(event)
            if sse.event == "message_stop":
                self.complete = True
        return batch

    def _timeout_failure(self, *, first: bool) -> Failure:
        if self._remaining() <= 0.001:
            return Failure(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the call's deadline passed")
        if first:
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


class Undecodable:
    """A request that did not parse. grpc would answer UNKNOWN; the servicer answers INVALID_ARGUMENT."""

    def __init__(self, error: str) -> None:
        self.error = error


def lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that hands bad bytes to the handler as ``Undecodable``."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize


def _invalid(bad: list[Violation]) -> Failure:
    message = "; ".join(f"{v.field}: {v.description}" for v in bad)
    return Failure(Code.INVALID_ARGUMENT, "INVALID_REQUEST", message, violations=tuple(bad))


def _incomplete() -> Failure:
    return Failure(Code.UNAVAILABLE, "UPSTREAM_INCOMPLETE_STREAM", "upstream stream ended without message_stop")


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """The gRPC face of the gateway: admission, upstream call, relay, status."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self._settings = settings
        self._upstream = upstream
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cutting = False
        self.draining = False

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    # A coroutine that writes with context.write, not an async generator: only a coroutine sees its
    # time bounds fire while a write is blocked on a slow client (see grpc-aio notes).
    async def StreamMessage(  # type: ignore[override]
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> None:
        async def write(batch: list[pb.MessageStreamEvent]) -> None:
            await context.write(pb.StreamMessageResponse(events=batch))

        await self._relay("StreamMessage", context, request, write)

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        from anthropic.lib.streaming._messages import accumulate_event

        snapshot: Any = None
        json_bufs: dict[int, bytes] = {}

        async def accumulate(batch: list[pb.MessageStreamEvent]) -> None:
            nonlocal snapshot
            for event in batch:
                if event.WhichOneof("type") != "raw_json":  # as the SDK, which skips unknown event types
                    data = cast(Any, codec.to_json(event))
                    snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)

        await self._relay("CreateMessage", context, request, accumulate)
        message = codec.from_json(snapshot.to_dict(mode="json", warnings=False), pb.Message())
        return pb.CreateMessageResponse(message=message)

    async def _relay(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        request: pb.StreamMessageRequest | pb.CreateMessageRequest | Undecodable,
        deliver: Callable[[list[pb.MessageStreamEvent]], Awaitable[None]],
    ) -> None:
        """Run one call: every upstream batch goes to ``deliver``; any failure aborts the call."""
        started = time.monotonic()
        delivered = 0
        failure: Failure | None = None
        try:
            async with self._admit(context, request) as (body, betas, deadline):
                try:
                    async with asyncio.timeout_at(deadline), Relay(self._settings, self._upstream, deadline) as relay:
                        batch = await relay.open(body, betas)
                        while batch:
                            await deliver(batch)
                            delivered += len(batch)
                            batch = await relay.next_batch()
                except TimeoutError:
                    raise GatewayError(self._expired(context)) from None
                except asyncio.CancelledError:
                    if not self._cutting:
                        raise  # the client left: unwinding closed the upstream request
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    raise GatewayError(
                        Failure(Code.UNAVAILABLE, "SHUTTING_DOWN", "gateway shut down before the reply was complete")
                    ) from None
        except GatewayError as exc:
            failure = exc.failure
        finally:
            code = failure.code.name if failure else "OK"
            reason = f" {failure.reason}" if failure else ""
            log.info("%s %s%s events=%d %.0fms", method, code, reason, delivered, (time.monotonic() - started) * 1e3)
        if failure is not None:
            await context.abort_with_status(to_status(failure, delivered))

    def _expired(self, context: grpc.aio.ServicerContext) -> Failure:
        if context.time_remaining() is not None and context.time_remaining() <= 0.01:
            return Failure(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the call's deadline passed")
        return Failure(
            Code.DEADLINE_EXCEEDED,
            "MAX_STREAM_DURATION",
            f"the call reached max_stream_seconds ({self._settings.max_stream_seconds:g}s)",
        )

    async def wait_idle(self) -> None:
        """Return once no call is in flight."""
        await self._idle.wait()

    def cut_all(self) -> None:
        """End every call in flight with UNAVAILABLE (SHUTTING_DOWN): the drain grace is over."""
        self._cutting = True
        for task in self._calls:
            task.cancel()

    @contextlib.asynccontextmanager
    async def _admit(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.StreamMessageRequest | pb.CreateMessageRequest | Undecodable,
    ) -> AsyncIterator[tuple[dict[str, Any], Sequence[str], float]]:
        """Admission control and validation; yields the upstream body, betas and the call's deadline."""
        if self.draining:
            raise GatewayError(Failure(Code.UNAVAILABLE, "SHUTTING_DOWN", "gateway is shutting down"))
        if self.active >= self._settings.max_concurrent_streams:
            raise GatewayError(
                Failure(
                    Code.RESOURCE_EXHAUSTED,
                    "TOO_MANY_STREAMS",
                    f"gateway is at max_concurrent_streams ({self._settings.max_concurrent_streams})",
                    retry_after=1.0,
                )
            )
        if isinstance(request, Undecodable):
            raise GatewayError(_invalid([Violation("request", f"not a valid protobuf message: {request.error}")]))
        bad = violations(request.params)
        if bad:
            raise GatewayError(_invalid(bad))
        budget = self._settings.max_stream_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        deadline = asyncio.get_running_loop().time() + budget
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        self._idle.clear()
        try:
            yield codec.to_json(request.params), request.betas, deadline
        finally:
            self._calls.discard(task)
            if not self._calls:
                self._idle.set()
