"""How big each measurement is: the default run (a few minutes on 2 cores) and ``--quick`` (about one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario. Streams are paced at ``tps`` text deltas per second unless noted."""

    tps: float = 50.0
    # 1. capacity: concurrent streams, each `capacity_tokens` deltas long, started over `ramp` s
    capacity_sizes: tuple[int, ...] = (100, 200, 300, 500)
    capacity_tokens: int = 500
    ramp: float = 2.0
    streams_per_client: int = 250  # one load-client process per this many streams
    streams_per_channel: int = 100  # one gRPC connection per this many streams
    # 2. CPU per event: unpaced ("burst") streams; the paced comparison reuses capacity_sizes[0]
    burst_streams: int = 50
    burst_tokens: int = 1000
    # 3. time to first event: sequential pairs; fixed cost: many one-token calls
    ttfe_pairs: int = 300
    tiny_calls: int = 2000
    tiny_concurrency: int = 8
    # 4. memory: streams held open at 1 delta/s
    memory_streams: int = 1000
    # 5. overload: admitted streams at the gateway's limit, excess calls fired while they run
    overload_limit: int = 50
    overload_seconds: float = 12.0
    overload_rejects: int = 500
    # 6. cancel-to-close
    cancels: int = 200
    cancel_concurrency: int = 4
    # 7. workers: this many streams through 1 and then 2 workers, every process unpinned
    workers_streams: int = 200
    # 8. observability cost: calls per timed run (in the bench process, on the gateway's own objects)
    telemetry_calls: int = 2000
    # 9. resumable streams on Redis: rounds of capacity_sizes[0] paced streams, plain then resumable
    resumable_rounds: int = 5
    # 11. backends file: failover rounds (one-token calls), then rounds of each CPU comparison
    backends_failover_rounds: int = 100  # each waits out the primary's 1 s back-off
    backends_rounds: int = 9  # a burst's CPU per event moves from round to round (docs/performance.md, 11a-11e)
    # 13. the server against earlier commits: rounds of row 3c's calls and of row 2b's paced streams
    baseline_rounds: int = 7
    # 12. the public stream method (``sweep``): chunks every interval, the concurrency steps, and at least this
    # many streams per step (each slot reads two or more, back to back)
    sweep_levels: tuple[int, ...] = (1, 8, 32, 128, 512, 1024)
    sweep_chunks: int = 64
    sweep_interval: float = 0.020
    sweep_min_streams: int = 8

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT = Plan()

QUICK = Plan(
    capacity_sizes=(50, 100, 200),
    capacity_tokens=150,
    ramp=1.0,
    burst_streams=20,
    burst_tokens=500,
    ttfe_pairs=100,
    tiny_calls=500,
    memory_streams=300,
    overload_limit=20,
    overload_seconds=6.0,
    overload_rejects=100,
    cancels=50,
    workers_streams=150,
    resumable_rounds=2,
    sweep_levels=(1, 8, 32, 128),
    sweep_min_streams=4,
    backends_failover_rounds=50,
    backends_rounds=2,
    baseline_rounds=2,
    telemetry_calls=200,
)
