"""The rate limits the Messages API reports on every response, kept per key as token buckets.

Each key has four buckets, as the API has: `requests`, `input-tokens`, `output-tokens` and
`tokens` (input and output together). A bucket holds at most its limit and refills continuously,
from empty to full in `Limits.window` seconds. A request takes 1 request, its input tokens (the
simulator's count of its words) and `max_tokens` output tokens; when it ends, the output tokens it
did not use go back, as the API corrects its estimate at the end.

Every answer to the Messages API path carries, for each bucket KIND,

    anthropic-ratelimit-KIND-limit       the limit
    anthropic-ratelimit-KIND-remaining   what the bucket holds now (token buckets: to the nearest thousand)
    anthropic-ratelimit-KIND-reset       RFC 3339 time at which it will be full again

With `Limits.enforce`, a request that does not fit is answered 429 `rate_limit_error` with
`retry-after` (whole seconds until it would fit) instead, and takes nothing. Without it (the
default), buckets only report: they may run empty, and the headers say 0. A `ratelimit KIND N`
directive (`directives`) sets what the answer reports, and what the bucket holds after it, to N.
"""

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

KINDS: Final = ("requests", "tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True)
class Limits:
    """Each key's bucket sizes, the time an empty bucket takes to fill, and whether they are enforced."""

    requests: int = 4000
    input_tokens: int = 2_000_000
    output_tokens: int = 400_000
    window: float = 60.0
    enforce: bool = False

    def limit(self, kind: str) -> int:
        if kind == "tokens":
            return self.input_tokens + self.output_tokens
        return {"requests": self.requests, "input-tokens": self.input_tokens, "output-tokens": self.output_tokens}[kind]


class Buckets:
    """One key's buckets."""

    def __init__(self, limits: Limits, now: float) -> None:
        self._limits = limits
        self._limit = {kind: limits.limit(kind) for kind in KINDS}
        self._level = {kind: float(limit) for kind, limit in self._limit.items()}
        self._at = now

    def admit(self, now: float, input_tokens: int, max_tokens: int) -> float:
        """Take this request's cost and return 0, or, when enforced and it does not fit, take nothing
        and return the seconds until it would."""
        self._refill(now)
        cost = self._cost(input_tokens, max_tokens)
        if self._limits.enforce:
            wait = max((cost[kind] - self._level[kind]) / self._rate(kind) for kind in KINDS)
            if wait > 0:
                return wait
        for kind in KINDS:
            self._level[kind] = max(0.0, self._level[kind] - cost[kind])
        return 0.0

    def give_back(self, output_tokens: int) -> None:
        """Return output tokens taken but not used."""
        for kind in ("output-tokens", "tokens"):
            self._level[kind] = min(float(self._limit[kind]), self._level[kind] + output_tokens)

    def set(self, kind: str, remaining: int) -> None:
        """Make bucket `kind` (or every bucket, for `all`) hold `remaining`."""
        for name in KINDS if kind == "all" else (kind,):
            self._level[name] = float(min(max(remaining, 0), self._limit[name]))

    def headers(self, now: float) -> dict[str, str]:
        self._refill(now)
        out: dict[str, str] = {}
        for kind in KINDS:
            level, limit = self._level[kind], self._limit[kind]
            remaining = math.floor(level) if kind == "requests" else int(round(level, -3))
            full_at = now + (limit - level) / self._rate(kind)
            out[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(min(remaining, limit))
            out[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(full_at)
        return out

    def _cost(self, input_tokens: int, max_tokens: int) -> dict[str, float]:
        # A request larger than a whole bucket is charged the whole bucket, so it waits for a full one.
        raw = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
        raw["tokens"] = input_tokens + max_tokens
        return {kind: float(min(raw[kind], self._limit[kind])) for kind in KINDS}

    def _rate(self, kind: str) -> float:
        return self._limit[kind] / self._limits.window

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        for kind in KINDS:
            self._level[kind] = min(float(self._limit[kind]), self._level[kind] + elapsed * self._rate(kind))


class RateLimiter:
    """The buckets of every key seen."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: dict[str, Buckets] = {}

    def of(self, key: str) -> Buckets:
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = self._buckets[key] = Buckets(self.limits, time.time())
        return buckets


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
