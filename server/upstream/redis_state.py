"""The pool's state in Redis, shared by every replica that names the same server (``GATEWAY_REDIS_URL``).

``RedisPoolState`` is ``PoolState`` (the same reads, from a mirror in this process's memory) whose writes
also go to Redis, and whose mirror is brought up to date from Redis before each call chooses a key:

    refresh()   one round trip (shared by every call choosing at the same moment): the whole pool state,
                four hashes, read by one script; a replica that starts learns the pool this way
    kill, cool, trip, reset, report, reserve
                one script each, sent without waiting (``server.redis_pipeline.Pipeline`` puts the
                writes of many calls in one round trip); the mirror changes at once

Keys, with one hash tag so that they live in one Redis Cluster slot (fields as in ``server.upstream.state``):

    claude-gateway:{pool}:dead       member -> dead until
    claude-gateway:{pool}:cooled     member|family -> cooling until
    claude-gateway:{pool}:circuits   circuit -> "until level"
    claude-gateway:{pool}:headroom   member|family|bucket -> "limit remaining at window"

When Redis cannot be reached, the mirror is what this replica knows (and keeps learning): calls go on.
Only imported when Redis is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from server.config import Settings
from server.redis_pipeline import Pipeline
from server.upstream.headroom import KINDS, Bucket, Cost, Headroom, rate_limits
from server.upstream.state import CIRCUIT_BASE, CIRCUIT_MAX, PoolState

log = logging.getLogger(__name__)

KEYS = [f"claude-gateway:{{pool}}:{name}" for name in ("dead", "cooled", "circuits", "headroom")]
DEAD, COOLED, CIRCUITS, HEADROOM = KEYS
TTL_MS = 24 * 3600 * 1000  # the pool's hashes live a day past their last write
RETRY_SECONDS = 1.0  # a Redis that failed is not asked again before this
REFRESH_WAIT = 0.25  # the longest a call waits for the pool's state before it chooses from what it knows

READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4])}
"""

# KEYS: the hash. ARGV: field, until. Keeps the later of the two.
LATEST = """
local was = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
if tonumber(ARGV[2]) > was then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: circuits. ARGV: circuit, now, base, max, ttl. Opens it unless open; returns until.
TRIP = """
local got = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local untl, level = 0, 0
if got then
  local sp = string.find(got, ' ')
  untl, level = tonumber(string.sub(got, 1, sp - 1)), tonumber(string.sub(got, sp + 1))
end
if untl > now then return tostring(untl) end
level = level + 1
untl = now + math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (level - 1))
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.3f %d', untl, level))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return tostring(untl)
"""

# KEYS: the hash. ARGV: field.
DELETE = """
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: headroom. ARGV: ttl, then field, value pairs.
REPORT = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: headroom. ARGV: now, then field, cost pairs. Takes the cost from each bucket's headroom now.
RESERVE = """
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local got = redis.call('HGET', KEYS[1], ARGV[i])
  if got then
    local limit, remaining, at, window = string.match(got, '(%S+) (%S+) (%S+) (%S+)')
    limit, remaining, at, window = tonumber(limit), tonumber(remaining), tonumber(at), tonumber(window)
    local room = math.min(limit, remaining + limit * math.max(0, now - at) / window) - tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], string.format('%.17g %.17g %.6f %.17g', limit, room, now, window))
  end
end
return 1
"""

SCRIPTS = {"read": READ, "latest": LATEST, "trip": TRIP, "delete": DELETE, "report": REPORT, "reserve": RESERVE}


class RedisPoolState(PoolState):
    """The pool's state shared through Redis; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._pipeline = Pipeline(self.client, SCRIPTS)
        self._pipeline.on_error = self._went_down
        self._reading: asyncio.Future[None] | None = None  # the refresh in flight, shared by every call waiting
        self._wait = min(REFRESH_WAIT, settings.redis_timeout)
        self._retry_at = 0.0
        self.up = True

    # ---- the mirror, from Redis ----

    async def refresh(self, wait: float | None = None) -> None:
        """One round trip for every call that asks while it is out; the mirror is Redis's view after it. A call
        waits for it at most ``wait`` (default ``REFRESH_WAIT``: a slow Redis is not the call's delay, it
        chooses from the mirror, which the read updates when it lands)."""
        if time.monotonic() < self._retry_at:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reading), self._wait if wait is None else wait)

    async def _read(self) -> None:
        try:
            reply = await self._pipeline.call("read", KEYS, ())
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return
        if not self.up:
            log.warning("the pool's state in Redis is reachable again")
            self.up = True
        self._load(*(_pairs(part) for part in reply))

    def _load(
        self, dead: dict[str, str], cooled: dict[str, str], circuits: dict[str, str], headroom: dict[str, str]
    ) -> None:
        self._dead = {member: float(until) for member, until in dead.items()}
        self._cooled = {}
        for field, until in cooled.items():
            member, _, family = field.partition("|")
            self._cooled[(member, family)] = float(until)
        self._circuits = {}
        for circuit, value in circuits.items():
            until, _, level = value.partition(" ")
            self._circuits[circuit] = (float(until), int(level))
        rooms: dict[tuple[str, str], Headroom] = {}
        for field, value in headroom.items():
            member, _, rest = field.partition("|")
            family, _, bucket = rest.rpartition("|")
            numbers = value.split(" ")
            if bucket not in KINDS or len(numbers) != 4:
                continue
            limit, remaining, at, window = (float(n) for n in numbers)
            rooms.setdefault((member, family), Headroom()).buckets[bucket] = Bucket(limit, remaining, at, window)
        self._headroom = rooms

    def _went_down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if self.up:
            self.up = False
            log.warning(
                "the pool's state in Redis cannot be reached (%s); going on with this replica's", type(exc).__name__
            )

    # ---- writes: the mirror at once, Redis without waiting ----

    def kill(self, member: str, until: float) -> None:
        super().kill(member, until)
        self._send("latest", [DEAD], (member, repr(until), TTL_MS))

    def cool(self, member: str, family: str, until: float) -> None:
        super().cool(member, family, until)
        self._send("latest", [COOLED], (f"{member}|{family}", repr(until), TTL_MS))

    def trip(self, circuit: str, now: float) -> float:
        until = super().trip(circuit, now)
        self._send("trip", [CIRCUITS], (circuit, repr(now), CIRCUIT_BASE, CIRCUIT_MAX, TTL_MS))
        return until

    def reset(self, circuit: str) -> None:
        known = circuit in self._circuits
        super().reset(circuit)
        if known:  # a backend serving call after call does not write at every one
            self._send("delete", [CIRCUITS], (circuit,))

    def served(self, member: str, family: str, headers: Mapping[str, str], now: float) -> None:
        if limits := rate_limits(headers):
            self.report(member, family, limits, now)  # read at once: every replica is told

    def report(self, member: str, family: str, headers: Iterable[tuple[str, str]], now: float) -> None:
        super().report(member, family, headers, now)
        headroom = self._headroom.get((member, family))
        if headroom is None:
            return
        fields: list[Any] = [TTL_MS]
        for bucket, b in headroom.buckets.items():
            fields += [f"{member}|{family}|{bucket}", f"{b.limit!r} {b.remaining!r} {b.at:.6f} {b.window!r}"]
        self._send("report", [HEADROOM], tuple(fields))

    def reserve(self, member: str, family: str, cost: Cost, now: float) -> None:
        super().reserve(member, family, cost, now)
        headroom = self._headroom.get((member, family))
        if headroom is None:
            return
        args: list[Any] = [repr(now)]
        for bucket in headroom.buckets:
            args += [f"{member}|{family}|{bucket}", cost.of(bucket)]
        self._send("reserve", [HEADROOM], tuple(args))

    def _send(self, script: str, keys: list[str], args: tuple[Any, ...]) -> None:
        if time.monotonic() >= self._retry_at:
            self._pipeline.send(script, keys, args)

    async def written(self) -> None:
        """Return once every write made so far has reached Redis (or failed to)."""
        await self._pipeline.sent()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        await self._pipeline.close()
        await self.client.aclose()


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A HGETALL reply (a flat list, from a script) as a dict of text."""
    text = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    return dict(zip(text[0::2], text[1::2], strict=True))
