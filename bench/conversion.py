"""``python -m bench.conversion``: the gateway's own work per event, step by step, in microseconds.

Each step the gateway runs on one upstream event, timed alone on the gateway's own objects (best of
several repeats, CPU time of this thread): framing a paced text delta that came in a read of its own,
parsing its JSON and checking it, the stream grammar, the proto fill and the gRPC message; and, per
call, the fill of the reply's message_start and message_delta by their direct fills beside the generic
codec (``claude_gateway.codec.from_json``) that built them before. ``json.loads`` and json's C scanner
alone are timed beside ``events.parse`` (json.loads and the event's checks) to show what the parse is
made of. The events are those of ``tests/fixtures/sse/own_text_with_ping.sse``.

    python -m bench.conversion            # a few seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb

from server.call.events import SseFramer, fill_event, parse, to_response
from server.call.grammar import Grammar

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/sse/own_text_with_ping.sse"

FRAME = "framing: SseFramer.feed, one event in its read"
JSON_LOADS = "json.loads of the event's data (for comparison)"
SCANNER = "json's C scanner alone on the same data"
PARSE = "events.parse: the JSON and its checks"
GRAMMAR = "Grammar.check"
FILL = "fill_event into a new MessageStreamEvent"
RESPONSE = "to_response: the gRPC message of one event"
START = "message_start: fill_event (direct fill), per call"
START_CODEC = "message_start: codec.from_json (before), per call"
DELTA = "message_delta: fill_event (direct fill), per call"
DELTA_CODEC = "message_delta: codec.from_json (before), per call"


def frames_of(path: Path) -> dict[str, str]:
    """The first data text of each event name of a recorded stream."""
    out: dict[str, str] = {}
    for name, data in SseFramer().feed(path.read_bytes()):
        out.setdefault(name, data)
    return out


def best(run: Callable[[], object], number: int, repeats: int) -> float:
    """Microseconds of one call of ``run``, the best of ``repeats`` runs of ``number`` calls (thread CPU time)."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(number):
            run()
        times.append(time.thread_time() - start)
    return min(times) / number * 1e6


def measure(number: int, repeats: int) -> dict[str, float]:
    data = frames_of(FIXTURE)
    delta = data["content_block_delta"]
    raw = b"event: content_block_delta\ndata: " + delta.encode() + b"\n\n"
    obj = parse("content_block_delta", delta)
    grammar = Grammar()
    for name in ("message_start", "content_block_start"):
        grammar.check(name, parse(name, data[name]))
    framer = SseFramer()
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    start, end = data["message_start"], data["message_delta"]
    start_obj, end_obj = parse("message_start", start), parse("message_delta", end)
    steps: dict[str, Callable[[], object]] = {
        FRAME: lambda: framer.feed(raw),
        JSON_LOADS: lambda: json.loads(delta),
        SCANNER: lambda: scan(delta, 0),
        PARSE: lambda: parse("content_block_delta", delta),
        GRAMMAR: lambda: grammar.check("content_block_delta", obj),
        FILL: lambda: fill_event(pb.MessageStreamEvent(), obj, delta),
        RESPONSE: lambda: to_response([("content_block_delta", obj, delta)]),
        START: lambda: fill_event(pb.MessageStreamEvent(), start_obj, start),
        START_CODEC: lambda: codec.from_json(start_obj, pb.MessageStreamEvent(), start),
        DELTA: lambda: fill_event(pb.MessageStreamEvent(), end_obj, end),
        DELTA_CODEC: lambda: codec.from_json(end_obj, pb.MessageStreamEvent(), end),
    }
    return {label: best(run, number, repeats) for label, run in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.conversion", description=__doc__)
    parser.add_argument("--number", type=int, default=20000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for label, us in measure(args.number, args.repeats).items():
        print(f"{us:8.2f} us  {label}")


if __name__ == "__main__":
    main()
