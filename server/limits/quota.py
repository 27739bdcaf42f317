"""Per-caller quotas: concurrent streams, requests and tokens per minute, in memory or in Redis.

    Quotas.acquire(caller, limits, estimate) -> Lease | None   before the call; GatewayError if refused
    Quotas.release(lease, tokens)                              after it, with the tokens it really used

A request counts one against ``requests_per_minute`` when admitted. Tokens are checked and reserved
on an estimate of the input (``estimate``) and, when the call ends however it ends, corrected to the
input + output tokens its events reported (``server.call.admission.charged`` of the call's ``Usage``).
Minutes are sliding windows: the previous minute's count, weighted by how much of it still lies
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


@dataclass(eq=False)
class Lease:
    """One admitted call's claim on its caller's quotas, given back by ``release``."""

    caller: str
    limits: Limits
    estimate: int  # tokens reserved at admission
    window: int = 0  # the minute the call was counted in
    id: str = ""  # the stream slot's name in Redis
    counted: bool = True  # False when admitted without the store (Redis unreachable, fail open)


class Quotas(Protocol):
    """Where the counts live."""

    async def acquire(self, caller: str, limits: Limits, estimate: int) -> Lease | None:
        """Count a call against ``limits`` (None when there are none); GatewayError when over one."""
        ...

    def release(self, lease: Lease, tokens: int) -> None:
        """The call ended having used ``tokens``: free its stream slot and charge the tokens."""
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
    }
    violations = tuple(
        QuotaViolation(caller, name, limit, f"{name}: at most {limit} {described[name]}") for name, limit, _ in over
    )
    waits = [w for _, _, w in over]
    retry = None if any(math.isinf(w) for w in waits) else max(waits)
    message = "over the caller's limits: " + ", ".join(f"{name} ({limit})" for name, limit, _ in over)
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

    async def acquire(self, caller: str, limits: Limits, estimate: int) -> Lease | None:
        if not limits:
            return None
        now = self.clock()
        window = int(now // WINDOW)
        elapsed = now - window * WINDOW
        counts = self._callers.setdefault(caller, _Counts(window))
        counts.roll(window)
        over = []
        if limits.concurrent_streams is not None and counts.streams >= limits.concurrent_streams:
            over.append(("concurrent_streams", limits.concurrent_streams, STREAM_RETRY))
        for name, limit, (prev, cur), cost in (
            ("requests_per_minute", limits.requests_per_minute, counts.requests, 1),
            ("tokens_per_minute", limits.tokens_per_minute, counts.tokens, estimate),
        ):
            if limit is not None and (wait := wait_for(prev, cur, elapsed, limit, cost)) is not None:
                over.append((name, limit, wait))
        if over:
            raise refusal(caller, over)
        counts.streams += 1
        counts.requests = (counts.requests[0], counts.requests[1] + 1)
        counts.tokens = (counts.tokens[0], counts.tokens[1] + estimate)
        return Lease(caller, limits, estimate, window)

    def release(self, lease: Lease, tokens: int) -> None:
        counts = self._callers[lease.caller]
        counts.streams -= 1
        counts.roll(int(self.clock() // WINDOW))
        delta = tokens - lease.estimate
        prev, cur = counts.tokens
        if lease.window == counts.window:
            counts.tokens = (prev, max(0, cur + delta))
        elif lease.window == counts.window - 1:
            counts.tokens = (max(0, prev + delta), cur)

    def usage(self, caller: str) -> tuple[int, int, int]:
        """(streams in flight, requests, tokens) counted for ``caller`` in the last two minutes."""
        counts = self._callers.get(caller, _Counts())
        return counts.streams, sum(counts.requests), sum(counts.tokens)

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
