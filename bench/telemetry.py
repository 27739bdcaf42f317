"""``python -m bench.telemetry``: the CPU that usage, cost, the log line and metrics add, per event and per call.

Everything the gateway records about a call happens in two places: ``CallRecord.see`` once per
upstream read (usage, the first content delta) and ``Telemetry.finish`` plus the trailer once per
call (cost, the JSON log line, the metrics when on). This times both in this process on the
gateway's own objects, best of several repeats, beside what the gateway did per call before (one
plain-text log line), so the figures can be set beside the benchmark's CPU per relayed event and
per request (docs/performance.md). Tracing is not timed here: it is off
unless configured.

    python -m bench.telemetry            # about 5 seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from server.call.events import Event, parse
from server.redaction import LogRedaction, Redactor
from server.reporting import logs
from server.reporting.metrics import Metrics
from server.reporting.prices import load
from server.reporting.record import OK, CallRecord
from server.reporting.telemetry import Telemetry

SEE_PACED = "see() per paced delta (one event per read), us"
SEE_STREAM = "see() per event over whole streams, one read each, us"
PLAIN_LOG = "before: the plain log line per call, us"
FINISH_OFF = "finish() + trailer per call, metrics off, us"
FINISH_ON = "finish() + trailer per call, metrics on, us"
SECRET = "sk-ant-bench-telemetry-key"  # the key the redaction filter looks for, as the gateway's does
FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/sse/own_text_with_ping.sse"


def events_of(path: Path) -> list[Event]:
    """The parsed events of a recorded stream, as the reader hands them over."""
    out: list[Event] = []
    for frame in path.read_text().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in lines and "data" in lines:
            out.append((lines["event"], parse(lines["event"], lines["data"]), lines["data"]))
    return out


def best(run: Callable[[], None], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(calls: int, repeats: int) -> dict[str, float]:
    events = events_of(FIXTURE)
    delta = next(e for e in events if e[0] == "content_block_delta")
    prices = load()
    results = {}

    record = CallRecord("StreamMessage", "claude-sonnet-4-6")
    record.see([delta])  # the first content delta is behind us: the steady state of a stream
    one = [delta]
    n = calls * 20

    def paced_deltas() -> None:
        for _ in range(n):
            record.see(one)

    results[SEE_PACED] = best(paced_deltas, repeats) / n * 1e6

    def whole_streams() -> None:
        for _ in range(calls):
            CallRecord("StreamMessage", "claude-sonnet-4-6").see(events)

    results[SEE_STREAM] = best(whole_streams, repeats) / (calls * len(events)) * 1e6

    # The log line goes to a real file handler, as the gateway's goes to stderr: the gateway's text format,
    # its redaction filter and its logging switches (``python -m server`` sets them; restored after).
    log = logging.getLogger("server.call")
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logs.text_formatter())
    handler.addFilter(LogRedaction(Redactor((SECRET,))))
    saved = log.level, log.propagate
    switches = {name: getattr(logging, name) for name in logs.LEAN}
    logs.lean_records()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # to this handler alone
    try:

        def plain_lines() -> None:  # what the gateway logged per call before: its baseline
            for _ in range(calls):
                log.info("%s %s events=%d %.0fms request_id=%s", "StreamMessage", "OK", 9, 12.3, "req_0123456789")

        results[PLAIN_LOG] = best(plain_lines, repeats) / calls * 1e6
        for label, metrics in (
            (FINISH_OFF, None),
            (FINISH_ON, Metrics(100, prices.known, lambda: 0)),
        ):
            telemetry = Telemetry(prices, metrics)

            def finish_calls(telemetry: Telemetry = telemetry) -> None:
                for i in range(calls):
                    call = CallRecord("StreamMessage", "claude-sonnet-4-6", caller=f"svc-{i % 10}")
                    call.see(events)
                    call.events = len(events)
                    call.status = OK
                    telemetry.finish(call)
                    telemetry.trailer(call)

            per_call = best(finish_calls, repeats) / calls * 1e6
            results[label] = per_call
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = saved
        for name, value in switches.items():
            setattr(logging, name, value)
        handler.close()
    return results


def main() -> None:
    cli = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__.split("\n\n")[0])
    cli.add_argument("--calls", type=int, default=2000, help="calls per timed run (default 2000)")
    cli.add_argument("--repeats", type=int, default=5, help="timed runs; the fastest counts (default 5)")
    args = cli.parse_args()
    results = measure(args.calls, args.repeats)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:8.2f}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
