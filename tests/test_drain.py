"""Graceful drain of a real gateway process on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.harness import (
    API_KEY,
    PROCESS_TIMEOUT,
    body,
    call_log,
    deployed,
    deployed_http,
    run,
    status_of,
    stream_request,
)

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def gateway_process(tps: int = 25, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m server`` on a simulator process at ``tps`` tokens/s; yields the process and its target."""
    with deployed("--tps", str(tps), **env) as gateway:
        yield gateway


async def call_code(stub: chat_pb2_grpc.ChatServiceStub) -> grpc.StatusCode:
    """The final status code of one short StreamMessage call."""
    call = stub.StreamMessage(stream_request(body("[[sim:tokens 2]]")), timeout=5)
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    code: grpc.StatusCode = await call.code()
    return code


def test_sigterm_lets_streams_in_flight_finish_and_refuses_new_calls() -> None:
    """On SIGTERM health turns NOT_SERVING, new calls get UNAVAILABLE, open streams complete, exit 0."""
    with gateway_process(tps=40, GATEWAY_DRAIN_DELAY="1", GATEWAY_DRAIN_GRACE="20") as (proc, target):

        async def go() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                stream = stub.StreamMessage(stream_request(body("[[sim:tokens 60]] drain me")), timeout=30)
                first = await stream.read()
                assert first.events[0].WhichOneof("type") == "message_start"
                proc.send_signal(signal.SIGTERM)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                # New calls are still served during the drain delay, then refused.
                async with asyncio.timeout(10):
                    while (code := await call_code(stub)) == grpc.StatusCode.OK:
                        pass
                assert code == grpc.StatusCode.UNAVAILABLE
                rest = []
                while (response := await stream.read()) is not grpc.aio.EOF:
                    rest.extend(response.events)
                assert rest[-1].WhichOneof("type") == "message_stop"
                assert await stream.code() == grpc.StatusCode.OK

        run(go)
        assert proc.wait(timeout=PROCESS_TIMEOUT) == 0


def test_streams_still_running_after_the_grace_end_unavailable_with_a_reason() -> None:
    """A stream longer than drain_grace is cut with UNAVAILABLE, reason SHUTTING_DOWN, and the process exits 0."""
    with gateway_process(tps=20, GATEWAY_DRAIN_GRACE="0.5") as (proc, target):

        async def go() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                request = body("[[sim:tokens 2000]] too long to finish", max_tokens=4000)
                stream = stub.StreamMessage(stream_request(request), timeout=60)
                await stream.read()
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    while await stream.read() is not grpc.aio.EOF:
                        pass
                status = status_of(caught.value)
                assert status.code == grpc.StatusCode.UNAVAILABLE
                assert status.error_info is not None
                assert status.error_info.reason == "SHUTTING_DOWN"
                assert int(status.error_info.metadata["events_delivered"]) > 0

        run(go)
        assert proc.wait(timeout=PROCESS_TIMEOUT) == 0


def test_workers_share_one_port_and_drain_together() -> None:
    """GATEWAY_WORKERS=2 runs two processes on one port; both take calls; SIGTERM stops both, exit 0."""
    with deployed(GATEWAY_WORKERS="2", GATEWAY_LOG_LEVEL="INFO") as (proc, target):

        async def go() -> None:
            # A new connection each time (a local subchannel pool: grpc would otherwise share one connection
            # among channels to the same target): the kernel spreads connections over the workers.
            for _ in range(20):
                async with grpc.aio.insecure_channel(
                    target, options=[("grpc.use_local_subchannel_pool", 1)]
                ) as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    events = [e async for r in stub.StreamMessage(stream_request(body()), timeout=10) for e in r.events]
                    assert events[-1].WhichOneof("type") == "message_stop"

        run(go)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
        assert proc.returncode == 0
        served_by = {ln.split()[2] for ln in err.splitlines() if "server.call: " in ln and '"status":"OK"' in ln}
        assert len(served_by) == 2, err


def test_a_stop_while_workers_start_ends_the_supervisor_cleanly() -> None:
    """SIGTERM to a GATEWAY_WORKERS=2 gateway whose workers are still starting ends it with exit code 0, as a
    stop, not as a failed start (`docker stop` or a pod deletion can come at any moment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    env |= {"GATEWAY_WORKERS": "2", "GATEWAY_LISTEN": "127.0.0.1:0", "ANTHROPIC_API_KEY": API_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while len(children.read_text().split()) < 2:  # both workers spawned: the stop handler is in place
        assert time.monotonic() < deadline, "the supervisor never started its workers"
        time.sleep(0.001)  # polls another process's children, which signal nothing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, err
    assert "failed to start" not in err


def test_calls_arriving_around_sigterm_are_served_or_refused_with_a_log_line_never_cancelled() -> None:
    """100 streams in flight, SIGTERM, then 100 more at once: every call ends OK (in flight) or UNAVAILABLE
    with reason SHUTTING_DOWN from admission, none CANCELLED, and each has its log line (grpc's own stop
    used to cancel calls that had arrived but not yet reached admission: no status detail, no log line)."""
    with gateway_process(tps=200, GATEWAY_DRAIN_GRACE="20", GATEWAY_LOG_LEVEL="INFO") as (proc, target):
        assert proc.stderr is not None
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True)
        reader.start()

        async def one(stub: chat_pb2_grpc.ChatServiceStub, started: asyncio.Event | None) -> str:
            call = stub.StreamMessage(stream_request(body("[[sim:tokens 40]] around the stop")), timeout=30)
            try:
                await call.read()
                if started is not None:
                    started.set()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as error:
                if rpc_status.from_call(error) is None:
                    return f"{error.code().name} from grpc, no details"
                status = status_of(error)
                return f"{error.code().name} {status.error_info.reason if status.error_info else ''}"
            return "OK"

        async def go() -> tuple[list[str], grpc.StatusCode]:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                # A stream whose upstream goes silent after message_start holds the drain open until every late
                # call has its status, and the test then cancels it: the late calls reach a gateway still
                # draining however slowly a busy machine sends them, with no clock deciding it. (Once the drain
                # stops grpc, a call can only meet its GOAWAY. A stream of N tokens held it open before: capped
                # by max_tokens at 256 tokens, 1.3 s, it could end before SIGTERM while the 99 others started.)
                holder = stub.StreamMessage(stream_request(body("[[sim:stall 1]] hold the drain open")), timeout=60)
                await holder.read()
                firsts = [asyncio.Event() for _ in range(99)]
                early = [asyncio.ensure_future(one(stub, first)) for first in firsts]
                await asyncio.gather(*(first.wait() for first in firsts))
                proc.send_signal(signal.SIGTERM)
                late = [asyncio.ensure_future(one(stub, None)) for _ in range(100)]
                outcomes = list(await asyncio.gather(*early, *late))
                holder.cancel()
                return outcomes, await holder.code()

        outcomes, held = run(go)
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=10)
    seen = Counter(outcomes)
    print(f"outcomes: {dict(seen)}")
    # Cancelled by the test itself, not ended by the grace (UNAVAILABLE) nor by grpc's stop: it held the drain.
    assert held == grpc.StatusCode.CANCELLED, held
    assert set(seen) <= {"OK", "UNAVAILABLE SHUTTING_DOWN"}, seen
    assert seen["OK"] >= 99
    logged = Counter((line["status"], line["reason"]) for line in call_log("".join(log)))
    expected = {("OK", ""): seen["OK"], ("UNAVAILABLE", "SHUTTING_DOWN"): seen["UNAVAILABLE SHUTTING_DOWN"]}
    assert logged == Counter({**expected, ("CANCELLED", "CLIENT_CANCELLED"): 1}), logged


def test_http_calls_arriving_around_sigterm_are_served_or_refused_with_a_log_line() -> None:
    """The same on the HTTP port: 30 Messages API streams in flight, SIGTERM, then 30 Connect calls and 30
    Messages API calls at once: each ends OK or refused as shutting down (Connect `unavailable`, the
    Messages API's 529 `overloaded_error`), and each has its log line (UNAVAILABLE / SHUTTING_DOWN)."""
    env = {"GATEWAY_DRAIN_GRACE": "20", "GATEWAY_LOG_LEVEL": "INFO"}
    with deployed_http("--tps", "200", **env) as (proc, _, port):
        url = f"http://127.0.0.1:{port}"
        assert proc.stderr is not None
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True)
        reader.start()

        async def messages(session: aiohttp.ClientSession, started: asyncio.Event | None) -> str:
            request = {**body("[[sim:tokens 40]] around the stop"), "stream": True}
            async with session.post(f"{url}/v1/messages", json=request) as response:
                if response.status != 200:
                    error = (await response.json())["error"]
                    return f"{response.status} {error['type']} {error['message']}"
                events = []
                async for line in response.content:
                    if line.startswith(b"event: "):
                        events.append(line[7:].strip().decode())
                        if started is not None:
                            started.set()
                return "OK" if events[-1] == "message_stop" else f"stream ended at {events[-1]}"

        async def connect(session: aiohttp.ClientSession) -> str:
            request = json_format.MessageToDict(stream_request(body("[[sim:tokens 4]] late")))
            async with session.post(f"{url}/claude_gateway.v1.ChatService/CreateMessage", json=request) as response:
                reply = await response.json()
                return "OK" if response.status == 200 else f"{response.status} {reply['code']} {reply['message']}"

        async def go() -> list[str]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                # Holds the drain open until every late call has its answer, then closed by the test (as in the
                # gRPC test above): its upstream goes silent after message_start.
                hold = {**body("[[sim:stall 1]] hold the drain open"), "stream": True}
                async with session.post(f"{url}/v1/messages", json=hold) as holder:
                    assert holder.status == 200
                    assert await holder.content.readline() == b"event: message_start\n"
                    firsts = [asyncio.Event() for _ in range(29)]
                    early = [asyncio.ensure_future(messages(session, first)) for first in firsts]
                    await asyncio.gather(*(first.wait() for first in firsts))
                    proc.send_signal(signal.SIGTERM)
                    late = [asyncio.ensure_future(messages(session, None)) for _ in range(30)]
                    late += [asyncio.ensure_future(connect(session)) for _ in range(30)]
                    outcomes = list(await asyncio.gather(*early, *late))
                    holder.close()
                return outcomes

        outcomes = run(go)
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=10)
    seen = Counter(outcomes)
    print(f"outcomes: {dict(seen)}")
    refused = {"529 overloaded_error gateway is shutting down", "503 unavailable gateway is shutting down"}
    assert set(seen) <= {"OK", *refused}, seen
    assert seen["OK"] >= 29
    logged = Counter((line["status"], line["reason"]) for line in call_log("".join(log)))
    expected = {("OK", ""): seen["OK"], ("UNAVAILABLE", "SHUTTING_DOWN"): len(outcomes) - seen["OK"]}
    # The holder's line says the client went away: the drain still waited on it, the grace had not cut it.
    assert logged == Counter({**expected, ("CANCELLED", "CLIENT_CANCELLED"): 1}), logged
