"""The benchmark's measuring parts, checked for what they count, never for how fast anything is."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import grpc
import pytest
from claude_gateway.v1 import chat_pb2 as pb

from bench import conversion, floor, prices, telemetry
from bench.calls import Samples, StreamRecord, gateway_request, read_gateway, read_sdk, stream_method
from bench.jobs import Clients, Job
from bench.report import Row, ms, table
from bench.scenarios import schedule
from bench.sockets import unread_by_remote_port
from bench.stamps import stamp_frame, stamp_of, stamps_in, upstream_closes
from bench.stats import percentile, summarize
from bench.upstream import StampingConnection, records
from bench.usage import cpu_seconds, rss_bytes
from bench.workload import body, tag_of
from server.app import build_server
from server.call import events
from server.config import Settings
from simulator import Simulator
from simulator.directives import parse
from simulator.sse import frame

TEXT_DELTA = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " word"}}


def test_stamp_survives_the_gateway_relay_path() -> None:
    """A stamped frame, framed and converted as the gateway does, carries the stamp in the gRPC bytes."""
    stamped = stamp_frame(frame(TEXT_DELTA, 2), now_ns=1234567890123456789)
    ((name, data),) = events.SseFramer().feed(stamped)
    response = pb.StreamMessageResponse()
    events.fill_event(response.events.add(), events.parse(name, data), data)
    assert stamps_in(response.SerializeToString()) == [1234567890123456789]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "message_start", "message": {"id": "msg_1", "content": []}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}},
    ],
)
def test_stamp_frame_leaves_other_frames_alone(event: dict[str, Any]) -> None:
    """Only text deltas are stamped."""
    original = frame(event, 0)
    assert stamp_frame(original, now_ns=1) == original


def test_stamp_of_reads_an_sdk_delta_text() -> None:
    """The SDK reader finds the stamp in a delta's text, and nothing in plain text."""
    assert stamp_of(" ts0000000000000000042") == 42
    assert stamp_of(" word") is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(map(float, range(1, 101))), 99, 99.0),
        (list(map(float, range(1, 101))), 100, 100.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    """Percentiles pick a sample, never interpolate."""
    assert percentile(values, q) == expected


def test_summary_of_nothing_is_nan_and_null_in_json() -> None:
    """An empty sample set summarizes to NaN, written as JSON null."""
    summary = summarize([])
    assert summary.n == 0
    assert math.isnan(summary.p99)
    assert summary.as_json()["p99"] is None
    assert ms(summary.p99) == "n/a"


def test_request_body_is_a_valid_simulator_prompt_and_keeps_its_tag() -> None:
    """The workload's directives parse, and its tag reads back."""
    request = body(500, 50, tag="cancel-7")
    prompt = request["messages"][0]["content"]
    directives = parse(prompt)
    assert (directives.tokens, directives.tokens_per_second) == (500, 50.0)
    assert tag_of(prompt) == "cancel-7"


def test_job_round_trips_through_json() -> None:
    """A job reaches its load client intact."""
    job = Job("streams", target="127.0.0.1:1", streams=3, tokens=5, tps=50.0, record=False)
    assert Job.from_json(job.to_json()) == job


def _record(deltas: int, first_stamp: int, last_stamp: int, last_ns: int) -> dict[str, Any]:
    return {"deltas": deltas, "first_stamp": first_stamp, "last_stamp": last_stamp, "last_ns": last_ns}


def test_schedule_tells_late_streams_from_a_late_simulator() -> None:
    """A stream is behind when its last delta arrives late; the simulator is late when it sent late."""
    s = 1_000_000_000
    on_time = _record(11, 0, 1 * s, 1 * s)  # 11 deltas at 10/s: 1 s long
    delivered_late = _record(11, 0, 1 * s, 2 * s)
    sent_late = _record(11, 0, 2 * s, 2 * s)
    result = schedule([on_time, delivered_late, sent_late], tps=10)
    assert (result["behind"], result["sim_late"]) == (2, 1)
    assert result["worst_lag_s"] == pytest.approx(1.0)


def test_process_readings_of_this_process() -> None:
    """Readings of the running test are plausible, its CPU time the one Python reads for itself."""
    before, mine = cpu_seconds(os.getpid()), time.process_time()
    sum(range(2_000_000))  # some CPU between the readings
    assert cpu_seconds(os.getpid()) - before == pytest.approx(time.process_time() - mine, rel=0.05, abs=1e-3)
    assert rss_bytes(os.getpid()) > 1024 * 1024


def test_a_childs_cpu_time_counts_its_ended_threads_and_is_finer_than_a_tick() -> None:
    # The child works in a thread that ends, then says its own process CPU time and waits, using none.
    code = "import threading, time\nt = threading.Thread(target=lambda: sum(range(3_000_000)))\nt.start(); t.join()\n"
    code += "print(time.process_time(), flush=True)\nimport sys; sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        own = float(child.stdout.readline())
        used = cpu_seconds(child.pid)
        assert own <= used <= own + 0.005  # what the child reads for itself, its ended thread's work in
        assert used != round(used, 2)  # nanoseconds, not ticks (a whole tick: one chance in ten million)
    finally:
        child.communicate("")
    with pytest.raises(OSError, match="Invalid argument"):  # reaped: no such clock
        cpu_seconds(child.pid)


def test_unread_bytes_are_counted_by_remote_port() -> None:
    """Bytes sent to a socket that does not read them show up under the sender's port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            peer, _ = server.accept()
            with peer:
                peer.sendall(b"x" * 5000)
                for _ in range(100):  # loopback delivers at once, but allow the kernel a moment
                    if unread_by_remote_port((port,))[port] >= 5000:
                        break
                    time.sleep(0.01)
                assert unread_by_remote_port((port,))[port] >= 5000
                client.recv(65536)


def test_table_lists_rows_and_details() -> None:
    """The printed table has a header, one line per row, and each row's detail below."""
    text = table([Row("1a", "measure", "1 ms", "< 2 ms", "pass", "some detail")])
    lines = text.splitlines()
    assert lines[0].split() == ["#", "measure", "result", "target", "/", "baseline", "verdict"]
    assert lines[2].split()[0] == "1a"
    assert lines[-1] == "[1a] some detail"


@asynccontextmanager
async def _gateway() -> AsyncIterator[tuple[Simulator, str]]:
    async with Simulator(connection=StampingConnection) as sim:
        client = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="bench")
        gateway = await build_server(Settings(listen="127.0.0.1:0"), client)
        try:
            yield sim, f"127.0.0.1:{gateway.port}"
        finally:
            await gateway.close()


def test_gateway_reader_records_every_stamped_delta() -> None:
    """Through the gateway, every text delta arrives stamped and counted, with every event."""

    async def scenario() -> tuple[StreamRecord, Samples]:
        async with _gateway() as (_sim, target), grpc.aio.insecure_channel(target) as channel:
            record, samples = StreamRecord(), Samples(0)
            call = stream_method(channel)(gateway_request(body(20, 0)), timeout=10)
            await read_gateway(call, record, samples)
            return record, samples

    record, samples = asyncio.run(scenario())
    assert record.error is None
    assert record.deltas == 20
    assert len(samples.lat_us) == 20
    assert record.events == 20 + 6  # message_start, block start, ping, deltas, block stop, message_delta, stop
    assert all(latency >= 0 for latency in samples.lat_us)


def test_floor_writes_each_delta_stamped_in_its_own_message() -> None:
    """bench.floor answers the benchmark's request with the gateway's paced shape: a request id as
    initial metadata, opening events, one message per stamped text delta, closing events, in the API's order;
    and an unpaced reply in one message, as the gateway sends a reply that arrives at once."""

    async def scenario() -> tuple[StreamRecord, StreamRecord, list[str | None], str]:
        server, port = await floor.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                record, at_once = StreamRecord(), StreamRecord()
                paced = stream_method(channel)(gateway_request(body(7, 500)), timeout=10)
                await read_gateway(paced, record, Samples(0))
                unpaced = stream_method(channel)(gateway_request(body(3, 0)), timeout=10)
                await read_gateway(unpaced, at_once, Samples(0))
                stub_call = stream_method(channel)(gateway_request(body(2, 500)), timeout=10)
                kinds: list[str | None] = [
                    event.WhichOneof("type")
                    async for data in stub_call
                    for event in pb.StreamMessageResponse.FromString(data).events
                ]
                metadata = dict(await stub_call.initial_metadata())
                return record, at_once, kinds, str(metadata["anthropic-request-id"])
        finally:
            await server.stop(0)

    record, at_once, kinds, request_id = asyncio.run(scenario())
    assert (at_once.deltas, at_once.events, at_once.messages) == (3, 3 + 5, 1)
    assert request_id.startswith("req_floor")
    assert record.error is None
    assert (record.deltas, record.events, record.messages) == (7, 7 + 5, 7 + 2)
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_sdk_reader_records_every_stamped_delta() -> None:
    """Straight from the simulator with the SDK, the same deltas arrive stamped (pings are dropped)."""

    async def scenario() -> StreamRecord:
        async with _gateway() as (sim, _target):
            sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="bench", max_retries=0)
            record = StreamRecord()
            async with await sdk.messages.create(**body(20, 0), stream=True) as stream:
                await read_sdk(stream, record, Samples(0))
            await sdk.close()
            return record

    record = asyncio.run(scenario())
    assert record.error is None
    assert (record.deltas, record.events) == (20, 20 + 5)


def test_raw_reader_counts_every_event_of_a_reply() -> None:
    """Reading alone (row 2d) counts each event of the reply, the ping included, by its blank line."""

    async def scenario() -> StreamRecord:
        async with _gateway() as (sim, _target):
            clients = Clients([], None, aiohttp.ClientSession(auto_decompress=False), sim.base_url)
            record = StreamRecord()
            await clients.raw_stream(body(20, 0), record)
            await clients.close()
            return record

    record = asyncio.run(scenario())
    assert record.error is None
    assert record.events == 20 + 6


def test_cancelled_call_is_recorded_and_its_close_reaches_the_simulator_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call this client cancels is noted as CANCELLED, the simulator records when it closed, and the
    gateway's DEBUG line gives the moment it closed the upstream response, found by its request id."""
    caplog.set_level(logging.DEBUG, logger="server.upstream.client")

    async def scenario() -> tuple[StreamRecord, list[dict[str, Any]]]:
        async with _gateway() as (sim, target), grpc.aio.insecure_channel(target) as channel:
            record = StreamRecord()
            call = stream_method(channel)(gateway_request(body(1000, 50, tag="t1")), timeout=10)
            await read_gateway(call, record, Samples(0), until_deltas=2)
            call.cancel()
            await read_gateway(call, record, None)
            await sim.requests[-1].wait_closed(5)
            return record, records(sim)

    record, found = asyncio.run(scenario())
    assert record.error == "CANCELLED"
    (entry,) = found
    assert entry["tag"] == "t1"
    assert entry["closed_at"] is not None
    closed_ns = upstream_closes(caplog.text)[entry["request_id"]]
    assert closed_ns / 1e9 <= entry["closed_at"]  # the gateway closed it before the simulator saw it closed


def test_telemetry_timing_measures_every_figure() -> None:
    """bench.telemetry times per-event and per-call recording, with metrics off and on, as positive microseconds."""
    results = telemetry.measure(calls=20, repeats=1)
    assert len(results) == 5
    assert all(value > 0 for value in results.values())


def test_conversion_timing_measures_every_step() -> None:
    """bench.conversion times each step of the gateway's own work per event, and the per-call fills beside the
    codec, as positive microseconds."""
    results = conversion.measure(number=20, repeats=1)
    assert len(results) == 11
    assert all(value > 0 for value in results.values())


def test_price_timing_measures_every_figure_on_prices_that_agree() -> None:
    """bench.prices measures start-up and per-call pricing, positive, after checking that the gateway's price of
    its call equals genai-prices' own."""
    results = prices.measure(calls=20, repeats=1)
    assert len(results) == 4
    assert all(value > 0 for value in results.values())


def test_raw_reader_on_the_gateways_messages_api_counts_what_grpc_counts() -> None:
    """Row 9's two ways through one gateway: the raw reader on its /v1/messages counts every event that
    StreamMessage relays for the same reply."""

    async def scenario() -> tuple[StreamRecord, StreamRecord]:
        async with Simulator(connection=StampingConnection) as sim:
            client = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="bench")
            gateway = await build_server(Settings(listen="127.0.0.1:0", http_listen="127.0.0.1:0"), client)
            try:
                over_http = StreamRecord()
                url = f"http://127.0.0.1:{gateway.http_port}"
                clients = Clients([], None, aiohttp.ClientSession(auto_decompress=False), url)
                await clients.raw_stream(body(20, 0), over_http)
                await clients.close()
                over_grpc = StreamRecord()
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                    await read_gateway(
                        stream_method(channel)(gateway_request(body(20, 0)), timeout=10), over_grpc, None
                    )
                return over_http, over_grpc
            finally:
                await gateway.close()

    over_http, over_grpc = asyncio.run(scenario())
    assert over_http.error is None
    assert over_grpc.error is None
    assert over_http.events == over_grpc.events == 20 + 6
