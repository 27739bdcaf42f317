"""``RedisStore``: resumable streams in Redis Streams (``GATEWAY_REDIS_URL``), so that a resume lands on any replica.

The replica producing a stream holds it in memory as well (``server.streams.memory.MemoryStore``, dropped at its
end), for the callers that follow it there; every other replica reads Redis. Per stream, with the stream id as
hash tag (one Redis Cluster slot):

    claude-gateway:stream:{ID}:events     a Redis Stream: one entry per upstream read (XADD), id ``<first>-0``
                                          where <first> is the number of its first event, fields n (events) and
                                          d (the serialized response); the last entry, ``<last + 1>-0``, holds the
                                          end (field ``end``: the trailers or the status). MAXLEN ~
                                          GATEWAY_RESUME_MAX_EVENTS; it expires GATEWAY_RESUME_RETENTION after the
                                          end (or after its producer's last sign of life)
    claude-gateway:stream:{ID}:meta       a hash: caller, replica, request_id, state (live, ended, broken);
                                          remembered a day past the events, so an expired id is not unknown
    claude-gateway:stream:{ID}:producer   exists while the producing replica lives (renewed every
                                          GATEWAY_LEASE_SECONDS / 3): a follower elsewhere that finds it gone
                                          before the end says STREAM_PRODUCER_LOST
    claude-gateway:stream:{ID}:attached   exists while a caller follows the stream from another replica (renewed
                                          every second), so the producer's detach grace does not run out

Writes go out off the call's path, many to a round trip (``Writer``: packed by hiredis, the round trips at least
``SPACING`` apart while nobody waits for a reply); a write that fails makes its stream not resumable
(STREAM_NOT_RESUMABLE, with a WARNING and ``gateway_streams_unresumable``) while the stream itself goes on for
the callers following it. Followers elsewhere read with XRANGE, then XREAD BLOCK.
CancelStream for a stream another replica produces reaches it on that replica's Pub/Sub channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from server.config import Settings
from server.errors import Failure, GatewayError, Reason, fail
from server.streams.memory import REMEMBERED, MemoryStore, end
from server.streams.store import CANCELLED, Follower, gone, not_found, not_resumable, of_another_caller
from server.streams.stream import (
    Chunk,
    LocalFollower,
    Outcome,
    Stream,
    abandon,
    expired,
    past_the_end,
    tail,
)

log = logging.getLogger("server.streams")

PREFIX = "claude-gateway:stream:"
ATTACHED_MS = 3000  # life of a remote follower's mark, renewed every ATTACHED_MS / 3
BLOCK_MS = 1000  # longest XREAD BLOCK of a follower before it looks whether the producer still lives
PAGE = 256  # entries per XRANGE of a replay
STORE_RETRY = 1.0  # seconds a Redis that failed is not tried again for a new stream
SPACING = 0.005  # seconds at least between two round trips of the writes (unless one is waited for)


def keys(stream_id: str) -> tuple[str, str, str, str]:
    """The events, meta, producer and attached keys of stream ``stream_id``."""
    base = f"{PREFIX}{{{stream_id}}}:"
    return base + "events", base + "meta", base + "producer", base + "attached"


def channel(replica: str) -> str:
    """The Pub/Sub channel on which ``replica`` hears CancelStream for the streams it produces."""
    return f"claude-gateway:replica:{replica}"


def store_unavailable(exc: BaseException) -> GatewayError:
    return GatewayError(
        fail(
            Reason.STREAM_STORE_UNAVAILABLE, f"the gateway cannot reach Redis to find the stream ({type(exc).__name__})"
        )
    )


def producer_lost(stream_id: str) -> GatewayError:
    return GatewayError(
        fail(
            Reason.STREAM_PRODUCER_LOST,
            f"the replica producing stream {stream_id!r} stopped before its end: the rest of it will never come",
        )
    )


Reply = Callable[[list[Any] | BaseException], None]


class Writer:
    """Sends commands to Redis, whatever is queued meanwhile together in the next round trip, in order; each group
    of commands hears its replies (or the error) by its callback, off the caller's path. Round trips are at least
    ``SPACING`` apart unless somebody waits for a reply (``call``), so that the many streams' writes of a busy
    replica share them: what a round trip costs the gateway is paid once per few dozen events, not per event."""

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout  # the longest wait for the replies of one round trip
        self._queue: list[tuple[tuple[tuple[Any, ...], ...], Reply | None]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sender: asyncio.Task[None] | None = None
        self._urgent = False  # somebody waits for a reply of what is queued: no spacing before its round trip
        self._pause: asyncio.Future[None] | None = None  # the spacing being waited out, if it is

    def send(self, commands: tuple[tuple[Any, ...], ...], reply: Reply | None = None) -> None:
        self._queue.append((commands, reply))
        self._idle.clear()
        self._wake.set()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())

    async def call(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` and wait for their replies (an error reply raises it)."""
        done: asyncio.Future[list[Any] | BaseException] = asyncio.get_running_loop().create_future()

        def answer(replies: list[Any] | BaseException) -> None:
            if not done.done():
                done.set_result(replies)

        self.send(commands, answer)
        self._urgent = True
        if self._pause is not None and not self._pause.done():
            self._pause.set_result(None)
        replies = await done
        if isinstance(replies, BaseException):
            raise replies
        for value in replies:
            if isinstance(value, BaseException):
                raise value
        return replies

    async def _send_all(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            self._urgent = False
            try:
                replies = await self._round_trip([command for commands, _ in batch for command in commands])
            except asyncio.CancelledError:
                self._answer(batch, ConnectionError("the gateway is closing"))
                raise
            except Exception as exc:  # every Redis or socket error is the batch's answer
                self._answer(batch, exc)
            else:
                at = 0
                for commands, reply in batch:
                    if reply is not None:
                        reply(replies[at : at + len(commands)])
                    at += len(commands)
            if not self._queue:
                self._idle.set()
            if not self._urgent:
                self._pause = pause = loop.create_future()
                timer = loop.call_later(SPACING, _release, pause)
                try:
                    await pause
                finally:
                    timer.cancel()
                    self._pause = None

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on one of the client's connections and read their replies (an error reply
        in its command's place). Packed by hiredis, in C, and read under one timeout for them all: what a redis-py
        pipeline spends per command in Python (packing, a timeout per reply, reply callbacks) is most of what
        mirroring an event costs the gateway."""
        packed = b"".join(map(hiredis.pack_command, commands))
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        try:
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            async with asyncio.timeout(self._timeout):
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except BaseException:
            # Replies may be left unread on it (a timeout, a cancel, a broken socket): never hand it out again.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    @staticmethod
    def _answer(batch: list[tuple[tuple[tuple[Any, ...], ...], Reply | None]], exc: BaseException) -> None:
        for _, reply in batch:
            if reply is not None:
                reply(exc)

    async def close(self, wait: float) -> None:
        """Send what is queued (within ``wait`` seconds), then stop."""
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._idle.wait()
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


def _release(pause: asyncio.Future[None]) -> None:
    if not pause.done():
        pause.set_result(None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _failed(replies: list[Any] | BaseException) -> BaseException | None:
    if isinstance(replies, BaseException):
        return replies
    for reply in replies:  # a loop, not a generator: this runs once per upstream read of every stream
        if isinstance(reply, BaseException):
            return reply
    return None


class RedisStore:
    """Resumable streams in Redis, shared by every replica that names the same server."""

    def __init__(self, settings: Settings, *, on_unresumable: Callable[[], None] | None = None) -> None:
        common: dict[str, Any] = {
            "socket_connect_timeout": settings.redis_timeout,
            "retry": Retry(NoBackoff(), 1),  # one quick retry on a fresh connection (a restarted Redis)
        }
        self.client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout, **common)
        # Followers' blocking reads, on connections of their own that wait longer than one command may.
        self._reads = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=BLOCK_MS / 1000 + settings.redis_timeout, **common
        )
        self._writer = Writer(self.client, settings.redis_timeout)
        self._local = MemoryStore(settings, keep_ended=False)
        self._replica = uuid.uuid4().hex[:12]
        self._max_entries = settings.resume_max_events
        self._retention_ms = int(settings.resume_retention * 1000)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._remembered_ms = int((settings.max_stream_seconds + settings.resume_retention + REMEMBERED) * 1000)
        self._timeout = settings.redis_timeout
        self._on_unresumable = on_unresumable
        self._retry_at = 0.0  # monotonic time before which a failed Redis is not tried for a new stream
        self._tasks: list[asyncio.Task[None]] = []

    # The store.

    async def create(self, stream_id: str, caller: str, grace: float, end_call: Callable[[Failure], None]) -> Stream:
        stream = self._local.make(stream_id, caller, grace, end_call)
        stream.on_grace_passed = self._grace_passed
        if time.monotonic() < self._retry_at:
            self._unresumable(stream, ConnectionError("Redis failed a moment ago"))
            return stream
        _, meta, producer, _ = keys(stream_id)
        try:
            await self._writer.call(
                ("HSET", meta, "caller", caller, "replica", self._replica, "state", "live"),
                ("PEXPIRE", meta, self._remembered_ms),
                ("SET", producer, 1, "PX", self._lease_ms),
            )
        except (RedisError, OSError) as exc:
            self._retry_at = time.monotonic() + STORE_RETRY
            self._unresumable(stream, exc)
            return stream
        stream.mirror = self
        return stream

    def find(self, stream_id: str, caller: str) -> Stream | None:
        return self._local.find(stream_id, caller)

    async def follow(self, stream_id: str, caller: str, after: int) -> Follower:
        stream = self._local.find(stream_id, caller)
        if stream is not None:
            if not stream.resumable:
                raise not_resumable(stream_id)
            if after + 1 >= stream.oldest:
                return LocalFollower(stream)  # produced here: followed from memory (Redis may keep older events)
        try:
            fields = await self._reads.hgetall(keys(stream_id)[1])
        except (RedisError, OSError) as exc:
            raise store_unavailable(exc) from None
        meta = {_text(k): _text(v) for k, v in fields.items()}
        if not meta:
            raise not_found(stream_id)
        if meta.get("caller") != caller:
            raise of_another_caller(stream_id)
        if meta.get("state") == "broken":
            raise not_resumable(stream_id)
        return RedisFollower(self, stream_id, meta.get("request_id"))

    async def cancel(self, stream_id: str, caller: str) -> None:
        stream = self._local.find(stream_id, caller)
        if stream is not None:
            await end(stream)
            return
        try:
            fields = await self.client.hmget(keys(stream_id)[1], "caller", "replica", "state")
            owner, replica, state = (_text(v) if v is not None else None for v in fields)
            if owner is None:
                raise not_found(stream_id)
            if owner != caller:
                raise of_another_caller(stream_id)
            if state == "live" and replica:
                await self.client.publish(channel(replica), stream_id)
        except (RedisError, OSError) as exc:
            raise store_unavailable(exc) from None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._renew()), asyncio.create_task(self._listen())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._writer.close(2 * self._timeout)
        await self.client.aclose()
        await self._reads.aclose()

    # Mirroring the streams produced here (Stream calls these).

    def append(self, stream: Stream, chunk: Chunk) -> None:
        if not stream.resumable:
            return
        events = f"{PREFIX}{{{stream.id}}}:events"  # keys(stream.id)[0], without the three others
        command: tuple[tuple[Any, ...], ...] = (
            ("XADD", events, "MAXLEN", "~", self._max_entries, f"{chunk.first}-0", "n", chunk.count, "d", chunk.data),
        )
        if chunk.first == 1:
            command += (("PEXPIRE", events, self._lease_ms + self._retention_ms),)
        self._writer.send(command, lambda replies: self._written(stream, replies))

    def request_id(self, stream: Stream, request_id: str) -> None:
        if stream.resumable:
            meta = keys(stream.id)[1]
            self._writer.send((("HSET", meta, "request_id", request_id),), lambda r: self._written(stream, r))

    def finish(self, stream: Stream, outcome: Outcome) -> None:
        events, meta, producer, _ = keys(stream.id)
        commands: tuple[tuple[Any, ...], ...] = ()
        if stream.resumable:
            commands = (("XADD", events, f"{stream.next}-0", "end", outcome.encode()),)
        commands += (
            ("PEXPIRE", events, max(1, self._retention_ms)),
            ("HSET", meta, "state", "ended" if stream.resumable else "broken"),
            ("PEXPIRE", meta, self._retention_ms + int(REMEMBERED * 1000)),
            ("DEL", producer),
        )
        self._writer.send(commands, lambda replies: self._written(stream, replies))

    def _written(self, stream: Stream, replies: list[Any] | BaseException) -> None:
        failure = _failed(replies)
        if failure is not None and stream.resumable:
            self._unresumable(stream, failure)

    def _unresumable(self, stream: Stream, exc: BaseException) -> None:
        stream.resumable = False
        log.warning(
            "resumable stream %s is no longer resumable: Redis failed (%s); the stream goes on for its caller",
            stream.id,
            type(exc).__name__,
        )
        if self._on_unresumable is not None:
            self._on_unresumable()
        if stream.outcome is None and stream.mirror is not None:  # mark it broken, should Redis answer again
            meta = keys(stream.id)[1]
            self._writer.send((("HSET", meta, "state", "broken"),))

    # The detach grace of a stream produced here, which callers on other replicas may be following.

    def _grace_passed(self, stream: Stream) -> None:
        if stream.mirror is None or not stream.resumable:
            abandon(stream)
            return
        attached = keys(stream.id)[3]

        def heard(replies: list[Any] | BaseException) -> None:
            if stream.outcome is not None or stream.followers:
                return
            if isinstance(replies, list) and replies and replies[0]:
                stream.rearm(ATTACHED_MS / 1000)  # followed elsewhere: look again later
            else:
                abandon(stream)

        self._writer.send((("EXISTS", attached),), heard)

    # Background work.

    async def _renew(self) -> None:
        """Every lease / 3: the producer key (and the events' expiry) of each stream produced here."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            commands: list[tuple[Any, ...]] = []
            for stream in self._local.live():
                if stream.resumable and stream.mirror is not None:
                    events, _, producer, _ = keys(stream.id)
                    commands.append(("SET", producer, 1, "PX", self._lease_ms))
                    commands.append(("PEXPIRE", events, self._lease_ms + self._retention_ms))
            if commands:
                self._writer.send(tuple(commands))

    async def _listen(self) -> None:
        """CancelStream for the streams produced here, from other replicas."""
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(channel(self._replica))
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None:
                            continue
                        stream = self._local.get(message["data"].decode())
                        if stream is not None:
                            stream.end(CANCELLED)
            except (RedisError, OSError) as exc:
                log.debug("CancelStream channel lost (%s); listening again in a second", type(exc).__name__)
                await asyncio.sleep(STORE_RETRY)


class RedisFollower:
    """A caller following from Redis a stream another replica produces (or produced)."""

    def __init__(self, store: RedisStore, stream_id: str, request_id: str | None) -> None:
        self._store = store
        self._id = stream_id
        self._events, self._meta, self._producer, self._attached = keys(stream_id)
        self.request_id = request_id
        self.outcome: Outcome | None = None
        self._marker: asyncio.Task[None] | None = asyncio.create_task(self._mark())

    async def _mark(self) -> None:
        """Keep the attached mark while following, so that the producer's detach grace does not run out."""
        while True:
            self._store._writer.send((("SET", self._attached, 1, "PX", ATTACHED_MS),))
            await asyncio.sleep(ATTACHED_MS / 3000)

    async def chunks(self, after: int) -> AsyncGenerator[Chunk, None]:
        reads: Any = self._store._reads  # redis-py's reply types are unions of every protocol's shapes
        expected = after + 1  # the number of the next event the caller needs
        try:
            # The entry holding event `expected` starts at or before it: find it, then page on from there.
            before = await reads.xrevrange(self._events, f"{expected}-0", "-", count=1)
            start = before[0][0] if before else b"-"
            entries = await reads.xrange(self._events, start, "+", count=PAGE)
            if not entries and not before and await reads.hget(self._meta, "state") in (b"ended", b"broken"):
                raise gone(self._id)  # its events expired before its id was forgotten
            last_id = b"0-0"
            while True:
                for entry_id, fields in entries:
                    last_id = entry_id
                    first = int(entry_id.split(b"-")[0])
                    if b"end" in fields:
                        if after >= first:
                            raise past_the_end(after, first - 1)
                        if first > expected:
                            raise await self._gap(expected, first)
                        self.outcome = Outcome.decode(fields[b"end"])
                        return
                    count = int(fields[b"n"])
                    if first > expected:
                        raise await self._gap(expected, first)
                    if first + count <= expected:
                        continue
                    chunk = Chunk(first, count, fields[b"d"])
                    if first < expected:
                        chunk = tail(chunk, expected - 1)
                    expected = chunk.first + chunk.count
                    yield chunk
                if len(entries) == PAGE:
                    entries = await reads.xrange(self._events, b"(" + last_id, "+", count=PAGE)
                    continue
                read = await reads.xread({self._events: last_id}, count=PAGE, block=BLOCK_MS)
                entries = read[0][1] if read else []
                if not entries and not await reads.exists(self._producer):
                    # Nothing came and the producer is gone: unless its end was written meanwhile, it died.
                    entries = await reads.xrange(self._events, b"(" + last_id, "+", count=PAGE)
                    if not entries:
                        if await reads.hget(self._meta, "state") == b"broken":
                            raise not_resumable(self._id)
                        raise producer_lost(self._id)
        except (RedisError, OSError) as exc:
            raise store_unavailable(exc) from None

    async def _gap(self, expected: int, first: int) -> GatewayError:
        """The error for a missing event: its stream's store failed (broken), or it was trimmed (expired)."""
        if await self._store._reads.hget(self._meta, "state") == b"broken":
            return not_resumable(self._id)
        return expired(expected - 1, first)

    async def close(self) -> None:
        if self._marker is not None:
            self._marker.cancel()
            self._marker = None
