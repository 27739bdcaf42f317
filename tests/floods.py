"""Replies of very many small events, through a gateway process: its CPU per reply on each RPC, and how
long health checks wait meanwhile. ``python -m tests.floods`` prints the table docs/operations.md
("Limits and hardening") gives; tests/test_floods.py asserts the same at a smaller scale.

The upstream is a ``tests.hostile.Hostile`` in this process, which sends the whole reply as fast as the
gateway reads it; the gateway is ``python -m server`` aimed at it, so its CPU time (from /proc) is its
own alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from claude_gateway.client import create_request, stream_request
from claude_gateway.v1 import chat_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import API_KEY, ROOT, body, clean_env
from tests.hostile import MESSAGE_START, Hostile, Request, head

TICKS = os.sysconf("SC_CLK_TCK")


def frame(event: Mapping[str, object]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class Flood:
    """One reply: a block of ``count`` deltas of ``size`` characters each, of the given kind."""

    name: str
    kind: str  # text or tool
    count: int
    size: int

    def wire(self) -> bytes:
        """The whole reply in the API's wire form."""
        if self.kind == "text":
            block: dict[str, object] = {"type": "text", "text": ""}
            delta = frame(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a" * self.size}}
            )
            stop_reason = "end_turn"
        else:
            block = {"type": "tool_use", "id": "toolu_flood", "name": "f", "input": {}}
            stop_reason = "tool_use"
        parts = [frame(MESSAGE_START), frame({"type": "content_block_start", "index": 0, "content_block": block})]
        if self.kind == "text":
            parts.append(delta * self.count)
        else:  # one JSON object {"k":"aaa..."} cut into count pieces of size characters
            text = json.dumps({"k": "a" * max(self.count * self.size - 8, 0)}, separators=(",", ":"))
            pieces = [text[i : i + self.size] for i in range(0, len(text), self.size)]
            parts += [
                frame(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": p},
                    }
                )
                for p in pieces
            ]
        parts.append(frame({"type": "content_block_stop", "index": 0}))
        usage = {"output_tokens": self.count}
        parts.append(
            frame(
                {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}
            )
        )
        parts.append(frame({"type": "message_stop"}))
        return b"".join(parts)


FLOODS = (
    Flood("128k text deltas of 4 characters (a long reply's shape)", "text", 128_000, 4),
    Flood("100k text deltas of 1 character", "text", 100_000, 1),
    Flood("400k tool input deltas of 1 character", "tool", 400_000, 1),
    Flood("20 MB of text in 1,000-character deltas", "text", 20_000, 1000),
)


def replaying(data: bytes) -> Callable[[Hostile, Request, asyncio.StreamWriter], Awaitable[None]]:
    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(200, content_type="text/event-stream", request_id="req_flood01"))
        for at in range(0, len(data), 1 << 16):
            await up.send(writer, data[at : at + (1 << 16)])

    return answer


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.asynccontextmanager
async def gateway_process(upstream: str, **env: str) -> AsyncIterator[tuple[int, str]]:
    """``python -m server`` aimed at ``upstream``: its pid and target, once it serves."""
    full = {
        **clean_env(),
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": upstream,
        "GATEWAY_LISTEN": "127.0.0.1:0",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        assert line.startswith("gateway listening on "), line
        yield proc.pid, line.split()[3]
    finally:
        proc.kill()
        await proc.wait()


@dataclass
class Outcome:
    cpu: float  # seconds of the gateway's CPU for the call
    slowest_health: float  # seconds: the slowest health check while it ran
    # Seconds of the gateway's CPU spent while one health check waited, the most of any: what the gateway did
    # before it answered, however long the machine kept it from running (the wall-clock wait grows with the load).
    health_cpu: float
    idle_health: float  # seconds: the slowest health check in the second before it, the gateway idle
    events: int
    status: str


async def through(pid: int, target: str, rpc: str) -> Outcome:
    """One call of ``rpc``, with a health check every 20 ms while it runs."""
    options = [("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub, health = chat_pb2_grpc.ChatServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        idle, since = 0.0, time.monotonic()
        while time.monotonic() - since < 1.0:  # a baseline: how this machine answers an idle gateway now
            started = time.monotonic()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            idle = max(idle, time.monotonic() - started)
            await asyncio.sleep(0.02)
        slowest, health_cpu, done = 0.0, 0.0, asyncio.Event()

        async def probe() -> None:
            nonlocal slowest, health_cpu
            while not done.is_set():
                started, cpu = time.monotonic(), cpu_seconds(pid)
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                health_cpu = max(health_cpu, cpu_seconds(pid) - cpu)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)

        before = cpu_seconds(pid)
        prober = asyncio.create_task(probe())
        events, status = 0, "OK"
        try:
            if rpc == "StreamMessage":
                async for response in stub.StreamMessage(stream_request(body()), timeout=300):
                    events += len(response.events)
            else:
                reply = await stub.CreateMessage(create_request(body()), timeout=300)
                events = len(reply.message.content)
        except grpc.aio.AioRpcError as err:
            status = err.code().name
        finally:
            done.set()
            await prober
        return Outcome(cpu_seconds(pid) - before, slowest, health_cpu, idle, events, status)


async def measure(flood: Flood, rpc: str, **env: str) -> Outcome:
    async with Hostile(replaying(flood.wire())) as up, gateway_process(up.url, **env) as (pid, target):
        return await through(pid, target, rpc)


def main() -> None:
    print("| reply | RPC | gateway CPU (s) | slowest health check (ms) | idle, before it (ms) | status |")
    print("|---|---|---|---|---|---|")
    for flood in FLOODS:
        for rpc in ("StreamMessage", "CreateMessage"):
            outcome = asyncio.run(measure(flood, rpc))
            print(
                f"| {flood.name} | {rpc} | {outcome.cpu:.2f} | {outcome.slowest_health * 1e3:.0f} "
                f"| {outcome.idle_health * 1e3:.0f} | {outcome.status} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
