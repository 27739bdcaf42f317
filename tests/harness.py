"""A real gateway on 127.0.0.1:0, on a real simulator, reached over real gRPC: what tests run against."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import grpc
from claude_gateway import codec
from claude_gateway.client import stream_request as stream_request  # re-exported for the tests
from claude_gateway.v1 import chat_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from server.app import Gateway, build_server, sdk_client
from server.config import Settings
from simulator import Pace, Simulator
from simulator.catalog import MODELS

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-ant-test-SECRET-never-logged"
UNPACED = Pace()
# Seconds a subprocess (``python -m server``, the CLI) may take before a test gives up on it: a hang guard,
# never reached when things work, even on a busy machine (with both cores saturated, ``python -m server``
# took 50 s to import what it needs: 4 s of CPU).
PROCESS_TIMEOUT = 300.0


def run(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async test body on a fresh event loop."""
    return asyncio.run(test())


def body(prompt: str = "Hello gateway", **extra: Any) -> dict[str, Any]:
    """An Anthropic-shaped request body."""
    return {"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": [{"role": "user", "content": prompt}], **extra}


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for ``condition`` to hold, checking every few milliseconds (``timeout`` is a hang guard)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 -- polls state of another component that has no event to await
            await asyncio.sleep(0.002)


@dataclasses.dataclass
class Harness:
    sim: Simulator
    gateway: Gateway
    channel: grpc.aio.Channel
    stub: chat_pb2_grpc.ChatServiceStub
    sdk: anthropic.AsyncAnthropic  # straight to the simulator, for comparisons

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    async def events(self, request_body: dict[str, Any], timeout: float = 10) -> list[dict[str, Any]]:
        """Every event of one StreamMessage call, as Messages API JSON."""
        call = self.stub.StreamMessage(stream_request(request_body), timeout=timeout)
        return [codec.to_json(e) async for r in call for e in r.events]


@contextlib.asynccontextmanager
async def gateway(
    pace: Pace = UNPACED, *, served_models: Collection[str] = MODELS, **settings: Any
) -> AsyncIterator[Harness]:
    """Simulator + gateway + channel, all on loopback, torn down in order. The simulator serves
    ``served_models`` (default: simulator/models.txt)."""
    async with Simulator(pace, api_key=API_KEY, models=served_models) as sim:
        config = Settings(listen="127.0.0.1:0", **settings)
        gw = await build_server(config, sdk_client(config, base_url=sim.base_url, api_key=API_KEY))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
        sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        try:
            yield Harness(sim, gw, channel, chat_pb2_grpc.ChatServiceStub(channel), sdk)
        finally:
            await channel.close()
            await sdk.close()
            await gw.close()


@dataclasses.dataclass
class Status:
    """A failed call's status and its rich details."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None
    retry_info: error_details_pb2.RetryInfo | None
    bad_request: error_details_pb2.BadRequest | None
    quota_failure: error_details_pb2.QuotaFailure | None = None


def status_of(error: grpc.aio.AioRpcError) -> Status:
    found: dict[str, Any] = {}
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details on the call"
    for detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(cls.DESCRIPTOR):
                found[cls.__name__] = cls()
                detail.Unpack(found[cls.__name__])
    return Status(
        error.code(),
        error.details() or "",
        found.get("ErrorInfo"),
        found.get("RetryInfo"),
        found.get("BadRequest"),
        found.get("QuotaFailure"),
    )


def call_log(text: str) -> list[dict[str, Any]]:
    """The JSON object of every call log line (logger ``server.call``) in a gateway's log output, in either
    GATEWAY_LOG_FORMAT: after ``server.call: `` in text; the line itself, logger and all, in json."""
    marker = "server.call: "
    found = []
    for line in text.splitlines():
        if marker in line:
            found.append(json.loads(line.split(marker, 1)[1]))
        elif line.startswith("{") and (obj := json.loads(line)).get("logger") == "server.call":
            found.append(obj)
    return found


def fixture_events(path: Path) -> list[dict[str, Any]]:
    """The JSON of every event in a recorded SSE body, in order."""
    return sse_events(path.read_bytes())


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """The JSON of every event in an SSE body, in order."""
    events = []
    for frame in body.decode().split("\n\n"):
        data = [line[5:].lstrip() for line in frame.splitlines() if line.startswith("data:")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], ready: str, **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python ARGS`` from the repository root; yields it and the address on its ready line once it prints
    that line; kills it on the way out if the test did not stop it."""
    with process_ready(args, env, ready, **popen) as (proc, rest):
        yield proc, rest.split()[0]


@contextlib.contextmanager
def process_ready(
    args: list[str], env: dict[str, str], ready: str, **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """As ``process``, but yields the rest of the ready line whole (a gateway's names its HTTP port's URL too).
    A process that exits before its ready line fails the test with what it wrote to a piped stderr."""
    popen.setdefault("cwd", ROOT)
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True, **popen)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(ready) and proc.stderr is not None:
            proc.wait(timeout=10)
            line += proc.stderr.read()[-4000:]
        assert line.startswith(ready), line
        yield proc, line[len(ready) :]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def clean_env() -> dict[str, str]:
    """This environment without any gateway or Anthropic setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}


@contextlib.contextmanager
def deployed(*sim_args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A ``python -m simulator`` process and a ``python -m server`` process aimed at it by ANTHROPIC_BASE_URL
    and ANTHROPIC_API_KEY alone, as deployed; yields the gateway process and its target once both serve.
    ``env`` adds GATEWAY_* settings; its stderr is piped for tests that read the log."""
    with _deployed(sim_args, env) as (gateway, rest):
        yield gateway, rest.split()[0]


@contextlib.contextmanager
def deployed_http(*sim_args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """As ``deployed``, with the HTTP port on: yields the gateway process, its gRPC target and its HTTP port. The
    gateway binds the port itself (``127.0.0.1:0``), so no other test's connection can take a port found
    free beforehand; it is read from the ready line."""
    with _deployed(sim_args, {**env, "GATEWAY_HTTP_LISTEN": "127.0.0.1:0"}) as (gateway, rest):
        target, url = rest.split()[:2]  # "127.0.0.1:PORT http://127.0.0.1:HTTP_PORT/"
        yield gateway, target, int(url.rstrip("/").rsplit(":", 1)[1])


@contextlib.contextmanager
def _deployed(sim_args: tuple[str, ...], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    base = clean_env()
    with process(
        ["-m", "simulator", "--port", "0", "--api-key", API_KEY, *sim_args], base, "simulator listening on "
    ) as (
        _,
        base_url,
    ):
        settings = {"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_LOG_LEVEL": "WARNING", **env}
        full = {**base, "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": base_url, **settings}
        with process_ready(["-m", "server"], full, "gateway listening on ", stderr=subprocess.PIPE) as gateway:
            yield gateway


def unread_from(port: int) -> int:
    """Bytes that the loopback server on ``port`` has written and its clients have not read yet: what waits
    in the server's send queues and in the clients' receive queues (established IPv4 connections, as
    /proc/net/tcp shows them). A byte a client has read is in that client's process, not here."""
    waiting = 0
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if fields[3] != "01":  # ESTABLISHED
                continue
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            send_queue, receive_queue = (int(n, 16) for n in fields[4].split(":"))
            if local == port:
                waiting += send_queue  # written by the server, not yet in the client's socket
            elif remote == port:
                waiting += receive_queue  # in the client's socket, not yet read
    return waiting


async def slowest_round_trip(h: Harness) -> float:
    """The slowest of five health checks through the gateway: how long this machine, as loaded now, takes
    to carry a call there and back. A bound on what should happen at once is a multiple of it."""
    health = health_pb2_grpc.HealthStub(h.channel)
    slowest = 0.0
    for _ in range(5):
        started = time.monotonic()
        await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        slowest = max(slowest, time.monotonic() - started)
    return slowest


async def at_once(h: Harness) -> float:
    """What "at once" allows (a cancel reaching the upstream, say): half a second, or ten round trips through
    the gateway if this machine is slower than that now. Take it before the call under test. (An idle machine
    takes a few ms: docs/api.md says 100 ms; beside two busy loops, one such close in 150 took 0.3 s.) It
    tells a close on the event from one that waits for something: a read, a drain, a timer."""
    return max(0.5, 10 * await slowest_round_trip(h))
