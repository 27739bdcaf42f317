"""``python -m bench.prices``: what pricing calls from genai-prices costs, at start-up and per call.

Every figure is CPU time, which holds on a machine other processes share, best of several repeats.
The start-up ones run in fresh processes (the import of ``genai_prices`` after the gateway's own
imports, which already load pydantic and httpx2, and the build of its data); the per-call ones in
this process: genai-prices' own ``calc_price`` (what a
call would cost priced that way) beside the gateway's ``Catalog.cost`` (a model matched once, prices
resolved once a day, ``calc_unit_price`` per kind of token), on the usage of a call with cache reads
and writes.

    python -m bench.prices            # about 10 seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

from server.reporting.prices import Catalog
from server.reporting.usage import Usage

IMPORT = "import genai_prices after the gateway's imports, ms of CPU"
BUILD = "build its price data (once, at start-up), ms of CPU"
CALC_PRICE = "genai_prices.calc_price per call, us of CPU"
CATALOG = "Catalog.cost per call (the gateway's), us of CPU"
MODEL = "claude-sonnet-4-5-20250929"
VALUES = {
    "input_tokens": 1200,
    "cache_read_input_tokens": 4000,
    "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
    "cache_creation_input_tokens": 500,
    "output_tokens": 350,
}

_START_UP = """
import time
import server.app
t0 = time.process_time()
import genai_prices
t1 = time.process_time()
from genai_prices import data_snapshot
data_snapshot.get_snapshot()
t2 = time.process_time()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


def best(run: Callable[[], object], calls: int, repeats: int) -> float:
    """Microseconds of CPU per call, of the fastest of ``repeats`` rounds of ``calls`` calls (CPU time: the
    figure holds on a machine that other processes share)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            run()
        times.append(time.process_time() - start)
    return min(times) / calls * 1e6


def measure(calls: int, repeats: int) -> dict[str, float]:
    import genai_prices

    starts = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _START_UP], capture_output=True, text=True, check=True)
        starts.append(tuple(float(x) for x in done.stdout.split()))
    usage = Usage()
    usage.merge(VALUES)
    catalog = Catalog()
    writes = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    theirs = genai_prices.Usage(
        input_tokens=usage.input_tokens + usage.cache_read_tokens + writes,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=writes,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
    )
    ours = catalog.cost(MODEL, usage)
    reference = float(genai_prices.calc_price(theirs, MODEL, provider_id="anthropic").total_price)
    assert ours == reference, (ours, reference)
    return {
        IMPORT: min(s[0] for s in starts),
        BUILD: min(s[1] for s in starts),
        CALC_PRICE: best(lambda: genai_prices.calc_price(theirs, MODEL, provider_id="anthropic"), calls, repeats),
        CATALOG: best(lambda: catalog.cost(MODEL, usage), calls, repeats),
    }


def main() -> None:
    cli = argparse.ArgumentParser(prog="python -m bench.prices", description=__doc__.split("\n\n")[0])
    cli.add_argument("--calls", type=int, default=2000, help="calls per round")
    cli.add_argument("--repeats", type=int, default=5, help="rounds (and start-up processes); the best counts")
    args = cli.parse_args()
    print(json.dumps({k: round(v, 2) for k, v in measure(args.calls, args.repeats).items()}, indent=1))


if __name__ == "__main__":
    main()
