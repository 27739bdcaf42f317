"""When to try the upstream again: the anthropic SDK's backoff schedule, honouring the upstream's wish."""

from __future__ import annotations

import random


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (from 1).

    The upstream's retry-after wins; otherwise 0.5 s doubling up to 8 s, with 0-25 % jitter.
    """
    if retry_after is not None and retry_after > 0:
        return retry_after
    return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())
