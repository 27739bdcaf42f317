"""``EventStore``: where resumable streams are made, found and ended; in memory or in Redis.

    store.create(stream_id, caller, grace, end_call) -> Stream   a new stream, produced by this process
    store.follow(stream_id, caller, after) -> Follower           a stream to resume; GatewayError if it cannot be
    store.cancel(stream_id, caller)                              CancelStream

``server.streams.memory.MemoryStore`` keeps the events in this process (one replica, a sidecar);
``server.streams.redis_store.RedisStore`` in Redis Streams as well, so that a resume can land on any replica.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from server.errors import Failure, GatewayError, Reason, fail
from server.streams.stream import Chunk, Outcome, Stream


class Follower(Protocol):
    """One caller following a stream: attached (the detach grace does not run) until ``close``."""

    @property
    def request_id(self) -> str | None:
        """The upstream's request id, once it answered."""
        ...

    @property
    def outcome(self) -> Outcome | None:
        """How the stream ended, once ``chunks`` is exhausted."""
        ...

    def chunks(self, after: int) -> AsyncGenerator[Chunk, None]:
        """Every event after number ``after``, then the live ones until the stream ends; GatewayError when the
        stream cannot be followed on (STREAM_EXPIRED, STREAM_PRODUCER_LOST...)."""
        ...

    async def close(self) -> None:
        """Stop following (the detach grace starts when nobody else follows)."""
        ...


class EventStore(Protocol):
    """Where resumable streams live."""

    async def create(self, stream_id: str, caller: str, grace: float, end_call: Callable[[Failure], None]) -> Stream:
        """A new stream of ``caller``'s, produced here; ``end_call`` ends the producing call with a status."""
        ...

    def find(self, stream_id: str, caller: str) -> Stream | None:
        """``caller``'s stream, if this process holds it (it produces it, or keeps it in memory)."""
        ...

    async def follow(self, stream_id: str, caller: str, after: int) -> Follower:
        """Follow ``caller``'s stream from event ``after`` on; GatewayError if it is unknown, expired, another
        caller's, or cannot be resumed."""
        ...

    async def cancel(self, stream_id: str, caller: str) -> None:
        """End ``caller``'s stream with STREAM_CANCELLED (nothing if it ended already)."""
        ...

    def start(self) -> None:
        """Start background work."""
        ...

    async def close(self) -> None:
        """Finish pending writes and let go of connections."""
        ...


def not_found(stream_id: str) -> GatewayError:
    return GatewayError(fail(Reason.STREAM_NOT_FOUND, f"no stream {stream_id!r} is known to the gateway"))


def of_another_caller(stream_id: str) -> GatewayError:
    return GatewayError(fail(Reason.STREAM_OF_ANOTHER_CALLER, f"stream {stream_id!r} was started by another caller"))


def gone(stream_id: str) -> GatewayError:
    """STREAM_EXPIRED for a whole stream: past its retention, or evicted."""
    return GatewayError(
        fail(
            Reason.STREAM_EXPIRED,
            f"stream {stream_id!r} is past its retention (GATEWAY_RESUME_RETENTION) or was evicted: "
            "nothing is replayed",
        )
    )


def not_resumable(stream_id: str) -> GatewayError:
    return GatewayError(
        fail(
            Reason.STREAM_NOT_RESUMABLE,
            f"stream {stream_id!r} cannot be resumed: its event store failed while it ran",
        )
    )


CANCELLED = fail(Reason.STREAM_CANCELLED, "CancelStream ended the stream")
