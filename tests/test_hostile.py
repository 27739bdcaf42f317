"""A hostile upstream on loopback: every misbehaviour costs one call a clean status, never the process,
the key, the memory or the other calls (health keeps answering throughout)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from claude_gateway.client import create_request
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import USAGE_KEY
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import Gateway, build_server, sdk_client
from server.config import Settings
from tests.harness import API_KEY, Status, body, run, status_of, stream_request
from tests.hostile import MESSAGE_START, Answer, Hostile, Request, head, sse

TRANSPORTS = ["aiohttp", "httpx"]
SSE_HEAD = {"content_type": "text/event-stream", "request_id": "req_hostile01"}


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Outcome:
    """What one call through the gateway ended with, and how the gateway fared meanwhile."""

    status: Status | None
    events: int  # events the client received before the end
    metadata: list[tuple[str, str]]
    slowest_health: float  # seconds, the slowest health check (or stall of its 20 ms loop) while the call ran
    busiest_loop: float  # CPU seconds the event loop's thread spent between two health answers, at most
    health_failures: int
    rss_growth: int  # bytes, peak RSS during the call over RSS before it


@contextlib.asynccontextmanager
async def aimed_at(up: Hostile, **settings: object) -> AsyncIterator[Gateway]:
    """A gateway whose upstream is ``up``."""
    config = Settings(listen="127.0.0.1:0", **settings)  # type: ignore[arg-type]
    gw = await build_server(config, sdk_client(config, base_url=up.url, api_key=API_KEY))
    try:
        yield gw
    finally:
        await gw.close()


async def call_through(gw: Gateway, rpc: str = "StreamMessage") -> Outcome:
    """One call of ``rpc``, with health checked every 20 ms and RSS sampled while it runs. Between two
    health answers, the wall time and the CPU time of the event loop's thread (the gateway's, the client's
    and the upstream's: one loop) are both taken."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{gw.port}", options=[("grpc.max_receive_message_length", -1)]
    ) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        base = peak = rss()
        slowest, busiest, failures, done = 0.0, 0.0, 0, asyncio.Event()

        async def probe() -> None:
            nonlocal slowest, busiest, failures, peak
            while not done.is_set():
                started, cpu = time.monotonic(), time.thread_time()
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=30)  # a hang, not a slow answer
                except grpc.aio.AioRpcError:
                    failures += 1
                slowest = max(slowest, time.monotonic() - started)
                peak = max(peak, rss())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)
                slowest = max(slowest, time.monotonic() - started - 0.02)  # a stalled loop shows here too
                busiest = max(busiest, time.thread_time() - cpu)

        prober = asyncio.create_task(probe())
        status, events, metadata = None, 0, []
        try:
            if rpc == "StreamMessage":
                call = stub.StreamMessage(stream_request(body()), timeout=30)
                async for response in call:
                    events += len(response.events)
            else:
                call = stub.CreateMessage(create_request(body()), timeout=30)
                await call
            metadata = [(k, v) for k, v in (await call.initial_metadata() or ())]
        except grpc.aio.AioRpcError as err:
            status = status_of(err)
            metadata = [(k, str(v)) for k, v in (err.initial_metadata() or ())]
        finally:
            done.set()
            await prober
        return Outcome(status, events, metadata, slowest, busiest, failures, max(0, peak - base))


def healthy(outcome: Outcome) -> None:
    """Health answered every check, and no work held the event loop for long between two answers.

    How long is counted in CPU seconds of the loop's thread, not in wall time: on a busy machine every
    wait grows (for a core, for the GIL a converting thread holds: 1.3 s between answers was measured with
    two busy loops beside the suite), but the loop's own work does not. Work that belongs off the loop
    (converting an event of a million numbers) puts seconds of CPU there (3 s measured); what stays on it
    (the test's client decoding a 10 MiB reply) about 0.2 s."""
    print(
        f"slowest health check {outcome.slowest_health * 1e3:.1f} ms, busiest loop {outcome.busiest_loop * 1e3:.1f}"
        f" ms of CPU between two answers, RSS growth {outcome.rss_growth >> 10} KiB"
    )
    assert outcome.health_failures == 0, outcome
    assert outcome.busiest_loop < 0.5, outcome


async def endless_line(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
    """200, message_start, then one `data:` line that never ends (64 KiB writes until the client leaves)."""
    await up.send(writer, head(200, **SSE_HEAD) + sse("message_start", MESSAGE_START) + b"event: ping\ndata: ")
    block = b"a" * 65536
    while True:
        await up.send(writer, block)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_data_line_that_never_ends_is_cut_at_max_event_bytes_with_memory_bounded_and_health_answering(
    transport: str,
) -> None:
    """An endless `data:` line ends the call RESOURCE_EXHAUSTED / UPSTREAM_EVENT_TOO_LARGE near the bound."""

    async def go() -> None:
        async with Hostile(endless_line) as up, aimed_at(up, max_event_bytes=1 << 20, http_client=transport) as gw:
            outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "UPSTREAM_EVENT_TOO_LARGE"
            assert outcome.events == 1  # message_start was delivered before the cut
            await up.gone.wait()
            assert up.written < 16 << 20, up.written  # the bound plus socket buffers, not the endless rest
            print(f"upstream wrote {up.written >> 10} KiB before the call ended")
            assert outcome.rss_growth < 48 << 20, outcome.rss_growth
            healthy(outcome)

    run(go)


@pytest.mark.parametrize("trickle", [b": still here\n\n", b"a"], ids=["comments", "a-line-byte-by-byte"])
def test_bytes_that_complete_no_event_do_not_keep_a_stream_alive(trickle: bytes) -> None:
    """Comments, or an endless line in small pieces, every 20 ms end the call UPSTREAM_IDLE_TIMEOUT."""

    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(200, **SSE_HEAD) + sse("message_start", MESSAGE_START))
        if trickle == b"a":
            await up.send(writer, b"event: ping\ndata: ")
        while True:
            await up.send(writer, trickle)
            await asyncio.sleep(0.02)

    async def go() -> None:
        async with Hostile(answer) as up, aimed_at(up, idle_timeout=0.5) as gw:
            started = time.monotonic()
            outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "UPSTREAM_IDLE_TIMEOUT"
            assert time.monotonic() - started < 15  # the idle bound ended it, not the call's 30 s deadline
            assert outcome.events == 1
            healthy(outcome)

    run(go)


def test_framer_cost_is_linear_in_the_bytes_of_one_long_event() -> None:
    """32 MiB of one event fed in 4 KiB reads is framed in well under two seconds (re-copying would take minutes)."""
    from server.call.events import SseFramer

    framer = SseFramer(max_event_bytes=64 << 20)
    started = time.process_time()
    assert framer.feed(b"event: ping\ndata: ") == []
    chunk = b"x" * 4096
    for _ in range((32 << 20) // 4096):
        assert framer.feed(chunk) == []
    ((name, data),) = framer.feed(b"\n\n")
    assert (name, len(data)) == ("ping", 32 << 20)
    assert time.process_time() - started < 2.0


def compressed(status: int, inflated: int) -> Answer:
    bomb = gzip.compress(b"\0" * inflated, compresslevel=9)  # made here, not on the gateway's event loop

    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(status, content_type="text/event-stream", content_encoding="gzip") + bomb)

    return answer


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [200, 500])
def test_a_compressed_body_is_refused_without_inflating_it(transport: str, status: int) -> None:
    """A gzip body (64 MiB inflated) is refused FAILED_PRECONDITION / UPSTREAM_COMPRESSED; identity was asked."""

    answer = compressed(status, 64 << 20)

    async def go() -> None:
        async with Hostile(answer) as up, aimed_at(up, http_client=transport) as gw:
            outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.FAILED_PRECONDITION
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "UPSTREAM_COMPRESSED"
            assert up.requests[0].headers.get("accept-encoding") == "identity"
            assert outcome.rss_growth < 32 << 20, outcome.rss_growth
            healthy(outcome)

    run(go)


@functools.cache
def numbers_reply() -> tuple[bytes, ...]:
    """A valid stream whose tool_use input is a list of a million numbers (2 MiB of JSON, 11 MiB as a proto),
    in the four writes the upstream makes. Made once, before the call: making it is not the gateway's work."""
    block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1] * 1_000_000}}
    stop = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}
    return (
        head(200, **SSE_HEAD) + sse("message_start", MESSAGE_START),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", stop) + sse("message_stop", {"type": "message_stop"}),
    )


async def numbers(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
    """The stream of ``numbers_reply``."""
    for part in numbers_reply():
        await up.send(writer, part)


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
def test_an_event_that_takes_seconds_to_convert_does_not_stall_health_or_other_calls(rpc: str) -> None:
    """A 2 MiB event of a million numbers is converted off the event loop: health answers throughout.
    Catches a conversion (JSON parse, proto, the message's accumulation) done on the event loop."""
    numbers_reply()

    async def go() -> None:
        async with Hostile(numbers) as up, aimed_at(up) as gw:
            outcome = await call_through(gw, rpc)
            assert outcome.status is None, outcome.status
            healthy(outcome)

    run(go)


async def huge_error(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
    """HTTP 500 whose body never ends."""
    await up.send(writer, head(500, content_type="application/json") + b'{"type":"error","error":{"message":"')
    block = b"b" * 65536
    while True:
        await up.send(writer, block)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_endless_error_body_is_read_only_to_max_error_body_bytes(transport: str) -> None:
    """A 500 with an endless body ends UNAVAILABLE after reading about GATEWAY_MAX_ERROR_BODY_BYTES of it."""

    async def go() -> None:
        async with Hostile(huge_error) as up, aimed_at(up, http_client=transport, max_attempts=1) as gw:
            outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.UNAVAILABLE
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.metadata["http_status"] == "500"
            await up.gone.wait()
            assert up.written < 16 << 20, up.written
            print(f"upstream wrote {up.written >> 10} KiB of its error body before the call ended")
            assert outcome.rss_growth < 32 << 20, outcome.rss_growth
            healthy(outcome)

    run(go)


def echoing(where: str) -> Answer:
    """An upstream that hands back the key it was sent, ``where`` the test says."""

    async def answer(up: Hostile, request: Request, writer: asyncio.StreamWriter) -> None:
        authorization = request.headers["authorization"]  # "Bearer <key>"
        key = authorization.removeprefix("Bearer ")
        if where == "error body":
            error = {"type": "error", "error": {"type": "authentication_error", "message": f"bad key {key}"}}
            data = json.dumps({**error, "request_id": f"req_{key}"}).encode()
            await up.send(writer, head(401, content_type="application/json", request_id=key) + data)
        else:
            await up.send(writer, head(200, content_type="text/event-stream", request_id=f"req_{key}"))
            await up.send(writer, sse("message_start", MESSAGE_START))
            said = f"Authorization: {authorization}"
            error = {"type": "error", "error": {"type": "overloaded_error", "message": said}}
            await up.send(writer, sse("error", {**error, "request_id": key}))

    return answer


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
@pytest.mark.parametrize("where", ["error body", "error event"])
def test_a_key_echoed_by_the_upstream_reaches_neither_the_caller_nor_the_log(
    where: str, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The key echoed in an error message or request id header is redacted or dropped everywhere; in an error
    event (a read of the reply's body) it ends the call with UPSTREAM_ECHOED_SECRET, the event not passed on."""
    caplog.set_level(logging.INFO)

    async def go() -> Outcome:
        async with Hostile(echoing(where)) as up, aimed_at(up, max_attempts=1) as gw:
            return await call_through(gw, rpc)

    outcome = run(go)
    assert outcome.status is not None
    if where == "error body":
        assert outcome.status.code == grpc.StatusCode.UNAUTHENTICATED
        assert "[REDACTED]" in outcome.status.message
    else:
        assert outcome.status.code == grpc.StatusCode.DATA_LOSS
        assert outcome.status.error_info is not None
        assert outcome.status.error_info.reason == "UPSTREAM_ECHOED_SECRET"
    assert [r for r in caplog.records if r.name == "server.call"], "the call log was not captured"
    seen = repr(outcome) + caplog.text
    assert API_KEY not in seen
    assert API_KEY[4:20] not in seen  # nor a recognisable piece of it
    assert outcome.status.error_info is not None
    assert "request_id" not in outcome.status.error_info.metadata
    assert not [v for k, v in outcome.metadata if k == "anthropic-request-id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_redirect_to_another_origin_is_not_followed(transport: str) -> None:
    """A 307 elsewhere ends FAILED_PRECONDITION / UPSTREAM_REDIRECTED; the prompt never reaches the other origin."""

    async def nothing(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(200, **SSE_HEAD))

    async def go() -> None:
        async with Hostile(nothing) as elsewhere:

            async def redirect(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
                await up.send(writer, head(307, location=f"{elsewhere.url}/v1/messages", content_length="0"))

            async with Hostile(redirect) as up, aimed_at(up, http_client=transport) as gw:
                outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.FAILED_PRECONDITION
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "UPSTREAM_REDIRECTED"
            assert len(up.requests) == 1
            assert elsewhere.requests == []

    run(go)


def nested(levels: int) -> dict[str, object]:
    """A JSON object nested ``levels`` deep (itself the first)."""
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def deep_after_three(kind: str) -> Answer:
    """message_start, a text block's start and a delta, then, in the same network read, an event (or an error
    event) nested ``kind`` deep."""
    first = sse("message_start", MESSAGE_START) + sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
    if kind == "error-5000":
        bad = ("event: error\ndata: " + '{"type":"error","error":' * 5000 + "{}" + "}" * 5000 + "\n\n").encode()
    elif kind == "delta-5000":
        bad = ("event: ping\ndata: " + '{"type":"ping","a":' * 5000 + "{}" + "}" * 5000 + "\n\n").encode()
    else:  # 40 levels: JSON parses it, but protobuf decoders (100 levels, 3 per object) could not take it
        block = {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "f"},
        }
        block["content_block"]["input"] = nested(38)  # type: ignore[index]
        bad = sse("content_block_start", block)

    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(200, **SSE_HEAD) + first + sse("content_block_delta", delta) + bad)

    return answer


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
@pytest.mark.parametrize("kind", ["delta-5000", "error-5000", "protobuf-40"])
def test_upstream_json_nested_too_deep_is_data_loss_after_the_events_before_it(kind: str, rpc: str) -> None:
    """An event (or error event) nested 5,000 levels, or deeper than a protobuf decoder goes, ends the call
    DATA_LOSS / UPSTREAM_MALFORMED_EVENT (it was INTERNAL from a RecursionError), after the three events read
    with it were delivered (they were lost); the gateway serves on."""

    async def go() -> None:
        async with Hostile(deep_after_three(kind)) as up, aimed_at(up, max_attempts=1) as gw:
            outcome = await call_through(gw, rpc)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.DATA_LOSS, outcome.status
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "UPSTREAM_MALFORMED_EVENT"
            assert outcome.events == (3 if rpc == "StreamMessage" else 0)
            healthy(outcome)

    run(go)


def series(page: str) -> int:
    """The number of time series on a Prometheus page."""
    return sum(1 for line in page.splitlines() if line and not line.startswith("#"))


def test_distinct_upstream_error_types_do_not_grow_the_metrics(caplog: pytest.LogCaptureFixture) -> None:
    """An upstream that names a new error type in every answer: past the first calls the metrics page holds
    no more series (they are `other`, beside the API's known types), while the log line keeps each real
    type. LABEL_FLOOD sets the number of calls (200 by default; 5,000 for the figure in docs/operations.md:
    113,369 series and a 20 MB page before)."""
    caplog.set_level(logging.INFO, logger="server.call")
    calls = int(os.environ.get("LABEL_FLOOD", "200"))
    sent = 0

    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        sent += 1
        error = {"type": "error", "error": {"type": f"brand_new_{sent}_error", "message": "no"}}
        await up.send(writer, head(400, content_type="application/json") + json.dumps(error).encode())

    async def go() -> tuple[int, int, int]:
        async with Hostile(answer) as up, aimed_at(up, max_attempts=1, metrics_listen="127.0.0.1:0") as gw:
            assert gw.metrics is not None
            url = f"http://127.0.0.1:{gw.metrics.port}/metrics"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)

                async def one() -> None:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.CreateMessage(create_request(body()), timeout=10)

                for _ in range(10):
                    await one()
                early = series(await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode()))
                for _ in range(calls - 10):
                    await one()
                page = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
                return early, series(page), len(page)

    early, late, size = run(go)
    print(f"after {calls} distinct upstream error types: {late} series, a {size / 1024:.1f} KiB /metrics page")
    assert late == early
    logged = {json.loads(r.getMessage())["reason"] for r in caplog.records if r.name == "server.call"}
    assert len([reason for reason in logged if reason.startswith("BRAND_NEW_")]) == calls


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON: NaN and Infinity literals are errors (as in every parser but Python's)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1099511627776", "-5", "1.5"])
def test_usage_out_of_bounds_is_marked_invalid_never_priced_and_never_written_as_nan(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream whose message_start reports ``input_tokens`` as NaN, an infinity, 2**40, a negative or a
    fraction: the reply is served on gRPC (both RPCs), Connect and the Messages API, and every usage report
    (trailer, header, log line) is strict JSON with the usage marked invalid and its cost unknown (2**40
    tokens used to report a $3.3M call, NaN an `"input_tokens":NaN` no JSON parser reads)."""
    caplog.set_level(logging.INFO, logger="server.call")
    start = json.dumps(MESSAGE_START).replace('"input_tokens": 3', f'"input_tokens": {value}')
    assert value in start
    reply = (
        f"event: message_start\ndata: {start}\n\n".encode()
        + sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        + sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        )
        + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
        )
        + sse("message_stop", {"type": "message_stop"})
    )

    async def answer(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
        await up.send(writer, head(200, **SSE_HEAD) + reply)

    async def go() -> list[str]:
        reports = []
        async with Hostile(answer) as up, aimed_at(up, max_attempts=1, http_listen="127.0.0.1:0") as gw:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                stream = stub.StreamMessage(stream_request(body()), timeout=10)
                assert [e async for r in stream for e in r.events][-1].WhichOneof("type") == "message_stop"
                reports.append(dict(await stream.trailing_metadata())[USAGE_KEY])
                unary = stub.CreateMessage(create_request(body()), timeout=10)
                await unary
                reports.append(dict(await unary.trailing_metadata())[USAGE_KEY])
            url = f"http://127.0.0.1:{gw.http_port}"
            async with aiohttp.ClientSession() as session:
                connect = json_format.MessageToDict(create_request(body()))
                async with session.post(f"{url}/claude_gateway.v1.ChatService/CreateMessage", json=connect) as r:
                    assert r.status == 200, await r.text()
                    strict_json(await r.text())
                    reports.append(r.headers[f"trailer-{USAGE_KEY}"])
                async with session.post(f"{url}/v1/messages", json=body()) as r:
                    assert r.status == 200, await r.text()
                    strict_json(await r.text())
                    reports.append(r.headers[USAGE_KEY])
        return reports

    for report in run(go):
        usage = strict_json(report)
        assert usage["usage_invalid"].startswith("input_tokens "), usage
        assert usage["cost_usd"] is None
        assert "input_tokens" not in usage["usage"]
    lines = [strict_json(r.getMessage()) for r in caplog.records if r.name == "server.call"]
    ends = [(line["status"], line["cost_usd"], line["usage_invalid"] is not None) for line in lines]
    assert ends == [("OK", None, True)] * 4


def relaying_the_key(split: bool) -> Answer:
    """An upstream that puts the key it was sent in the reply's text, in one write or split across two."""

    async def answer(up: Hostile, request: Request, writer: asyncio.StreamWriter) -> None:
        key = request.headers["authorization"].removeprefix("Bearer ")
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        said = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "the key is"}}
        await up.send(
            writer, head(200, **SSE_HEAD) + sse("message_start", MESSAGE_START) + sse("content_block_start", block)
        )
        await up.send(writer, sse("content_block_delta", said))
        leak = sse("content_block_delta", {**said, "delta": {"type": "text_delta", "text": f" {key} ok"}})
        cut = leak.index(key.encode()) + len(key) // 2
        for part in (leak[:cut], leak[cut:]) if split else (leak,):
            await up.send(writer, part)
        await up.send(writer, sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        await up.send(writer, sse("message_stop", {"type": "message_stop"}))

    return answer


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "split-across-writes"])
def test_the_key_in_the_reply_is_never_relayed_and_ends_the_call(split: bool, caplog: pytest.LogCaptureFixture) -> None:
    """An upstream that writes the gateway's API key into the reply's content (whole, or cut in two writes):
    on gRPC (both RPCs), Connect and the Messages API (streamed and whole) the call ends DATA_LOSS /
    UPSTREAM_ECHOED_SECRET (the Messages API: an `api_error`), the events of the reads before it delivered,
    and no piece of the key reaches the caller or the log (it used to be relayed as text)."""
    caplog.set_level(logging.INFO)

    async def go() -> list[bytes]:
        got: list[bytes] = []
        async with (
            Hostile(relaying_the_key(split)) as up,
            aimed_at(up, max_attempts=1, http_listen="127.0.0.1:0") as gw,
        ):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                stream = stub.StreamMessage(stream_request(body()), timeout=10)
                events = []
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for response in stream:
                        events.extend(response.events)
                got.append(b"".join(e.SerializeToString() for e in events))
                for error in (caught.value, await raised(stub.CreateMessage(create_request(body()), timeout=10))):
                    status = status_of(error)
                    assert status.code == grpc.StatusCode.DATA_LOSS, status
                    assert status.error_info is not None
                    assert status.error_info.reason == "UPSTREAM_ECHOED_SECRET"
                    got.append(repr(status).encode())
            url = f"http://127.0.0.1:{gw.http_port}"
            async with aiohttp.ClientSession() as session:
                connect = json_format.MessageToDict(create_request(body()))
                async with session.post(f"{url}/claude_gateway.v1.ChatService/CreateMessage", json=connect) as r:
                    got.append(await r.read())
                    assert (await r.json())["code"] == "data_loss"
                for stream_it in (True, False):
                    async with session.post(f"{url}/v1/messages", json={**body(), "stream": stream_it}) as r:
                        got.append(await r.read())
                        assert b"api_error" in got[-1], got[-1]
        return got

    got = b"".join(run(go))
    key = API_KEY.encode()
    for piece in (key, key[: len(key) // 2], key[len(key) // 2 :]):
        assert piece not in got
        assert piece.decode() not in caplog.text
    logged = [json.loads(r.getMessage())["reason"] for r in caplog.records if r.name == "server.call"]
    assert logged == ["UPSTREAM_ECHOED_SECRET"] * 5


async def raised(call: Any) -> grpc.aio.AioRpcError:
    """The error an awaited call ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def long_overloaded_error(up: Hostile, _: Request, writer: asyncio.StreamWriter) -> None:
    """A 529 whose error body is longer than GATEWAY_MAX_ERROR_BODY_BYTES: the gateway reads a cut of it."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy " * 40_000}}
    await up.send(writer, head(529, content_type="application/json") + json.dumps(error).encode())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cut_error_body_keeps_its_error_type(transport: str) -> None:
    """An error body cut at GATEWAY_MAX_ERROR_BODY_BYTES is no longer JSON, but its error type leads it: the
    call still ends as that type (UNAVAILABLE / OVERLOADED_ERROR on gRPC, 529 `overloaded_error` on the
    Messages API) instead of a bare HTTP_529."""

    async def go() -> None:
        settings = {"http_client": transport, "max_attempts": 1, "http_listen": "127.0.0.1:0"}
        async with Hostile(long_overloaded_error) as up, aimed_at(up, **settings) as gw:
            outcome = await call_through(gw)
            assert outcome.status is not None
            assert outcome.status.code == grpc.StatusCode.UNAVAILABLE
            assert outcome.status.error_info is not None
            assert outcome.status.error_info.reason == "OVERLOADED_ERROR", outcome.status
            assert outcome.status.error_info.metadata["error_type"] == "overloaded_error"
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"http://127.0.0.1:{gw.http_port}/v1/messages", json=body()) as r,
            ):
                assert r.status == 529
                assert (await r.json())["error"]["type"] == "overloaded_error"

    run(go)
