"""``python -m bench.store``: CPU per event of what a resumable stream adds, its store alone (no gRPC, no upstream).

``--streams`` streams, each producing ``--tps`` one-event reads a second for ``--seconds`` in this process, hand
their serialized responses to a caller that consumes them (an ``await`` per response), three ways:

- ``direct``: the producer hands each response to the caller itself, as a plain stream does;
- ``memory``: through a ``Stream`` of ``server.streams.memory.MemoryStore`` and a ``LocalFollower`` in a task of
  its own, as a resumable stream without Redis;
- ``redis``: the same through ``server.streams.redis_store.RedisStore``, which also writes every read to a
  redis-server started here (one XADD per read, off the producer's path).

It prints microseconds of this process's CPU per event for each, in alternating rounds, and what ``memory`` and
``redis`` add to ``direct``: the part of row 10a's difference that is the store's (the benchmark's row also counts
the gRPC and upstream work both ways share). redis-server's own CPU is not counted. Nothing here is asserted by
the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

from claude_gateway.v1 import chat_pb2 as pb

from server.config import Settings
from server.streams.memory import MemoryStore
from server.streams.redis_store import RedisStore
from server.streams.store import EventStore
from server.streams.stream import Chunk, LocalFollower, Outcome

READY = "Ready to accept connections"


def response(n: int) -> pb.StreamMessageResponse:
    """One text delta, numbered ``n``, as the gateway sends it."""
    out = pb.StreamMessageResponse(sequence=n)
    out.events.add().content_block_delta.delta.text_delta.text = f" token{n}"
    return out


async def take(data: bytes | pb.StreamMessageResponse) -> None:
    """The caller: a message is serialized (as grpc would), then control goes back to the loop once."""
    if not isinstance(data, bytes):
        data.SerializeToString()
    await asyncio.sleep(0)


async def direct(events: int, interval: float) -> None:
    for n in range(1, events + 1):
        await asyncio.sleep(interval)
        await take(response(n))


async def through(store: EventStore, name: str, events: int, interval: float) -> None:
    stream = await store.create(name, "bench", 60.0, lambda failure: None)
    follower = LocalFollower(stream)

    async def follow() -> None:
        async for chunk in follower.chunks(0):
            await take(chunk.data)
        await follower.close()

    reader = asyncio.create_task(follow())
    for n in range(1, events + 1):
        await asyncio.sleep(interval)
        stream.append(Chunk(n, 1, response(n).SerializeToString()))
        await stream.keep_up()
    stream.finish(Outcome(None, ()))
    await reader


async def measure(streams: int, run: Callable[[int], Awaitable[None]], events: int) -> float:
    """Microseconds of process CPU per event of ``streams`` concurrent runs."""
    start = time.process_time()
    await asyncio.gather(*(run(i) for i in range(streams)))
    return (time.process_time() - start) / (streams * events) * 1e6


def redis_server() -> tuple[subprocess.Popen[str], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if READY in line:
            return proc, port
    raise SystemExit(f"redis-server exited with {proc.wait()} before it was ready")


async def main(args: argparse.Namespace) -> None:
    events = max(1, int(args.seconds * args.tps))
    interval = 1 / args.tps
    proc, port = redis_server()
    try:
        settings = Settings.from_env({"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        memory, redis = MemoryStore(settings), RedisStore(settings)
        redis.start()
        stamp = time.time_ns()
        ways: dict[str, Callable[[int], Awaitable[None]]] = {
            "direct": lambda i: direct(events, interval),
            "memory": lambda i: through(memory, f"m{stamp}-{i}", events, interval),
            "redis": lambda i: through(redis, f"r{stamp}-{i}", events, interval),
        }
        print(f"{args.streams} streams x {args.tps:g} one-event reads/s x {args.seconds:g} s; us of CPU per event")
        for round_ in range(1, args.rounds + 1):
            stamp = time.time_ns()  # fresh stream ids each round
            us = {name: await measure(args.streams, run, events) for name, run in ways.items()}
            print(
                f"round {round_}: "
                + ", ".join(f"{name} {value:.1f}" for name, value in us.items())
                + f"; memory adds {us['memory'] - us['direct']:.1f}, redis {us['redis'] - us['direct']:.1f}",
                flush=True,
            )
        await redis.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tps", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
