"""Percentiles and summaries of samples (nearest-rank, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``ordered``, which must be sorted."""
    if not ordered:
        return math.nan
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """Count, median, 99th percentile and maximum of some samples, in their unit."""

    n: int
    p50: float
    p99: float
    max: float

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (e.g. µs -> ms with 1e-3)."""
        return Summary(self.n, self.p50 * factor, self.p99 * factor, self.max * factor)

    def as_json(self) -> dict[str, float | None]:
        """The fields, with NaN (nothing measured) as None so that the JSON stays standard."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def summarize(values: Sequence[float]) -> Summary:
    ordered = sorted(values)
    if not ordered:
        return Summary(0, math.nan, math.nan, math.nan)
    return Summary(len(ordered), percentile(ordered, 50), percentile(ordered, 99), ordered[-1])
