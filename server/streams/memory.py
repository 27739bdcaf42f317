"""``MemoryStore``: resumable streams in this process (one replica, a sidecar; and each replica's live streams
when Redis holds the rest, ``server.streams.redis_store``).

Bounded three ways: ``GATEWAY_RESUME_MAX_EVENTS`` per stream (its oldest events dropped first);
``GATEWAY_RESUME_MEMORY_BYTES`` over all streams (past it the ended streams go first, the oldest first, then the
oldest events of the live ones, the oldest stream first); and ``GATEWAY_RESUME_RETENTION`` after a stream's
end. A stream no longer kept is remembered by its id and caller for a day (at most ``FORGOTTEN`` of them), so
that a resume of it says STREAM_EXPIRED, not STREAM_NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from server.config import Settings
from server.errors import Failure
from server.streams.store import CANCELLED, Follower, gone, not_found, not_resumable, of_another_caller
from server.streams.stream import LocalFollower, Stream

REMEMBERED = 24 * 3600.0  # seconds an id is remembered after its stream's events are gone
FORGOTTEN = 50_000  # ids remembered at most (about 100 bytes each)


class MemoryStore:
    """Resumable streams in this process's memory."""

    def __init__(self, settings: Settings, *, keep_ended: bool = True, clock: Callable[[], float] = time.monotonic):
        self._retention = settings.resume_retention if keep_ended else 0.0
        self._keep_ended = keep_ended
        self._max_events = settings.resume_max_events
        self._max_bytes = settings.resume_memory_bytes
        self._clock = clock
        self._streams: OrderedDict[str, Stream] = OrderedDict()  # in the order they were made
        self._ended: OrderedDict[str, float] = OrderedDict()  # ended streams, in the order they ended: until when
        self._forgotten: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (caller, remembered until)
        self.bytes = 0  # what every kept chunk costs

    # The store.

    async def create(self, stream_id: str, caller: str, grace: float, end_call: Callable[[Failure], None]) -> Stream:
        return self.make(stream_id, caller, grace, end_call)

    def make(self, stream_id: str, caller: str, grace: float, end_call: Callable[[Failure], None]) -> Stream:
        self._sweep()
        stream = Stream(stream_id, caller, grace, self._max_events, self, end_call)
        self._streams[stream_id] = stream
        return stream

    def get(self, stream_id: str) -> Stream | None:
        """The stream ``stream_id``, if this process keeps it, whoever's it is."""
        return self._streams.get(stream_id)

    def live(self) -> list[Stream]:
        """The streams kept here that have not ended."""
        return [stream for stream in self._streams.values() if stream.outcome is None]

    def find(self, stream_id: str, caller: str) -> Stream | None:
        """``caller``'s stream, if this process keeps it; GatewayError if it is another caller's, or was kept and is
        no longer (with ``keep_ended``)."""
        self._sweep()
        stream = self._streams.get(stream_id)
        if stream is None:
            forgotten = self._forgotten.get(stream_id)
            if forgotten is None:
                return None
            if forgotten[0] != caller:
                raise of_another_caller(stream_id)
            raise gone(stream_id)
        if stream.caller != caller:
            raise of_another_caller(stream_id)
        return stream

    async def follow(self, stream_id: str, caller: str, after: int) -> Follower:
        stream = self.find(stream_id, caller)
        if stream is None:
            raise not_found(stream_id)
        if not stream.resumable:
            raise not_resumable(stream_id)
        return LocalFollower(stream)

    async def cancel(self, stream_id: str, caller: str) -> None:
        stream = self.find(stream_id, caller)
        if stream is None:
            raise not_found(stream_id)
        await end(stream)

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # What streams tell it.

    def grew(self, stream: Stream, size: int) -> None:
        self.bytes += size
        if self.bytes > self._max_bytes:
            self._evict()

    def shrank(self, size: int) -> None:
        self.bytes -= size

    def ended(self, stream: Stream) -> None:
        if self._keep_ended:
            self._ended[stream.id] = self._clock() + self._retention
        else:
            self._drop(stream, remember=False)

    # Keeping within bounds.

    def _evict(self) -> None:
        while self.bytes > self._max_bytes and self._ended:
            self._drop(self._streams[next(iter(self._ended))], remember=True)
        for stream in list(self._streams.values()):
            while self.bytes > self._max_bytes and stream.drop_first():
                pass
            if self.bytes <= self._max_bytes:
                return

    def _sweep(self) -> None:
        now = self._clock()
        while self._ended:
            stream_id, until = next(iter(self._ended.items()))
            if until > now:
                break
            self._drop(self._streams[stream_id], remember=True)
        while self._forgotten:
            stream_id, (_, until) = next(iter(self._forgotten.items()))
            if until > now and len(self._forgotten) <= FORGOTTEN:
                break
            del self._forgotten[stream_id]

    def _drop(self, stream: Stream, *, remember: bool) -> None:
        del self._streams[stream.id]
        self._ended.pop(stream.id, None)
        self.bytes -= stream.bytes  # followers still reading it keep their chunks alive, counted no more
        if remember:
            self._forgotten[stream.id] = (stream.caller, self._clock() + REMEMBERED)


async def end(stream: Stream, wait: float = 5.0) -> None:
    """End ``stream``'s call with STREAM_CANCELLED and wait (a little) until it has ended."""
    if stream.outcome is not None:
        return
    stream.end(CANCELLED)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while stream.outcome is None:
                await stream.changed()
