"""One resumable stream as the replica producing it holds it: its events as numbered chunks, who follows it,
how it ended.

    stream.append(chunk)          the producer: the responses of one upstream read, numbered
    await stream.keep_up()        the producer: wait while a caller following the stream lags too far
    stream.finish(outcome)        the producer: how the call ended (its trailers, or its status)
    LocalFollower(stream)         a caller following it (attached until closed): ``chunks(after)``, to the end

A chunk is a serialized ``StreamMessageResponse`` (the same bytes as a ``ResumeStreamResponse``) and the
numbers of the events it holds, so that a follower sends what the producer serialized once. While a caller
follows, the producer reads no further ahead of it than ``LAG`` chunks (the backpressure of a plain stream),
and nothing it has still to send is dropped; with nobody following, the producer reads on at the upstream's
pace, and the bounds drop the oldest events first. A resume that needs an event no longer kept gets
STREAM_EXPIRED: a replay is never partial. With nobody following for the detach grace, ``end`` cancels the call.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
from claude_gateway.v1 import chat_pb2 as pb

from server.errors import Failure, GatewayError, Reason, Violation, fail

CHUNK_OVERHEAD = 100  # bytes a kept chunk costs beyond its data: the Chunk, its bytes object's header, its slot
LAG = 64  # chunks a following caller may lag behind the producer before the producer waits for it


@dataclass(frozen=True, slots=True)
class Chunk:
    """Events ``first`` to ``first + count - 1`` of a stream, as one serialized response numbered ``first``."""

    first: int
    count: int
    data: bytes

    @property
    def last(self) -> int:
        return self.first + self.count - 1


def tail(chunk: Chunk, after: int) -> Chunk:
    """The events of ``chunk`` after event number ``after`` (one it holds), as a chunk of their own."""
    response = pb.StreamMessageResponse.FromString(chunk.data)
    skip = after + 1 - chunk.first
    del response.events[:skip]
    response.sequence = after + 1
    return Chunk(after + 1, chunk.count - skip, response.SerializeToString())


class StoredStatus(NamedTuple):
    """A gRPC status kept with a stream's end, to end every follower with it (a ``grpc.Status``)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _Status(StoredStatus, grpc.Status):  # type: ignore[misc]  # grpc.Status has no annotations
    pass


@dataclass(frozen=True)
class Outcome:
    """How a stream ended: its trailing metadata when it ended OK, else its status (with its trailers)."""

    status: grpc.Status | None
    trailer: tuple[tuple[str, str | bytes], ...] = ()

    def encode(self) -> bytes:
        """As JSON, for Redis: binary metadata (keys ending ``-bin``) in base64, as gRPC carries it in text."""
        status = self.status

        def pairs(metadata: Any) -> list[list[str]]:
            return [[k, base64.b64encode(v).decode() if isinstance(v, bytes) else v] for k, v in metadata or ()]

        if status is None:
            return json.dumps({"trailer": pairs(self.trailer)}).encode()
        return json.dumps(
            {"code": status.code.name, "details": status.details, "trailer": pairs(status.trailing_metadata)}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Outcome:
        """The Outcome that ``encode`` gave ``data``."""
        obj = json.loads(data)
        trailer = tuple((k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in obj["trailer"])
        if "code" not in obj:
            return cls(None, trailer)
        return cls(to_grpc_status(grpc.StatusCode[obj["code"]], obj["details"], trailer))


def to_grpc_status(
    code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, str | bytes], ...]
) -> grpc.Status:
    """A ``grpc.Status`` of these parts."""
    return _Status(code, details, trailing_metadata)


def expired(after: int, oldest: int) -> GatewayError:
    """STREAM_EXPIRED: the events after ``after`` are not all kept; the oldest kept is number ``oldest``."""
    return GatewayError(
        fail(
            Reason.STREAM_EXPIRED,
            f"the stream's events after {after} are no longer all kept (the oldest kept is number {oldest}): "
            "nothing is replayed",
        )
    )


def past_the_end(after: int, last: int) -> GatewayError:
    """INVALID_REQUEST: ``after_seq`` names an event past the last of a stream that has ended."""
    return GatewayError(
        fail(
            Reason.INVALID_REQUEST,
            f"after_seq: {after} is past the stream's last event, {last}",
            violations=(Violation("after_seq", f"at most {last}, the number of the stream's last event"),),
        )
    )


class Owner(Protocol):
    """What a stream tells the store that keeps it."""

    def grew(self, stream: Stream, size: int) -> None: ...

    def shrank(self, size: int) -> None: ...

    def ended(self, stream: Stream) -> None: ...


class Mirror(Protocol):
    """A copy of a stream elsewhere (Redis), written as the stream is."""

    def append(self, stream: Stream, chunk: Chunk) -> None: ...

    def request_id(self, stream: Stream, request_id: str) -> None: ...

    def finish(self, stream: Stream, outcome: Outcome) -> None: ...


class Stream:
    """One resumable stream as its producing replica holds it."""

    def __init__(
        self,
        stream_id: str,
        caller: str,
        grace: float,
        max_events: int,
        owner: Owner,
        end_call: Callable[[Failure], None],
    ) -> None:
        self.id = stream_id
        self.caller = caller
        self.grace = grace
        self._max_events = max_events
        self._owner = owner
        self._end_call = end_call  # ends the producing call with a status (its Admitted.end)
        self._chunks: list[Chunk | None] = []  # from _head on: the kept chunks, in order
        self._head = 0
        self.dropped = 0  # chunks dropped from the front so far
        self.kept = 0  # events kept
        self.bytes = 0  # what the kept chunks cost
        self.next = 1  # the number of the next event
        self.request_id: str | None = None
        self.outcome: Outcome | None = None
        self.resumable = True  # False once its copy elsewhere failed: new resumes are refused
        self.mirror: Mirror | None = None
        self.on_grace_passed: Callable[[Stream], None] = abandon
        self._followers: set[LocalFollower] = set()
        self._changed = asyncio.Event()  # set (and cleared) at each new chunk and at the end
        self._advanced = asyncio.Event()  # set when a follower moved on while the producer waits for it
        self._producer_waits = False
        self._timer: asyncio.TimerHandle | None = None
        self._arm()  # nobody follows yet: the grace runs until the first follower attaches

    # The producer's side.

    def append(self, chunk: Chunk) -> None:
        """Keep the next events (numbered ``chunk.first`` on) and wake the followers."""
        self._chunks.append(chunk)
        self.kept += chunk.count
        self.next = chunk.first + chunk.count
        size = len(chunk.data) + CHUNK_OVERHEAD
        self.bytes += size
        while self.kept > self._max_events and self.drop_first():
            pass
        self._owner.grew(self, size)
        if self.mirror is not None:
            self.mirror.append(self, chunk)
        self._changed.set()
        self._changed.clear()

    def set_request_id(self, request_id: str) -> None:
        self.request_id = request_id
        if self.mirror is not None:
            self.mirror.request_id(self, request_id)

    def finish(self, outcome: Outcome) -> None:
        """The call ended: keep how, and tell the followers."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.mirror is not None:
            self.mirror.finish(self, outcome)
        self._owner.ended(self)
        self._changed.set()
        self._changed.clear()

    @property
    def position(self) -> int:
        """The position of the next chunk, counted from the stream's first."""
        return self.dropped + len(self._chunks) - self._head

    async def keep_up(self) -> None:
        """Wait while a caller following the stream is more than ``LAG`` chunks behind."""
        while self._followers and self.position - min(f.position for f in self._followers) > LAG:
            self._producer_waits = True
            try:
                await self._advanced.wait()
            finally:
                self._producer_waits = False
            self._advanced.clear()

    def end(self, failure: Failure) -> None:
        """End the producing call with ``failure`` (CancelStream, the grace), unless it ended already."""
        if self.outcome is None:
            self._end_call(failure)

    # Keeping.

    @property
    def oldest(self) -> int:
        """The number of the oldest event kept (``next`` when none is)."""
        chunk = self._chunks[self._head] if self._head < len(self._chunks) else None
        return self.next if chunk is None else chunk.first

    def drop_first(self) -> int:
        """Drop the oldest kept chunk, unless a following caller has still to send it; returns what it cost (0 when
        it was not dropped)."""
        if self._head >= len(self._chunks):
            return 0
        for follower in self._followers:
            if follower.position <= self.dropped:
                return 0
        chunk = self._chunks[self._head]
        assert chunk is not None
        self._chunks[self._head] = None
        self._head += 1
        self.dropped += 1
        self.kept -= chunk.count
        size = len(chunk.data) + CHUNK_OVERHEAD
        self.bytes -= size
        self._owner.shrank(size)
        if self._head > 64 and 2 * self._head > len(self._chunks):
            del self._chunks[: self._head]
            self._head = 0
        return size

    # The followers' side.

    @property
    def followers(self) -> int:
        return len(self._followers)

    def attach(self, follower: LocalFollower) -> None:
        self._followers.add(follower)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def detach(self, follower: LocalFollower) -> None:
        self._followers.discard(follower)
        if self._producer_waits:
            self._advanced.set()
        if not self._followers and self.outcome is None:
            self._arm()

    def moved(self) -> None:
        """A follower moved on."""
        if self._producer_waits:
            self._advanced.set()

    def _arm(self, delay: float | None = None) -> None:
        delay = self.grace if delay is None else delay
        self._timer = asyncio.get_running_loop().call_later(delay, self._grace_passed)

    def rearm(self, delay: float) -> None:
        """Look again in ``delay`` seconds whether anybody follows (somebody did, elsewhere)."""
        if self._timer is None and not self._followers and self.outcome is None:
            self._arm(delay)

    def _grace_passed(self) -> None:
        self._timer = None
        if not self._followers and self.outcome is None:
            self.on_grace_passed(self)

    def chunk_at(self, position: int) -> Chunk | None:
        """The chunk at ``position`` (counted from the stream's first), None past the newest."""
        index = self._head + position - self.dropped
        return self._chunks[index] if index < len(self._chunks) else None

    async def changed(self) -> None:
        """Return at the next chunk, or at the end."""
        await self._changed.wait()


def abandon(stream: Stream) -> None:
    """What a stream's detach grace ends in: its call cancelled, STREAM_ABANDONED."""
    stream.end(
        fail(
            Reason.STREAM_ABANDONED,
            f"no caller followed the stream for its detach grace ({stream.grace:g}s): the gateway cancelled it",
        )
    )


class LocalFollower:
    """A caller following a stream in this process; attached from its making until ``close``."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.position = stream.dropped  # of the next chunk to send, counted from the stream's first
        self._open = True
        stream.attach(self)

    @property
    def request_id(self) -> str | None:
        return self.stream.request_id

    @property
    def outcome(self) -> Outcome | None:
        return self.stream.outcome

    async def chunks(self, after: int) -> AsyncGenerator[Chunk, None]:
        """Every event after number ``after``, as chunks, then the live ones until the stream ends; STREAM_EXPIRED
        when one of them is no longer kept."""
        stream = self.stream
        if after + 1 < stream.oldest:
            raise expired(after, stream.oldest)
        if stream.outcome is not None and after >= stream.next:
            raise past_the_end(after, stream.next - 1)
        self.position = stream.dropped
        while True:
            while True:
                if self.position < stream.dropped:
                    raise expired(after, stream.oldest)
                chunk = stream.chunk_at(self.position)
                if chunk is None:
                    break
                if chunk.first + chunk.count <= after + 1:
                    self.position += 1
                    continue  # the caller has it all
                if chunk.first <= after:
                    chunk = tail(chunk, after)
                after = chunk.first + chunk.count - 1
                yield chunk  # sent when the caller asks for the next one
                self.position += 1
                stream.moved()
            if stream.outcome is not None:
                return
            await stream.changed()

    async def close(self) -> None:
        if self._open:
            self._open = False
            self.stream.detach(self)
