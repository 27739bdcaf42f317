"""A key's room under its rate limits, from the ``anthropic-ratelimit-*`` headers of its last response.

The Messages API reports four token buckets per key and model family on every response (also on a
429): ``requests``, ``tokens``, ``input-tokens`` and ``output-tokens``, each as ``-limit``,
``-remaining`` and ``-reset`` (RFC 3339: when the bucket is full again). A bucket refills at its
limit per window (a minute), so its headroom at time t, reported ``remaining`` at t0, is

    headroom(t) = min(limit, remaining + limit x (t - t0) / window)

The window is a minute unless the reset says otherwise (taken only when the reset is at least ten
seconds away, so a reset rounded to the second does not skew it). A call costs one request, its
estimated input tokens and its ``max_tokens`` of output (as the API counts it at the start); it fits
a key when every reported bucket has room for it. Picking a key reserves its cost until the next
response reports anew.

A key's first report is read at once; each later response's headers are kept as they came and read
when the headroom is next needed (a choice between keys, a reservation, the metrics), so a key that is
the only one for its model costs no parsing per call. A report not read yet when the next one comes is
superseded by it: the headroom is always what the latest response said.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

KINDS = ("requests", "tokens", "input-tokens", "output-tokens")
PREFIX = "anthropic-ratelimit-"
WINDOW = 60.0  # seconds for an empty bucket to fill, unless a reset says otherwise
_MIN_RESET_SPAN = 10.0


@dataclass(frozen=True, slots=True)
class Cost:
    """What one call takes of a key's buckets."""

    input_tokens: int
    output_tokens: int  # max_tokens

    def of(self, kind: str) -> int:
        if kind == "requests":
            return 1
        if kind == "input-tokens":
            return self.input_tokens
        if kind == "output-tokens":
            return self.output_tokens
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Bucket:
    limit: float
    remaining: float
    at: float  # wall-clock seconds of the report
    window: float = WINDOW

    def now(self, t: float) -> float:
        """The headroom at wall-clock time ``t``."""
        return min(self.limit, self.remaining + self.limit * max(0.0, t - self.at) / self.window)


# Every rate-limit header a bucket is read from -> (its bucket's kind, the field it gives).
FIELDS: dict[str, tuple[str, str]] = {
    f"{PREFIX}{kind}-{field}": (kind, field) for kind in KINDS for field in ("limit", "remaining", "reset")
}


def rate_limits(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """A response's rate-limit headers that name a bucket's field (``FIELDS``), names in lower case, in order."""
    return [(name, value) for key, value in headers.items() if (name := key.lower()) in FIELDS]


class Headroom:
    """One key's buckets for one model family, as last reported (and reserved since)."""

    __slots__ = ("_buckets", "_pending")

    def __init__(self, buckets: dict[str, Bucket] | None = None) -> None:
        self._buckets: dict[str, Bucket] = buckets or {}
        self._pending: tuple[Mapping[str, str], float] | None = None  # a response's headers, not read yet

    @property
    def buckets(self) -> dict[str, Bucket]:
        """The buckets by kind, the latest report read."""
        if self._pending is not None:
            headers, now = self._pending
            self.report(rate_limits(headers), now)
        return self._buckets

    def defer(self, headers: Mapping[str, str], now: float) -> None:
        """Keep a response's headers, to be read (``rate_limits``) when the buckets are next needed."""
        self._pending = (headers, now)

    def report(self, headers: Iterable[tuple[str, str]], now: float) -> bool:
        """Take a response's rate-limit headers (lower-case names) now; False when they name no whole bucket."""
        self._pending = None  # superseded
        found: dict[str, dict[str, str]] = {}
        for name, value in headers:
            slot = FIELDS.get(name)
            if slot is not None:
                found.setdefault(slot[0], {})[slot[1]] = value
        taken = False
        for kind, fields in found.items():
            bucket = _bucket(fields, now, self._buckets.get(kind))
            if bucket is not None:
                self._buckets[kind] = bucket
                taken = True
        return taken

    def fits(self, cost: Cost, now: float) -> bool:
        """Whether every reported bucket has room for ``cost`` now (True when none is known)."""
        return all(bucket.now(now) >= cost.of(kind) for kind, bucket in self.buckets.items())

    def score(self, cost: Cost, now: float) -> float:
        """The room left after ``cost`` in the tightest bucket, as a fraction of its limit (1.0 when unknown)."""
        score = 1.0
        for kind, bucket in self.buckets.items():
            if bucket.limit > 0:
                score = min(score, (bucket.now(now) - cost.of(kind)) / bucket.limit)
        return score

    def reserve(self, cost: Cost, now: float) -> None:
        """Take ``cost`` from every bucket now, until the next report."""
        for kind, bucket in self.buckets.items():
            bucket.remaining = bucket.now(now) - cost.of(kind)
            bucket.at = now

    def values(self, now: float) -> dict[str, float]:
        """Each bucket's headroom now, by kind."""
        return {kind: bucket.now(now) for kind, bucket in self.buckets.items()}


def _bucket(fields: dict[str, str], now: float, previous: Bucket | None) -> Bucket | None:
    try:
        limit, remaining = float(fields["limit"]), float(fields["remaining"])
    except (KeyError, ValueError):
        return None
    if not (0 < limit < float("inf")) or not (0 <= remaining < float("inf")):
        return None
    remaining = min(remaining, limit)
    window = previous.window if previous is not None else WINDOW
    reset = _time(fields.get("reset", ""))
    if reset is not None and limit - remaining > 0 and reset - now >= _MIN_RESET_SPAN:
        window = min(3600.0, (reset - now) * limit / (limit - remaining))
    return Bucket(limit, remaining, now, window)


@lru_cache(maxsize=64)
def _time(text: str) -> float | None:
    """An RFC 3339 reset as wall-clock seconds. Cached: the responses of a busy key name the same few resets
    (to the second), read on every call; the cache holds at most 64 header values."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
