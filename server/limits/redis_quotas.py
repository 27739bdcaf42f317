"""Caller quotas in Redis, shared by every replica that names the same server (``GATEWAY_REDIS_URL``).

One Lua script admits a call (every check, then every count, atomically), one releases it, one
renews the stream slots (leases) a replica holds; ``Pipeline`` sends them, many to a round trip.
What is counted and how is ``server.limits.quota``'s; this module is only imported when Redis is configured
(redis-py loads OpenTelemetry's SDK when it is installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from server.config import Settings
from server.errors import GatewayError, Reason, fail
from server.limits.policy import Limits
from server.limits.quota import STORE_RETRY, Lease, SpendWindows, refusal
from server.redis_pipeline import Pipeline

log = logging.getLogger("server.limits.quota")


# Both scripts keep one caller's counts in two keys with the caller as hash tag (one Redis Cluster
# slot): a sorted set of stream slots scored by lease expiry (ms), and a hash of the two minutes'
# counts: w (this minute's number), pr/cr (requests), pt/ct (tokens), previous/current. Time is
# Redis's own clock, the one clock every replica shares.
_ROLL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local w = math.floor(now / 60)
local c = redis.call('HMGET', KEYS[2], 'w', 'pr', 'cr', 'pt', 'ct')
local pr, cr, pt, ct = tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0, tonumber(c[5]) or 0
local was = tonumber(c[1]) or w
if was == w - 1 then pr, cr, pt, ct = cr, 0, ct, 0 elseif was ~= w then pr, cr, pt, ct = 0, 0, 0, 0 end
"""

# Spend (USD budgets) is counted in two more keys of the caller's slot, one per window, named by the
# replica (the UTC day and month of its clock, ``SpendWindows``): millionths of a dollar, expiring a day
# after their window ends.
#
# KEYS: slots, counts, day spend, month spend. ARGV: lease id, lease ms, max streams, requests/min,
# tokens/min (0 = none), token estimate, USD/day and USD/month budgets in millionths (0 = none), spend
# estimate, ms left in the day, ms left in the month. Returns {minute, [limit name, retry ms (-1: never)]...}:
# admitted if only the minute.
ADMIT = (
    _ROLL
    + """
local elapsed = now - w * 60
local function wait(prev, cur, limit, cost)
  if cost > limit then return -1 end
  if prev * (1 - elapsed / 60) + cur + cost <= limit then return nil end
  if cur + cost <= limit then
    return math.max(1, math.ceil(1000 * (60 * (1 - (limit - cur - cost) / prev) - elapsed)))
  end
  return math.ceil(1000 * ((60 - elapsed) + 60 * (1 - (limit - cost) / cur)))
end
local out = {w}
local streams, rpm, tpm, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now * 1000)
  if redis.call('ZCARD', KEYS[1]) >= streams then table.insert(out, 'concurrent_streams'); table.insert(out, 1000) end
end
if rpm > 0 then
  local ms = wait(pr, cr, rpm, 1)
  if ms then table.insert(out, 'requests_per_minute'); table.insert(out, ms) end
end
if tpm > 0 then
  local ms = wait(pt, ct, tpm, cost)
  if ms then table.insert(out, 'tokens_per_minute'); table.insert(out, ms) end
end
local budgets = {{'usd_per_day', KEYS[3], tonumber(ARGV[7]), tonumber(ARGV[10])},
                 {'usd_per_month', KEYS[4], tonumber(ARGV[8]), tonumber(ARGV[11])}}
local spend = tonumber(ARGV[9])
for _, b in ipairs(budgets) do
  if b[3] > 0 then
    local spent = tonumber(redis.call('GET', b[2])) or 0
    if spent >= b[3] or spent + spend > b[3] then
      table.insert(out, b[1]); table.insert(out, spend > b[3] and -1 or b[4])
    end
  end
end
if #out > 1 then return out end
if streams > 0 then
  redis.call('ZADD', KEYS[1], now * 1000 + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
end
if rpm > 0 or tpm > 0 then
  redis.call('HSET', KEYS[2], 'w', w, 'pr', pr, 'cr', cr + 1, 'pt', pt, 'ct', ct + cost)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if budgets[1][3] > 0 or budgets[2][3] > 0 then
  for _, b in ipairs(budgets) do
    redis.call('INCRBY', b[2], spend)
    redis.call('PEXPIRE', b[2], b[4] + 86400000)
  end
end
return out
"""
)

# KEYS: slots, counts, the day and month spend keys the call was counted in. ARGV: lease id, the minute it
# was counted in, tokens to add, millionths of a dollar to add (either may be negative; a count stays >= 0).
RELEASE = (
    _ROLL
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
local spend = tonumber(ARGV[4])
if spend ~= 0 then
  for i = 3, 4 do
    if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], spend) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
local delta, minute = tonumber(ARGV[3]), tonumber(ARGV[2])
if delta ~= 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  if minute == w then ct = math.max(0, ct + delta) elseif minute == w - 1 then pt = math.max(0, pt + delta) end
  redis.call('HSET', KEYS[2], 'w', w, 'pr', pr, 'cr', cr, 'pt', pt, 'ct', ct)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
return 1
"""
)

# KEYS: slots. ARGV: lease ms, lease ids. Pushes back the expiry of the slots that still exist.
RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""


def keys(caller: str, day: str = "", month: str = "") -> list[str]:
    """The Redis keys of ``caller``'s counts: its stream slots, its two minutes' counts and, given the
    windows, its spend this day and this month."""
    prefix = f"claude-gateway:{{{caller}}}"
    out = [f"{prefix}:streams", f"{prefix}:minutes"]
    if day:
        out += [f"{prefix}:usd:day:{day}", f"{prefix}:usd:month:{month}"]
    return out


class RedisQuotas:
    """Counts in Redis, shared by every replica that names the same server."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_store_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # the calendar of the spend windows (UTC days and months)
        # One quick retry on a fresh connection (a restarted Redis), then the failure is the answer.
        self.client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._pipeline = Pipeline(self.client, {"admit": ADMIT, "release": RELEASE, "renew": RENEW})
        self._pipeline.on_error = self._went_down
        self._fail_open = settings.redis_unreachable == "open"
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._replica = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._live: dict[str, set[str]] = {}  # caller -> this replica's stream slots in Redis
        self._renewer: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # monotonic time before which a failed Redis is not tried again
        self.up = True
        self.on_store_change = on_store_change  # the hook for a metric of the store's state

    async def acquire(self, caller: str, limits: Limits, estimate: int, spend: int = 0) -> Lease | None:
        if not limits:
            return None
        windows = SpendWindows.at(self.clock())
        lease = Lease(
            caller, limits, estimate, id=f"{self._replica}:{next(self._ids)}", spend=spend, day=windows.day,
            month=windows.month,
        )  # fmt: skip
        if time.monotonic() < self._retry_at:
            return self._without_store(lease)
        args = (
            lease.id,
            self._lease_ms,
            limits.concurrent_streams or 0,
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            estimate,
            limits.micro_usd_per_day or 0,
            limits.micro_usd_per_month or 0,
            spend,
            math.ceil(windows.day_left * 1000),
            math.ceil(windows.month_left * 1000),
        )
        try:
            reply = await self._pipeline.call("admit", keys(caller, windows.day, windows.month), args)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return self._without_store(lease)
        self._came_up()
        lease.window = int(reply[0])
        if len(reply) > 1:
            values = {
                "concurrent_streams": limits.concurrent_streams,
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "usd_per_day": limits.micro_usd_per_day,
                "usd_per_month": limits.micro_usd_per_month,
            }
            over = []
            for name, ms in zip(reply[1::2], reply[2::2], strict=True):
                limit_name = name.decode() if isinstance(name, bytes) else str(name)
                wait = math.inf if int(ms) < 0 else int(ms) / 1000
                over.append((limit_name, values[limit_name] or 0, wait))
            raise refusal(caller, over)
        if limits.concurrent_streams:
            self._live.setdefault(caller, set()).add(lease.id)
        return lease

    def _without_store(self, lease: Lease) -> Lease:
        if not self._fail_open:
            raise GatewayError(
                fail(
                    Reason.QUOTA_STORE_UNAVAILABLE, "the gateway cannot reach its quota store", retry_after=STORE_RETRY
                )
            )
        lease.counted = False
        return lease

    def release(self, lease: Lease, tokens: int, spent: int = 0) -> None:
        if not lease.counted:
            return
        live = self._live.get(lease.caller)
        if live is not None:
            live.discard(lease.id)
            if not live:
                del self._live[lease.caller]
        delta = tokens - lease.estimate if lease.limits.tokens_per_minute else 0
        spend = spent - lease.spend if lease.limits.spend else 0
        # Off the call's path: the reply does not wait for Redis. If Redis is down, the slot's lease runs out.
        names = keys(lease.caller, lease.day, lease.month)
        self._pipeline.send("release", names, (lease.id, lease.window, delta, spend))

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            for caller, ids in self._live.items():
                self._pipeline.send("renew", keys(caller)[:1], (self._lease_ms, *ids))

    def _went_down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + STORE_RETRY
        if self.up:
            self.up = False
            how = "admitting calls without shared quotas" if self._fail_open else "refusing calls with UNAVAILABLE"
            log.warning("quota store unreachable (%s), %s until it is back", type(exc).__name__, how)
            if self.on_store_change is not None:
                self.on_store_change(False)

    def _came_up(self) -> None:
        if not self.up:
            self.up = True
            log.warning("quota store reachable again: shared quotas apply")
            if self.on_store_change is not None:
                self.on_store_change(True)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._pipeline.close()
        await self.client.aclose()
