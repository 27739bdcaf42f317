"""No request buys memory it may not use: a refused caller never costs its body, the bodies in flight stay
within the body budget, and a finished call's body is freed at once (not left in a reference cycle until
a full collection). On both ports. ``python -m tests.memory`` prints the full-size figures."""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from claude_gateway.client import create_request
from google.protobuf import json_format

from simulator import Stall
from tests.harness import Harness, body, gateway, run, status_of, stream_request, until
from tests.memory import MIB, SHORT_REPLY, admitted, refused_flood

SERVICE = "/claude_gateway.v1.ChatService/"
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.mark.parametrize("port", ["grpc", "http", "messages"])
def test_callers_refused_on_their_metadata_never_cost_their_bodies(port: str) -> None:
    """8 concurrent 30 MiB requests with a wrong token: all UNAUTHENTICATED, and the gateway's resident memory
    grows by far less than the 8 bodies (it grew by 540-590 MiB when bodies were read before the token), on gRPC,
    Connect JSON and the Messages API. On gRPC its transport takes in part of each stream before the call is
    refused: the peak grew by 19 to 70 MiB over six runs, so the bound is 96 MiB; what it keeps, 32."""
    measure = refused_flood(port)
    print(measure.row(f"{port}: 8 concurrent 30 MiB requests, wrong token"))
    refused = "authentication_error" if port == "messages" else "unauthenticated"
    assert {code.lower() for code in measure.outcomes} == {refused}
    assert measure.peak - measure.before < 96, measure
    assert measure.after - measure.before < 32, measure


def test_memory_large_admitted_bodies_took_goes_back_to_the_system() -> None:
    """Two rounds of 8 concurrent admitted 30 MiB requests, with the image's MALLOC_ARENA_MAX=2: the gateway's
    resident memory is back within 64 MiB of where it started after each (glibc's defaults kept 770-1050 MiB:
    what the bodies freed stayed in the middle of its heaps until the gateway began to trim them). A loaded
    run of the whole suite kept 54.5 MiB after both rounds alike (189.5 and 189.6 MiB from 135.1): a floor
    that does not grow from round to round, where the heaps untrimmed keep more than ten times as much."""
    rounds = admitted({"MALLOC_ARENA_MAX": "2"}, rounds=2)
    for measure in rounds:
        print(measure.row("gRPC: 8 concurrent admitted 30 MiB requests"))
        assert set(measure.outcomes) == {"OK"}
    assert max(m.after for m in rounds) - rounds[0].before < 64, rounds


async def connect_json(url: str, rpc: str, request: Any) -> dict[str, Any]:
    """One Connect JSON call: the unary reply or error, or a stream's end-of-stream message (error or not)."""
    data = json_format.MessageToJson(request, indent=None).encode()
    headers = {"content-type": "application/json"}
    if rpc == "StreamMessage":
        headers = {"content-type": "application/connect+json", "connect-protocol-version": "1"}
        data = struct.pack(">BI", 0, len(data)) + data
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + SERVICE + rpc, data=data, headers=headers) as response,
    ):
        raw = await response.read()
    if rpc == "CreateMessage":
        reply: dict[str, Any] = json.loads(raw)
        return reply
    end: dict[str, Any] = {}
    while raw:
        size = struct.unpack(">I", raw[1:5])[0]
        end, raw = json.loads(raw[5 : 5 + size]), raw[5 + size :]
    return dict(end.get("error", end))


def big_request(rpc: str, size: int, directives: str = SHORT_REPLY) -> Any:
    make = stream_request if rpc == "StreamMessage" else create_request
    return make(body("x " * (size // 2) + directives))


async def grpc_call(h: Harness, rpc: str, request: Any) -> grpc.aio.AioRpcError | None:
    """One call over gRPC: None if it ended OK, else its error."""
    async with grpc.aio.insecure_channel(h.target, options=OPTIONS) as channel:
        stub = channel.unary_stream if rpc == "StreamMessage" else channel.unary_unary
        call = stub(SERVICE + rpc, request_serializer=type(request).SerializeToString)(request, timeout=30)
        try:
            if rpc == "StreamMessage":
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError as err:
            return err
    return None


async def messages_api(url: str, size: int) -> tuple[int, dict[str, Any]]:
    """One non-streaming Messages API call with a ``size``-byte prompt: its HTTP status and JSON."""
    data = json.dumps(body("x " * (size // 2) + SHORT_REPLY)).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/messages", data=data, headers=headers) as r:
        return r.status, dict(await r.json(content_type=None))


@pytest.mark.parametrize("port", ["grpc", "http", "messages"])
def test_the_body_budget_refuses_a_call_past_it_before_reading_its_body(port: str) -> None:
    """A budget of 48 MiB with a 20 MiB body held by a call in flight: a 30 MiB request is refused
    RESOURCE_EXHAUSTED (BODY_BUDGET_EXHAUSTED, with RetryInfo; the Messages API's 529 overloaded_error) and never
    reaches the upstream; a 10 MiB one fits (the HTTP port knows its size from content-length); once the first
    call ends the budget is whole again."""

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0", max_body_bytes_in_flight=48 * MIB) as h:
            budget = h.gateway.admission.bodies
            h.sim.enqueue(Stall(after_events=1))
            holder = asyncio.ensure_future(grpc_call(h, "StreamMessage", big_request("StreamMessage", 20 * MIB)))
            await until(lambda: len(h.sim.requests) == 1 and h.sim.requests[0].events_sent >= 1, timeout=30)
            assert 20 * MIB <= budget.held < 21 * MIB
            url = f"http://127.0.0.1:{h.gateway.http_port}"
            if port == "grpc":
                error = await grpc_call(h, "CreateMessage", big_request("CreateMessage", 30 * MIB))
                assert error is not None
                status = status_of(error)
                assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert status.error_info is not None
                assert status.error_info.reason == "BODY_BUDGET_EXHAUSTED"
                assert status.retry_info is not None
            elif port == "http":
                reply = await connect_json(url, "CreateMessage", big_request("CreateMessage", 30 * MIB))
                assert reply["code"] == "resource_exhausted", reply
                assert "max_body_bytes_in_flight" in reply["message"]
                fits = await connect_json(url, "CreateMessage", big_request("CreateMessage", 10 * MIB))
                assert "message" in fits, fits
            else:
                http, reply = await messages_api(url, 30 * MIB)
                assert (http, reply["error"]["type"]) == (529, "overloaded_error"), reply
                assert "max_body_bytes_in_flight" in reply["error"]["message"]
                http, fits = await messages_api(url, 10 * MIB)
                assert (http, fits["type"]) == (200, "message"), fits
            assert len(h.sim.requests) == (1 if port == "grpc" else 2)
            holder.cancel()
            await until(lambda: h.gateway.admission.active == 0)
            assert (budget.held, budget.reading) == (0, 0)

    run(go)


@contextmanager
def traced() -> Iterator[list[int]]:
    """tracemalloc on and the cyclic collector off: what a block leaves allocated is what plain reference
    counting freed or not (a reference cycle keeps its objects until a collection)."""
    found: list[int] = []
    gc.collect()
    gc.disable()
    tracemalloc.start(16)
    try:
        yield found
    finally:
        tracemalloc.stop()
        gc.enable()


def gateway_bytes() -> int:
    """Bytes allocated now and still held, but for the simulator's (the upstream's) and the test's own."""
    others = [tracemalloc.Filter(False, "*/simulator/*", all_frames=True), tracemalloc.Filter(False, __file__)]
    return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(others).statistics("filename"))


@pytest.mark.parametrize("port", ["grpc", "http"])
@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
def test_a_failed_calls_body_is_freed_without_a_collection(port: str, rpc: str) -> None:
    """An 8 MiB request that fails (the upstream answers HTTP 400) leaves less than 1 MiB allocated with the
    cyclic collector off: its bytes, message and JSON body are in no reference cycle (the error raised to end
    the call used to hold them, 8 MiB a call, until a full collection)."""

    async def call(h: Harness, url: str) -> None:
        request = big_request(rpc, 8 * MIB, " [[sim:http_error 400]]")
        if port == "grpc":
            error = await grpc_call(h, rpc, request)
            assert error is not None
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            reply = await connect_json(url, rpc, request)
            assert reply["code"] == "invalid_argument", reply
        h.sim.requests.clear()  # the simulator's own record of the body is not the gateway's

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0", max_attempts=1) as h:
            url = f"http://127.0.0.1:{h.gateway.http_port}"
            await call(h, url)  # warm: first-call caches
            with traced():
                await call(h, url)
                await asyncio.sleep(0.1)
                before = gateway_bytes()
                await call(h, url)
                await asyncio.sleep(0.1)
                grown = gateway_bytes() - before
            print(f"{port} {rpc}: {grown / MIB:.2f} MiB left allocated after a failed 8 MiB call")
            assert grown < 1 * MIB

    run(go)


def test_a_burst_of_small_calls_waits_for_the_reads_before_it_instead_of_being_refused() -> None:
    """With room for two bodies of the largest size being read, 200 concurrent small calls all end OK: each
    waits for the reads in progress (a few microseconds each), and none is refused for the budget."""

    async def go() -> None:
        async with gateway(max_body_bytes_in_flight=64 * MIB) as h:
            request = stream_request(body("Hi [[sim:tokens 2]]"))
            errors = await asyncio.gather(*(grpc_call(h, "StreamMessage", request) for _ in range(200)))
            assert [e for e in errors if e is not None] == []
            assert (h.gateway.admission.bodies.held, h.gateway.admission.bodies.reading) == (0, 0)

    run(go)
