"""``StreamCalls``: the stream RPCs, the same on every port: StreamMessage (plain or resumable), ResumeStream and
CancelStream (docs/api.md, "Resumable streams").

Every stream has an id (``claude-gateway-stream-id``, in the initial metadata before any event) and every
response the sequence number of its first event. Whether a stream is resumable is in its request
(``detach_grace_seconds``), so StreamMessage reads the request itself, once the call's metadata is admitted and
the body budget has room, as admission would (``admission.entry``, ``reserve``). A plain stream then runs in
its caller's own task, as every call does (``Calls.run``): a hang-up cancels it, and with it the upstream
request. A resumable one is produced by a task of its own (``Production``), which runs the same ``Calls.run``
(admission, quotas, the watchdog, one log line, the usage trailer) into the stream's store; its caller, and
every ResumeStream after it, follows the store (``_follow``), so a caller that goes away leaves the call
running, counted in its quotas and metrics, for the detach grace, and an explicit CancelStream ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import REQUEST_ID_KEY, STREAM_ID_KEY

from server.call.admission import Admitted, Body, Request, Undecodable, invalid
from server.call.context import CallContext
from server.call.delivery import converted, streamed
from server.call.events import Event
from server.call.runner import Calls
from server.errors import Failure, GatewayError, Reason, Violation, fail, to_status
from server.limits.bodies import WAIT_SECONDS, Reservation
from server.streams.ids import new_id, well_formed
from server.streams.store import EventStore, Follower
from server.streams.stream import Chunk, LocalFollower, Outcome, Stream, to_grpc_status

log = logging.getLogger("server.call.resume")

Writer = Callable[[Any], Awaitable[None]]  # sends one response (a message, or its serialized bytes) to the caller
OK = "OK"

_JSON = json.JSONEncoder(separators=(",", ":"))


class Production:
    """The producing side of a resumable stream: the ``CallContext`` its call runs with (the caller's metadata
    and deadline, taken once, since the caller may go), and the sink that numbers and keeps its events."""

    def __init__(self, context: CallContext, store: EventStore, stream_id: str, grace: float, limit: int) -> None:
        loop = asyncio.get_running_loop()
        self._metadata = tuple(context.invocation_metadata() or ())
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else loop.time() + remaining
        auth = getattr(context, "auth_context", None)  # the client certificate, for mtls callers
        self._auth = auth() if auth is not None else {}
        self._store = store
        self.stream_id = stream_id
        self._grace = grace
        self._limit = limit
        self._next = 1  # the number of the next event
        self.stream: Stream | None = None
        self.ready: asyncio.Future[None] = loop.create_future()  # done once the stream exists or never will
        self._code: grpc.StatusCode | None = None  # the call's status, once it failed
        self._details = ""
        self._trailer: tuple[tuple[str, str | bytes], ...] = ()

    # What Calls.run needs of its context.

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._metadata

    def auth_context(self) -> Any:
        return self._auth

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """The upstream's request id is kept with the stream (its caller already has the stream id)."""
        for key, value in metadata:
            if key == REQUEST_ID_KEY and self.stream is not None:
                self.stream.set_request_id(value)

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self._trailer += tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    @property
    def ended(self) -> bool:
        """Whether the call ran to its end (OK or not): ``Calls.run`` sets the trailers of every call it ends."""
        return self._code is not None or bool(self._trailer)

    def outcome(self) -> Outcome:
        """How the call ended: its trailers (and the request id, which its callers may not have had in their
        initial metadata), or its status with them."""
        request_id = self.stream.request_id if self.stream is not None else None
        trailer = (*self._trailer, *(((REQUEST_ID_KEY, request_id),) if request_id else ()))
        if self._code is None or self._code is grpc.StatusCode.OK:
            return Outcome(None, trailer)
        return Outcome(to_grpc_status(self._code, self._details, trailer))

    # Calls.run's hooks.

    async def admitted(self, call: Admitted) -> None:
        """Admission let the call in: make its stream (before anything is sent upstream)."""
        self.stream = await self._store.create(self.stream_id, call.caller, self._grace, call.end)
        self.ready.set_result(None)

    async def deliver(self, batch: list[Event]) -> None:
        """Keep one batch of events as numbered chunks (split to fit the message limit, as ``streamed`` does)."""
        stream = self.stream
        assert stream is not None
        out, failure = await converted(batch, self._limit)
        for response in out:
            first = self._next
            response.sequence = first
            count = len(response.events)
            self._next = first + count
            stream.append(Chunk(first, count, response.SerializeToString()))
        if failure is not None:
            raise GatewayError(failure)
        await stream.keep_up()  # no further ahead of a following caller than a plain stream would be


class StreamCalls:
    """The stream RPCs of one gateway: plain and resumable streams, ResumeStream, CancelStream."""

    def __init__(self, calls: Calls, store: EventStore) -> None:
        self._calls = calls
        self._store = store
        self._limit = calls.settings.max_message_bytes
        self._max_grace = calls.settings.resume_max_grace
        self._metrics = calls.telemetry.metrics
        self._producers: set[asyncio.Task[None]] = set()

    async def stream_message(
        self,
        context: CallContext,
        request: Request | Undecodable | Body,
        write: Writer,
        reserved: Reservation | None = None,
    ) -> None:
        """StreamMessage: the reply's events as they come, each response numbered, the stream named; resumable
        when the request asks for a detach grace and the gateway allows one. ``request`` may be how to read it
        (``admission.Body``), ``reserved`` the body budget a port took before it read the body itself."""
        if callable(request) and self._max_grace > 0:
            # Whether it is resumable is in the body: read it here, after the metadata checks, as admission would.
            admission = self._calls.admission
            try:
                if reserved is None:
                    admission.entry(context)
                    remaining = context.time_remaining()
                    reserved = await admission.reserve(None, WAIT_SECONDS if remaining is None else remaining)
            except GatewayError as exc:
                _set_status(context, self._calls.refuse("StreamMessage", context, exc.failure))
                return
            try:
                request, size = await request()
            except BaseException:
                reserved.release()
                raise
            reserved.resize(size)
        if not callable(request) and not isinstance(request, Undecodable) and self._max_grace > 0:
            grace = float(getattr(request, "detach_grace_seconds", 0))
            if grace > 0:
                await self._resumable(context, request, write, min(grace, self._max_grace), reserved)
                return
        deliver = streamed(write, self._limit)
        await self._calls.run("StreamMessage", context, request, deliver, reserved, stream_id=new_id())

    async def _resumable(
        self, context: CallContext, request: Request, write: Writer, grace: float, reserved: Reservation | None
    ) -> None:
        production = Production(context, self._store, new_id(), grace, self._limit)
        producer = asyncio.ensure_future(self._produce(production, request, reserved))
        self._producers.add(producer)
        producer.add_done_callback(self._producers.discard)
        try:
            await asyncio.shield(production.ready)
        except asyncio.CancelledError:
            if production.stream is None:  # the caller left before it could know the stream: nothing to resume
                producer.cancel()
            raise
        stream = production.stream
        if stream is None:  # refused (its log line is written), or ended by the gateway before it began
            await asyncio.wait((producer,))
            outcome = production.outcome()
            if outcome.status is None:  # it never got to admission: the gateway closed meanwhile
                outcome = Outcome(to_status(fail(Reason.SHUTTING_DOWN, "the gateway is shutting down"), 0))
            _end(context, outcome)
            return
        await self._follow(context, LocalFollower(stream), 0, write, ((STREAM_ID_KEY, stream.id),))

    async def _produce(self, production: Production, request: Request, reserved: Reservation | None) -> None:
        """The producing call: ``Calls.run`` into the stream, in a task of its own that outlives the caller's."""
        try:
            await self._calls.run(
                "StreamMessage",
                production,
                request,
                production.deliver,
                reserved,
                stream_id=production.stream_id,
                on_admitted=production.admitted,
            )
        finally:
            stream = production.stream
            if stream is not None:
                if production.ended:
                    stream.finish(production.outcome())
                else:  # cancelled from outside, as the gateway closes without a drain
                    failure = fail(Reason.SHUTTING_DOWN, "gateway shut down before the reply was complete")
                    stream.finish(Outcome(to_status(failure, stream.next - 1)))
            if not production.ready.done():
                production.ready.set_result(None)

    async def _follow(
        self,
        context: CallContext,
        follower: Follower,
        after: int,
        write: Writer,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        """Send the caller ``metadata``, every event after ``after``, then end its call as the stream ended: with
        the same trailers (the usage report, once for the whole call) or the same status."""
        delivered = 0
        try:
            try:
                await context.send_initial_metadata(metadata)
                async with contextlib.aclosing(follower.chunks(after)) as chunks:
                    async for chunk in chunks:
                        await write(chunk.data)
                        delivered += chunk.count
            finally:
                await follower.close()
        except GatewayError as exc:
            _set_status(context, to_status(exc.failure, delivered))
            return
        outcome = follower.outcome
        assert outcome is not None
        _end(context, outcome)

    async def resume(self, context: CallContext, request: pb.ResumeStreamRequest | Undecodable, write: Writer) -> None:
        """ResumeStream: the stream's events after ``after_seq``, then the live ones, then its end."""
        caller = ""
        try:
            caller = self._caller(context)
            if isinstance(request, Undecodable):
                raise GatewayError(invalid([Violation(request.field, f"{request.what}: {request.error}")]))
            self._check_id(request.stream_id)
            follower = await self._store.follow(request.stream_id, caller, request.after_seq)
        except GatewayError as exc:
            self._resumed(caller, request, exc.failure)
            _set_status(context, to_status(exc.failure, 0))
            return
        self._resumed(caller, request, None)
        metadata = [(STREAM_ID_KEY, request.stream_id)]
        if follower.request_id:
            metadata.append((REQUEST_ID_KEY, follower.request_id))
        await self._follow(context, follower, request.after_seq, write, metadata)

    async def cancel(
        self, context: CallContext, request: pb.CancelStreamRequest | Undecodable
    ) -> pb.CancelStreamResponse | None:
        """CancelStream: end the stream's call at once, STREAM_CANCELLED (nothing if it ended already); None
        when it failed (its status is set on ``context``)."""
        try:
            caller = self._caller(context)
            if isinstance(request, Undecodable):
                raise GatewayError(invalid([Violation(request.field, f"{request.what}: {request.error}")]))
            self._check_id(request.stream_id)
            await self._store.cancel(request.stream_id, caller)
        except GatewayError as exc:
            _set_status(context, to_status(exc.failure, 0))
            return None
        return pb.CancelStreamResponse()

    def _caller(self, context: CallContext) -> str:
        """Who calls, if the gateway's policy admits them at all; GatewayError otherwise."""
        admission = self._calls.admission
        caller = admission.identity.caller(context)
        if admission.policy.rules(caller) is None:
            raise GatewayError(
                fail(Reason.CALLER_NOT_ALLOWED, f"the gateway's policy does not admit caller {caller!r}")
            )
        return caller

    @staticmethod
    def _check_id(stream_id: str) -> None:
        if not well_formed(stream_id):
            raise GatewayError(
                invalid([Violation("stream_id", "must be a stream id the gateway gave: 1-64 of [A-Za-z0-9_-]")])
            )

    def _resumed(self, caller: str, request: pb.ResumeStreamRequest | Undecodable, failure: Failure | None) -> None:
        """One log line and one count per ResumeStream, at its start: whether it could resume, and why not."""
        outcome = OK if failure is None else failure.reason
        if self._metrics is not None:
            self._metrics.resumes.labels(outcome).inc()
        line: dict[str, str | int] = {"event": "resume", "caller": caller, "outcome": outcome}
        if not isinstance(request, Undecodable):
            line.update(stream_id=request.stream_id, after_seq=request.after_seq)
        log.info("%s", _JSON.encode(line))

    async def close(self) -> None:
        """Cancel the streams still producing (a gateway closed without a drain); each ends SHUTTING_DOWN."""
        for producer in list(self._producers):
            producer.cancel()
        await asyncio.gather(*self._producers, return_exceptions=True)


def _set_status(context: CallContext, status: grpc.Status) -> None:
    """End the call with ``status``, its rich details and trailers (set on the context, as ``Calls.run`` does)."""
    context.set_code(status.code)
    context.set_details(status.details or "")
    context.set_trailing_metadata(status.trailing_metadata or ())


def _end(context: CallContext, outcome: Outcome) -> None:
    """End a follower's call as its stream ended."""
    if outcome.status is not None:
        _set_status(context, outcome.status)
    else:
        context.set_trailing_metadata(outcome.trailer)
