"""What large requests cost a deployed gateway's memory: ``python -m tests.memory`` prints the figures that
docs/operations.md ("Limits and hardening") gives, from gateway processes started as deployed (a
simulator process, a gateway process aimed at it; tests/harness.py ``deployed``).

- 8 concurrent calls of a 30 MiB request with a wrong token, on gRPC and on the HTTP port: the
  gateway's resident memory before, at its peak and after (they are refused on their metadata, before
  their bodies are read);
- one admitted 30 MiB call: the peak over the idle process, per byte of request (what a body in flight
  costs, which the default body budget is sized from);
- 8 concurrent admitted 30 MiB calls, three rounds, under each malloc setting the image could ship:
  the peak, and what the process keeps after each round;
- the same on gRPC and on the Messages API with the body budget a worker of the k8s overlays gets by default
  (``GATEWAY_MAX_BODY_BYTES_IN_FLIGHT`` unset: an eighth of its share of the pod's memory limit): the peak over
  the idle process per byte of that budget, which docs/deploy.md ("Memory") sizes the limits from.

tests/test_memory.py asserts the same shapes at a smaller scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from claude_gateway.client import stream_request
from google.protobuf import json_format

from tests.harness import body, deployed

MIB = 1 << 20
TOKEN = "right-token"
SERVICE = "/claude_gateway.v1.ChatService/"
SHORT_REPLY = " [[sim:tokens 5]]"  # the simulator's reply stays small whatever the prompt's size
# The malloc settings compared; the image ships the winner (Dockerfile).
MALLOC_SETTINGS: dict[str, dict[str, str]] = {
    "glibc defaults": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "MALLOC_TRIM_THRESHOLD_=128K": {"MALLOC_TRIM_THRESHOLD_": "131072"},
    "MALLOC_MMAP_THRESHOLD_=128K": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "MALLOC_MMAP_THRESHOLD_=128K + MALLOC_ARENA_MAX=2": {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"},
    "jemalloc (LD_PRELOAD)": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
}


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Sampler:
    """The peak resident memory of a process, sampled every 5 ms from a thread while in use."""

    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(FileNotFoundError):
                self.peak = max(self.peak, rss(self.pid))


@contextlib.contextmanager
def sampling(pid: int) -> Iterator[Sampler]:
    sampler = Sampler(pid, rss(pid))
    thread = threading.Thread(target=sampler._run, daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        sampler._stop.set()
        thread.join()


def settled(pid: int, quiet: float = 1.0, longest: float = 10.0) -> int:
    """Resident memory of process ``pid`` once it has stopped shrinking: sampled every 50 ms until it has not
    dropped by a MiB for ``quiet`` seconds, or ``longest`` seconds have passed. (The gateway trims its heaps
    a quarter second after the last large body is given back, off the event loop; on a busy machine the
    calls' ends and the trim take longer than any fixed wait.)"""
    low = rss(pid)
    since = started = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - started < longest:
        time.sleep(0.05)
        now = rss(pid)
        if now < low - MIB:
            low, since = now, time.monotonic()
    return min(low, rss(pid))


def callers_file() -> str:
    """A callers file naming TOKEN's holder `alpha` (left in the temporary directory)."""
    with tempfile.NamedTemporaryFile("w", suffix=".callers", delete=False) as handle:
        handle.write(f"{hashlib.sha256(TOKEN.encode()).hexdigest()} alpha\n")
    return handle.name


def request_bytes(size: int, suffix: str = SHORT_REPLY) -> bytes:
    """A serialized StreamMessageRequest whose prompt is ``size`` bytes."""
    return stream_request(body("x " * (size // 2) + suffix)).SerializeToString()


async def grpc_calls(target: str, data: bytes, count: int, token: str) -> list[str]:
    """``count`` concurrent StreamMessage calls of ``data``: the status code name each ended with."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_stream(SERVICE + "StreamMessage")

        async def one() -> str:
            try:
                async for _ in call(data, metadata=(("authorization", f"Bearer {token}"),), timeout=120):
                    pass
            except grpc.aio.AioRpcError as err:
                return str(err.code().name)
            return "OK"

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def http_calls(url: str, size: int, count: int, token: str) -> list[str]:
    """``count`` concurrent Connect JSON CreateMessage calls with a ``size``-byte prompt: the Connect error code
    each ended with (or `ok`, or `closed` when the gateway closed the connection before answering)."""
    data = json_format.MessageToJson(stream_request(body("x " * (size // 2) + SHORT_REPLY)), indent=None).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}

    async def one(session: aiohttp.ClientSession) -> str:
        try:
            async with session.post(url + SERVICE + "CreateMessage", data=data, headers=headers) as response:
                reply = await response.json(content_type=None)
        except aiohttp.ClientError:
            return "closed"
        return str(reply.get("code", "ok"))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))


async def messages_calls(url: str, size: int, count: int, token: str) -> list[str]:
    """``count`` concurrent Messages API calls (POST /v1/messages, as the Anthropic SDKs send them) with a
    ``size``-byte prompt: the error type each ended with (or `ok`, or `closed`)."""
    data = json.dumps({**body("x " * (size // 2) + SHORT_REPLY), "stream": False}).encode()
    headers = {"content-type": "application/json", "x-api-key": token, "anthropic-version": "2023-06-01"}

    async def one(session: aiohttp.ClientSession) -> str:
        try:
            async with session.post(url + "/v1/messages", data=data, headers=headers) as response:
                reply = await response.json(content_type=None)
        except aiohttp.ClientError:
            return "closed"
        error = reply.get("error") if isinstance(reply, dict) else None
        return str(error.get("type")) if isinstance(error, dict) else "ok"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))


@dataclass
class Measure:
    """Resident memory of the gateway before, at the peak and after some calls, in MiB, and their outcomes."""

    before: float
    peak: float
    after: float
    outcomes: list[str]

    def row(self, label: str) -> str:
        outcomes = ", ".join(sorted(set(self.outcomes)))
        return f"| {label} | {self.before:.0f} | {self.peak:.0f} | {self.after:.0f} | {outcomes} |"


def refused_flood(port: str, count: int = 8, size: int = 30 * MIB, **env: str) -> Measure:
    """``count`` concurrent ``size``-byte calls with a wrong token at a deployed gateway, on ``port``: grpc,
    http (Connect JSON) or messages (the Messages API on the HTTP port)."""
    settings = {"GATEWAY_CALLER_IDENTITY": "token", "GATEWAY_CALLERS_FILE": callers_file(), **env}
    http_port = free_port()
    if port != "grpc":
        settings["GATEWAY_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
    with deployed("--ttft", "0", "--tps", "0", **settings) as (gateway, target):
        before = rss(gateway.pid)
        url = f"http://127.0.0.1:{http_port}"
        with sampling(gateway.pid) as sampler:
            if port == "grpc":
                outcomes = asyncio.run(grpc_calls(target, request_bytes(size), count, "wrong-token"))
            elif port == "http":
                outcomes = asyncio.run(http_calls(url, size, count, "wrong-token"))
            else:
                outcomes = asyncio.run(messages_calls(url, size, count, "wrong-token"))
            after = settled(gateway.pid)
        return Measure(before / MIB, sampler.peak / MIB, after / MIB, outcomes)


def free_port() -> int:
    """A loopback port free now, for a gateway process to bind."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def admitted(env: dict[str, str], count: int = 8, size: int = 30 * MIB, rounds: int = 1) -> list[Measure]:
    """``rounds`` of ``count`` concurrent admitted ``size``-byte gRPC calls at a deployed gateway, with ``env``
    added to its environment."""
    settings = {"GATEWAY_CALLER_IDENTITY": "token", "GATEWAY_CALLERS_FILE": callers_file(), **env}
    out = []
    with deployed("--ttft", "0", "--tps", "0", **settings) as (gateway, target):
        data = request_bytes(size)
        for _ in range(rounds):
            before = rss(gateway.pid)
            with sampling(gateway.pid) as sampler:
                outcomes = asyncio.run(grpc_calls(target, data, count, TOKEN))
                after = settled(gateway.pid)
            out.append(Measure(before / MIB, sampler.peak / MIB, after / MIB, outcomes))
    return out


POD_BUDGET = 64 * MIB  # the body budget the Kubernetes base sets (k8s/base/deployment.yaml; docs/deploy.md, "Memory")


def under_budget(port: str, budget: int = POD_BUDGET, count: int = 8, size: int = 30 * MIB, rounds: int = 3) -> Measure:
    """``rounds`` of ``count`` concurrent admitted ``size``-byte calls on ``port`` (grpc, or messages: the Messages
    API) at a deployed gateway with the image's MALLOC_ARENA_MAX=2 and a body budget of ``budget`` bytes: the
    process before the first round, its peak over all of them, after the last, and every outcome."""
    settings = {
        "GATEWAY_CALLER_IDENTITY": "token",
        "GATEWAY_CALLERS_FILE": callers_file(),
        "GATEWAY_MAX_BODY_BYTES_IN_FLIGHT": str(budget),
        "MALLOC_ARENA_MAX": "2",
    }
    http_port = free_port()
    if port != "grpc":
        settings["GATEWAY_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
    with deployed("--ttft", "0", "--tps", "0", **settings) as (gateway, target):
        before = rss(gateway.pid)
        outcomes: list[str] = []
        data = request_bytes(size)
        with sampling(gateway.pid) as sampler:
            for _ in range(rounds):
                if port == "grpc":
                    outcomes += asyncio.run(grpc_calls(target, data, count, TOKEN))
                else:
                    outcomes += asyncio.run(messages_calls(f"http://127.0.0.1:{http_port}", size, count, TOKEN))
            after = settled(gateway.pid)
        return Measure(before / MIB, sampler.peak / MIB, after / MIB, outcomes)


def main() -> None:
    print("| calls | RSS before (MiB) | peak | after | outcomes |")
    print("|---|---|---|---|---|")
    print(refused_flood("grpc").row("gRPC: 8 concurrent 30 MiB requests, wrong token"))
    print(refused_flood("http").row("HTTP (Connect JSON): 8 concurrent 30 MiB requests, wrong token"))
    print(refused_flood("messages").row("HTTP (Messages API): 8 concurrent 30 MiB requests, wrong token"))
    (one,) = admitted({}, count=1)
    print(one.row("gRPC: one admitted 30 MiB request"))
    print(f"\npeak over idle per request byte: {(one.peak - one.before) / 30:.1f}\n")
    for port in ("grpc", "messages"):
        measure = under_budget(port)
        print(measure.row(f"{port}: 3 rounds of 8 concurrent admitted 30 MiB requests, a 64 MiB body budget"))
        print(f"peak over idle per byte of the body budget: {(measure.peak - measure.before) / (POD_BUDGET / MIB):.2f}")
    print("\n| malloc setting | peak (MiB) | after round 1 | after round 2 | after round 3 |")
    print("|---|---|---|---|---|")
    for name, env in MALLOC_SETTINGS.items():
        rounds = admitted(env, rounds=3)
        after = " | ".join(f"{m.after:.0f}" for m in rounds)
        print(f"| {name} | {max(m.peak for m in rounds):.0f} | {after} |", flush=True)


if __name__ == "__main__":
    main()
