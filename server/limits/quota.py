"""Per-caller quotas: concurrent streams, requests and tokens per minute, USD per day and per month, in
memory or in Redis.

    Quotas.acquire(caller, limits, estimate, spend) -> Lease | None   before the call; GatewayError if refused
    Quotas.release(lease, tokens, spent)                              after it, with what it really used

A request counts one against ``requests_per_minute`` when admitted. Tokens are checked and reserved
on an estimate of the input (``estimate``) and, when the call ends however it ends, corrected to the
input + output tokens its events reported (``server.call.admission.charged`` of the call's ``Usage``).
Spend budgets (``usd_per_day``, ``usd_per_month``) are counted in millionths of a dollar on fixed
windows, the UTC day and the UTC calendar month (``SpendWindows``, from the store's clock): a call is
admitted while the window's spend is under the budget and its estimate (``spend``: the estimated input
at the input price of the model asked for) still fits, reserved with that estimate, and charged its
real cost (by the model that served) when it ends; a refusal's ``RetryInfo`` is the time to the
window's end. Minutes are sliding windows: the previous minute's count, weighted by how much of it still lies
within the last 60 seconds, plus this minute's; so ``RetryInfo`` can say when the caller will fit
again.

``MemoryQuotas`` counts in this process (one replica, a sidecar). ``RedisQuotas``
(``server.limits.redis_quotas``) counts in Redis, shared by every replica: one Lua script admits
(atomically: every check, then every count), one releases; a stream holds a slot that is a lease,
renewed by its replica while the stream lives, so a replica that dies frees its slots within
``GATEWAY_LEASE_SECONDS``. Keys expire when a caller goes quiet. When Redis cannot be reached,
``GATEWAY_REDIS_UNREACHABLE`` says whether calls are admitted without shared quotas (open) or
refused with UNAVAILABLE (closed); the log says when the store goes down and comes back, and
``on_store_change`` (the ``gateway_quota_store_up`` metric) hears it.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from server.errors import GatewayError, QuotaViolation, Reason, fail
from server.limits.policy import Limits

WINDOW = 60.0  # seconds: the "minute" of requests_per_minute and tokens_per_minute
STREAM_RETRY = 1.0  # seconds to suggest when every stream slot is taken: a slot frees when any stream ends
STORE_RETRY = 1.0  # seconds between attempts to reach a Redis that failed
DAY = 86400.0


@dataclass(frozen=True)
class SpendWindows:
    """The spend windows at one moment: the UTC day and month, by name, and the seconds left in each."""

    day: str  # 2026-12-06
    month: str  # 2026-12
    day_left: float
    month_left: float

    @classmethod
    def at(cls, now: float) -> SpendWindows:
        t = time.gmtime(now)
        next_month = calendar.timegm((t.tm_year + t.tm_mon // 12, t.tm_mon % 12 + 1, 1, 0, 0, 0))
        return cls(time.strftime("%Y-%m-%d", t), time.strftime("%Y-%m", t), DAY - now % DAY, next_month - now)


def spend_over(
    limits: Limits, spent_day: int, spent_month: int, estimate: int, windows: SpendWindows
) -> list[tuple[str, int, float]]:
    """The spend budgets a call of ``estimate`` (millionths of a dollar) does not fit: (budget, its value,
    seconds to wait: the window's end, or inf when the estimate alone is over the budget). The Lua
    script in ``server.limits.redis_quotas`` decides the same."""
    over = []
    for name, limit, spent, left in (
        ("usd_per_day", limits.micro_usd_per_day, spent_day, windows.day_left),
        ("usd_per_month", limits.micro_usd_per_month, spent_month, windows.month_left),
    ):
        if limit is not None and (spent >= limit or spent + estimate > limit):
            over.append((name, limit, math.inf if estimate > limit else left))
    return over


@dataclass(eq=False)
class Lease:
    """One admitted call's claim on its caller's quotas, given back by ``release``."""

    caller: str
    limits: Limits
    estimate: int  # tokens reserved at admission
    window: int = 0  # the minute the call was counted in
    id: str = ""  # the stream slot's name in Redis
    counted: bool = True  # False when admitted without the store (Redis unreachable, fail open)
    spend: int = 0  # millionths of a dollar reserved at admission
    day: str = ""  # the spend windows the call was counted in
    month: str = ""


class Quotas(Protocol):
    """Where the counts live."""

    async def acquire(self, caller: str, limits: Limits, estimate: int, spend: int = 0) -> Lease | None:
        """Count a call against ``limits`` (None when there are none), with ``estimate`` tokens and ``spend``
        millionths of a dollar reserved; GatewayError when over one."""
        ...

    def release(self, lease: Lease, tokens: int, spent: int = 0) -> None:
        """The call ended having used ``tokens`` and cost ``spent`` millionths of a dollar: free its stream
        slot and charge both."""
        ...

    def start(self) -> None:
        """Start background work (lease renewal)."""
        ...

    async def close(self) -> None:
        """Finish pending work and let go of connections."""
        ...


def estimate_tokens(request_bytes: int) -> int:
    """A rough count of a request's input tokens from its size: about four bytes a token."""
    return max(1, request_bytes // 4)


def wait_for(prev: float, cur: float, elapsed: float, limit: int, cost: int) -> float | None:
    """Seconds until ``cost`` more fits under ``limit`` in a sliding minute, if nothing else is counted:
    None if it fits now, ``inf`` if it never will. ``prev``/``cur`` are the previous and current
    minute's counts, ``elapsed`` the seconds since the current minute began (the Lua scripts below
    compute the same)."""
    if cost > limit:
        return math.inf
    if prev * (1 - elapsed / WINDOW) + cur + cost <= limit:
        return None
    if cur + cost <= limit:  # the previous minute's share must shrink
        return max(0.001, WINDOW * (1 - (limit - cur - cost) / prev) - elapsed)
    # The next minute, when this one becomes the previous and shrinks in turn.
    return (WINDOW - elapsed) + WINDOW * (1 - (limit - cost) / cur)


def refusal(caller: str, over: list[tuple[str, int, float]]) -> GatewayError:
    """QUOTA_EXCEEDED naming each limit in ``over`` = (limit name, its value, seconds to wait)."""
    described = {
        "concurrent_streams": "streams in flight",
        "requests_per_minute": "requests in the last minute",
        "tokens_per_minute": "input + output tokens in the last minute (this request's input estimated)",
        "usd_per_day": "spent this UTC day (this request's input estimated; quota_value in millionths of a dollar)",
        "usd_per_month": "spent this UTC month (this request's input estimated; quota_value in millionths of a dollar)",
    }

    def amount(name: str, limit: int) -> str:
        return f"${limit / 1e6:g}" if name.startswith("usd_") else str(limit)

    violations = tuple(
        QuotaViolation(caller, name, limit, f"{name}: at most {amount(name, limit)} {described[name]}")
        for name, limit, _ in over
    )
    waits = [w for _, _, w in over]
    retry = None if any(math.isinf(w) for w in waits) else max(waits)
    message = "over the caller's limits: " + ", ".join(f"{name} ({amount(name, limit)})" for name, limit, _ in over)
    if retry is not None:
        message += f"; try again in {retry:.1f}s"
    else:
        message += "; this request alone is larger than the limit"
    return GatewayError(
        fail(
            Reason.QUOTA_EXCEEDED,
            message,
            retry_after=None if retry is None else round(retry, 3),
            quota_violations=violations,
        )
    )


@dataclass
class _Counts:
    window: int = 0
    requests: tuple[int, int] = (0, 0)  # (previous minute, this minute)
    tokens: tuple[int, int] = (0, 0)
    streams: int = 0
    spend: dict[str, int] = field(default_factory=dict)  # millionths of a dollar by window ("day:2026-12-06")

    def roll(self, window: int) -> None:
        if window == self.window + 1:
            self.requests, self.tokens = (self.requests[1], 0), (self.tokens[1], 0)
        elif window != self.window:
            self.requests, self.tokens = (0, 0), (0, 0)
        self.window = window


@dataclass
class MemoryQuotas:
    """Counts in this process: right for one replica (a sidecar), or as a stand-in for Redis."""

    clock: Callable[[], float] = time.time
    _callers: dict[str, _Counts] = field(default_factory=dict)

    async def acquire(self, caller: str, limits: Limits, estimate: int, spend: int = 0) -> Lease | None:
        if not limits:
            return None
        now = self.clock()
        window = int(now // WINDOW)
        elapsed = now - window * WINDOW
        counts = self._callers.setdefault(caller, _Counts(window))
        counts.roll(window)
        windows = SpendWindows.at(now)
        day, month = f"day:{windows.day}", f"month:{windows.month}"
        if limits.spend:  # only this day's and month's counts are kept
            counts.spend = {day: counts.spend.get(day, 0), month: counts.spend.get(month, 0)}
        over = []
        if limits.concurrent_streams is not None and counts.streams >= limits.concurrent_streams:
            over.append(("concurrent_streams", limits.concurrent_streams, STREAM_RETRY))
        for name, limit, (prev, cur), cost in (
            ("requests_per_minute", limits.requests_per_minute, counts.requests, 1),
            ("tokens_per_minute", limits.tokens_per_minute, counts.tokens, estimate),
        ):
            if limit is not None and (wait := wait_for(prev, cur, elapsed, limit, cost)) is not None:
                over.append((name, limit, wait))
        over += spend_over(limits, counts.spend.get(day, 0), counts.spend.get(month, 0), spend, windows)
        if over:
            raise refusal(caller, over)
        counts.streams += 1
        counts.requests = (counts.requests[0], counts.requests[1] + 1)
        counts.tokens = (counts.tokens[0], counts.tokens[1] + estimate)
        if limits.spend:
            counts.spend[day] += spend
            counts.spend[month] += spend
        return Lease(caller, limits, estimate, window, spend=spend, day=day, month=month)

    def release(self, lease: Lease, tokens: int, spent: int = 0) -> None:
        counts = self._callers[lease.caller]
        if lease.limits.spend:  # charged to the windows the call was counted in, if they are still kept
            for key in (lease.day, lease.month):
                if key in counts.spend:
                    counts.spend[key] = max(0, counts.spend[key] + spent - lease.spend)
        counts.streams -= 1
        counts.roll(int(self.clock() // WINDOW))
        delta = tokens - lease.estimate
        prev, cur = counts.tokens
        if lease.window == counts.window:
            counts.tokens = (prev, max(0, cur + delta))
        elif lease.window == counts.window - 1:
            counts.tokens = (max(0, prev + delta), cur)

    def spent(self, caller: str) -> dict[str, int]:
        """Millionths of a dollar counted for ``caller`` by spend window (``day:2026-12-06``, ``month:2026-12``)."""
        counts = self._callers.get(caller)
        return dict(counts.spend) if counts else {}

    def usage(self, caller: str) -> tuple[int, int, int]:
        """(streams in flight, requests, tokens) counted for ``caller`` in the last two minutes."""
        counts = self._callers.get(caller, _Counts())
        return counts.streams, sum(counts.requests), sum(counts.tokens)

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
