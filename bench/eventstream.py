"""``python -m bench.eventstream``: CPU per event of reading Bedrock's event-stream against reading SSE.

One reply of the simulator (``--tokens`` text deltas) is written both ways, as the simulator writes
it: SSE (the Messages API, Vertex) and AWS event-stream (Bedrock, every event base64 in a padded
chunk). Each is then read back, one network read per event (a paced stream) and all in one read (a
burst), by

- ``sse``: the gateway's SSE framer (``server.call.events.SseFramer``), then ``json.loads`` of each event;
- ``eventstream``: the gateway's Bedrock decoder (``server.upstream.eventstream.BedrockDecoder``: each chunk
  read to its event's type and JSON text in the decoder's walk), then ``json.loads`` of each event, as
  the SSE framer hands text to ``json.loads``;
- ``messages``: the generic decoder (``EventStreamDecoder``: message objects), then ``bedrock_event`` of
  each, the event's text decoded and ``json.loads``: what the gateway did before reading chunks inline;
- ``botocore``: botocore's ``EventStreamBuffer`` (what the SDK's Bedrock client reads with), then
  the payload's JSON and base64 and the event's JSON, as the gateway would use it;
- ``sdk``: the SDK's own Bedrock decoder (``AWSEventStreamDecoder``: ``EventStreamBuffer`` and
  botocore's response parser), then ``json.loads`` of each event.

It prints microseconds of process CPU per event, the best of ``--runs`` runs of ``--repeat`` reads,
and the ratio to ``sse``. Then the decoder fed one byte at a time, for messages of growing size: CPU
per byte stays flat when the work is linear in the bytes. Nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable, Iterator

from server.call.events import SseFramer
from server.upstream.eventstream import (
    MAX_MESSAGE_BYTES,
    BedrockDecoder,
    BedrockStreamError,
    EventStreamDecoder,
    bedrock_event,
)
from simulator import eventstream as written
from simulator import model, sse
from simulator.wire import EventStreamWire


def reply(tokens: int) -> list[model.Event]:
    body = {"model": "m", "max_tokens": tokens + 10, "messages": [{"role": "user", "content": "how fast"}]}
    return model.reply(body, prompt="how fast", length=tokens, serial=1)


def read_sse(chunks: list[bytes]) -> int:
    framer = SseFramer()
    n = 0
    for chunk in chunks:
        for _, data in framer.feed(chunk):
            json.loads(data)
            n += 1
    return n


def read_eventstream(chunks: list[bytes]) -> int:
    decoder = BedrockDecoder(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, _no_exception)
    n = 0
    for chunk in chunks:
        for _, text in decoder.feed(chunk):
            json.loads(text)
            n += 1
    decoder.end()
    return n


def _no_exception(exc: BedrockStreamError) -> tuple[str, str]:
    raise AssertionError(f"the reply holds an exception: {exc}")


def read_messages(chunks: list[bytes]) -> int:
    decoder = EventStreamDecoder()
    n = 0
    for chunk in chunks:
        for message in decoder.feed(chunk):
            event = bedrock_event(message)
            if event is not None:
                json.loads(event.decode())
                n += 1
    decoder.end()
    return n


def read_botocore(chunks: list[bytes]) -> int:
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    n = 0
    for chunk in chunks:
        buffer.add_data(chunk)
        for message in buffer:
            if message.headers.get(":message-type") == "event":
                json.loads(base64.b64decode(json.loads(message.payload)["bytes"]).decode())
                n += 1
    return n


def read_sdk(chunks: list[bytes]) -> int:
    from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder

    n = 0
    for event in AWSEventStreamDecoder().iter_bytes(iter(chunks)):
        json.loads(event.data)
        n += 1
    return n


def cpu_per_call(read: Callable[[list[bytes]], int], chunks: list[bytes], repeat: int, runs: int) -> tuple[float, int]:
    """Best CPU seconds per event over ``runs`` runs of ``repeat`` reads, and the events per read."""
    events = read(chunks)  # warm up: imports, caches
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        for _ in range(repeat):
            read(chunks)
        best = min(best, (time.process_time() - start) / repeat / events)
    return best, events


def drip(sizes: Iterator[int], repeat: int) -> list[tuple[int, float]]:
    """CPU nanoseconds per byte of feeding one message of each size one byte at a time."""
    out = []
    for size in sizes:
        data = written.message({":message-type": "event"}, b"x" * size)
        pieces = [data[i : i + 1] for i in range(len(data))]
        start = time.process_time()
        for _ in range(repeat):
            decoder = EventStreamDecoder()
            for piece in pieces:
                decoder.feed(piece)
            decoder.end()
        out.append((len(data), (time.process_time() - start) / repeat / len(data) * 1e9))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eventstream", description=__doc__)
    parser.add_argument("--tokens", type=int, default=500, help="text deltas in the reply")
    parser.add_argument("--repeat", type=int, default=20, help="reads per run")
    parser.add_argument("--runs", type=int, default=7, help="runs; the best is reported")
    args = parser.parse_args()
    events = reply(args.tokens)
    wire = EventStreamWire(4, args.tokens)
    framings = {
        "sse": [sse.frame(event, i) for i, event in enumerate(events)],
        "eventstream": [wire.event(event, i) for i, event in enumerate(events)],
    }
    readers: list[tuple[str, str, Callable[[list[bytes]], int]]] = [
        ("sse", "sse", read_sse),
        ("eventstream", "eventstream", read_eventstream),
        ("messages", "eventstream", read_messages),
        ("botocore", "eventstream", read_botocore),
        ("sdk", "eventstream", read_sdk),
    ]
    sizes = {name: sum(map(len, frames)) / len(frames) for name, frames in framings.items()}
    print(f"{len(events)} events; bytes per event: sse {sizes['sse']:.0f}, eventstream {sizes['eventstream']:.0f}")
    print(f"{'reader':<12} {'per read (us/event)':>20} {'x sse':>6} {'one read (us/event)':>20} {'x sse':>6}")
    baseline: dict[str, float] = {}
    for name, framing, read in readers:
        frames = framings[framing]
        cells = []
        for shape, chunks in (("paced", frames), ("burst", [b"".join(frames)])):
            seconds, count = cpu_per_call(read, chunks, args.repeat, args.runs)
            assert count == len(events)  # every event read back
            baseline.setdefault(shape, seconds)
            cells.append(f"{seconds * 1e6:>20.2f} {seconds / baseline[shape]:>6.2f}")
        print(f"{name:<12} {' '.join(cells)}")
    print("one byte per feed: message bytes -> ns per byte")
    for size, ns in drip(iter((1_000, 10_000, 100_000)), repeat=3):
        print(f"  {size:>8} {ns:>8.0f}")


if __name__ == "__main__":
    main()
