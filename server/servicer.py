"""ChatService: admission, upstream call, relay, status.

Every call runs inside one time budget: the client's deadline, capped by max_stream_seconds, kept
with the first-event and idle bounds by a ``Watchdog``. Before the first event reaches the client
the gateway may retry the upstream call (``Relay.open``); after it, never. Any failure ends the
call with a status from ``server.errors``. A cancel, from the client or from the gateway itself
(watchdog, drain), unwinds through ``async with``, which closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from anthropic.lib.streaming._messages import accumulate_event
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf.message import DecodeError, Message

from server.config import Settings
from server.errors import Code, Failure, GatewayError, Violation, to_status
from server.relay import Relay, Watchdog
from server.upstream import Upstream
from server.validation import violations

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "anthropic-request-id"  # initial metadata: the upstream request id of the call


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


def _bearer_matches(context: grpc.aio.ServicerContext, token: str) -> bool:
    """Whether the call carries ``authorization: Bearer <token>`` (compared in constant time)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return hmac.compare_digest(value[7:].encode(), token.encode())
    return False


def _invalid(bad: list[Violation]) -> Failure:
    message = "; ".join(f"{v.field}: {v.description}" for v in bad)
    return Failure(Code.INVALID_ARGUMENT, "INVALID_REQUEST", message, violations=tuple(bad))


@dataclass(eq=False)
class Admitted:
    """A call that passed admission: what to send upstream, and by when."""

    body: dict[str, Any]
    betas: Sequence[str]
    deadline: float  # loop time
    expired: Failure  # the status when the deadline passes
    task: asyncio.Task[Any]
    cut: Failure | None = None  # set by whoever cancels the call on the gateway's side


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """The gRPC face of the gateway: admission, upstream call, relay, status."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self._settings = settings
        self._upstream = upstream
        self._calls: set[Admitted] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    # A coroutine that writes with context.write, not an async generator: only a coroutine can be
    # cancelled by the watchdog while a write is blocked on a slow client (see grpc-aio notes).
    async def StreamMessage(  # type: ignore[override]
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._relay("StreamMessage", context, request, context.write)

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        snapshot: Any = None
        json_bufs: dict[int, bytes] = {}

        async def accumulate(response: pb.StreamMessageResponse) -> None:
            nonlocal snapshot
            for event in response.events:
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
        deliver: Callable[[pb.StreamMessageResponse], Awaitable[None]],
    ) -> None:
        """Run one call: every batch of upstream events goes to ``deliver``; any failure aborts the call."""
        started = time.monotonic()
        delivered = 0
        failure: Failure | None = None
        outcome = "CANCELLED"  # unless the call ends otherwise: the client left
        request_id: str | None = None
        try:
            async with self._admit(context, request) as call:
                watchdog = Watchdog(call.task, call.deadline, call.expired, self._settings)
                try:
                    async with Relay(self._settings, self._upstream, watchdog, call.deadline) as relay:
                        response: pb.StreamMessageResponse | None = await relay.open(call.body, call.betas)
                        request_id = relay.request_id
                        if request_id:  # for Anthropic support, and to match the gateway's log line
                            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                        while response is not None:
                            await deliver(response)
                            delivered += len(response.events)
                            response = await relay.next()
                        outcome = "OK"
                except asyncio.CancelledError:
                    cut = watchdog.fired or call.cut
                    if cut is None:
                        raise  # the client left: unwinding closed the upstream request
                    call.task.uncancel()
                    raise GatewayError(cut) from None
                finally:
                    watchdog.close()
        except GatewayError as exc:
            failure = exc.failure
            outcome = f"{failure.code.name} {failure.reason}"
            request_id = request_id or failure.request_id
        finally:
            elapsed_ms = (time.monotonic() - started) * 1e3
            log.info("%s %s events=%d %.0fms request_id=%s", method, outcome, delivered, elapsed_ms, request_id or "-")
        if failure is not None:
            await context.abort_with_status(to_status(failure, delivered))

    async def wait_idle(self) -> None:
        """Return once no call is in flight."""
        await self._idle.wait()

    def cut_all(self) -> None:
        """End every call in flight with UNAVAILABLE (SHUTTING_DOWN): the drain grace is over."""
        for call in self._calls:
            call.cut = Failure(Code.UNAVAILABLE, "SHUTTING_DOWN", "gateway shut down before the reply was complete")
            call.task.cancel()

    @contextlib.asynccontextmanager
    async def _admit(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.StreamMessageRequest | pb.CreateMessageRequest | Undecodable,
    ) -> AsyncIterator[Admitted]:
        """Admission control and validation; yields the admitted call, counted while it runs."""
        token = self._settings.auth_token
        if token and not _bearer_matches(context, token):
            raise GatewayError(
                Failure(Code.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", "send metadata `authorization: Bearer <token>`")
            )
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
        expired = Failure(
            Code.DEADLINE_EXCEEDED, "MAX_STREAM_DURATION", f"the call reached max_stream_seconds ({budget:g}s)"
        )
        remaining = context.time_remaining()
        if remaining is not None and remaining < budget:
            budget = remaining
            expired = Failure(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the call's deadline passed")
        task = asyncio.current_task()
        assert task is not None
        call = Admitted(
            codec.to_json(request.params), request.betas, asyncio.get_running_loop().time() + budget, expired, task
        )
        self._calls.add(call)
        self._idle.clear()
        try:
            yield call
        finally:
            self._calls.discard(call)
            if not self._calls:
                self._idle.set()
