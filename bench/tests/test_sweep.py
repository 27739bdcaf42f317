"""The public stream method's sweep (scenario 12): what its readers count and how a step is judged, never how
fast anything is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import grpc

from bench.calls import gateway_request, stream_method
from bench.report import table
from bench.session import Run
from bench.sockets import Backlog
from bench.sweep import Step, failed, markdown, rows, split, step, sustained, why
from bench.sweep_reads import Reading, read_grpc, read_http, read_sdk
from bench.upstream import StampingConnection
from bench.workload import body
from server.app import build_server
from server.config import Settings
from simulator import Simulator

MS = 1_000_000  # ns


def test_reading_notes_first_token_gaps_and_the_simulators_own_gaps() -> None:
    """Deltas received together make a zero gap; the simulator's gap comes from the stamps, the client's from
    receipt times."""
    reading = Reading(start_ns=100 * MS)
    reading.note(103 * MS, [101 * MS])
    reading.note(125 * MS, [121 * MS, 141 * MS])  # two deltas in one read: the second arrives with the first
    reading.note(200 * MS, [])  # nothing stamped in this read
    reading.note(210 * MS, [190 * MS])
    got = reading.as_json()
    assert got == {"ttft_us": 3000, "deltas": 4, "max_gap_us": 85000, "sim_max_gap_us": 49000, "error": None}
    assert reading.gaps_us == [22000, 0, 85000]


def test_a_stream_with_no_delta_has_no_first_token() -> None:
    assert Reading(start_ns=1).as_json()["ttft_us"] is None


@asynccontextmanager
async def _gateway() -> AsyncIterator[tuple[Simulator, str, str]]:
    """The stamping simulator and a gateway with its HTTP port on; yields them, its gRPC target and HTTP base URL."""
    async with Simulator(connection=StampingConnection) as sim:
        client = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="bench")
        gateway = await build_server(Settings(listen="127.0.0.1:0", http_listen="127.0.0.1:0"), client)
        try:
            yield sim, f"127.0.0.1:{gateway.port}", f"http://127.0.0.1:{gateway.http_port}"
        finally:
            await gateway.close()


def test_every_reader_counts_every_delta_of_a_paced_stream() -> None:
    """Through gRPC, through /v1/messages and straight with the SDK, a paced stream's every text delta is
    counted with its gap, and its first token noted."""
    request_body = body(6, 200)

    async def scenario() -> dict[str, Reading]:
        async with _gateway() as (sim, target, http):
            readings = {way: Reading(0) for way in ("grpc", "http", "sdk")}
            async with grpc.aio.insecure_channel(target) as channel:
                readings["grpc"].start_ns = time.monotonic_ns()
                await read_grpc(stream_method(channel)(gateway_request(request_body)), readings["grpc"])
            async with aiohttp.ClientSession() as session:
                readings["http"].start_ns = time.monotonic_ns()
                await read_http(session, f"{http}/v1/messages", request_body, readings["http"])
            sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="bench", max_retries=0)
            readings["sdk"].start_ns = time.monotonic_ns()
            await read_sdk(sdk, request_body, readings["sdk"])
            await sdk.close()
            return readings

    for way, reading in asyncio.run(scenario()).items():
        got = reading.as_json()
        assert got["error"] is None, way
        assert got["deltas"] == 6, way
        assert len(reading.gaps_us) == 5, way
        assert got["ttft_us"] is not None, way
        assert got["ttft_us"] > 0, way
        assert got["sim_max_gap_us"] > 0, way


def test_a_refused_stream_is_an_error_not_a_delta() -> None:
    """A stream the gateway refuses (an unknown model, on both ports) is noted as an error with no deltas."""
    request_body = {**body(3, 0), "model": "no-such-model"}

    async def scenario() -> tuple[Reading, Reading]:
        async with _gateway() as (_, target, http):
            over_grpc, over_http = Reading(0), Reading(0)
            async with grpc.aio.insecure_channel(target) as channel:
                await read_grpc(stream_method(channel)(gateway_request(request_body)), over_grpc)
            async with aiohttp.ClientSession() as session:
                await read_http(session, f"{http}/v1/messages", request_body, over_http)
            return over_grpc, over_http

    over_grpc, over_http = asyncio.run(scenario())
    assert over_grpc.error is not None
    assert over_grpc.deltas == 0
    assert over_http.error is not None
    assert over_http.error.startswith("HTTP 4")
    assert over_http.deltas == 0


def _run(streams: list[dict[str, Any]], gaps: list[int], *, load_cpu: float = 0.1, peak: float = 0.2) -> Run:
    return Run(
        results=[{"streams": streams, "gaps_us": gaps, "cpu_s": load_cpu / 2}],
        cpu={"gateway": {"cpu_s": 0.1, "util": 0.1}, "upstream": {"cpu_s": load_cpu / 2, "util": 0.05}},
        wall_s=1.0,
        gateway_peak=peak,
        background=0.0,
        backlog=Backlog(0, 0),
    )


def _stream(
    deltas: int, max_gap_us: int = 21000, sim_max_gap_us: int = 20500, error: str | None = None
) -> dict[str, Any]:
    return {
        "ttft_us": 800,
        "deltas": deltas,
        "max_gap_us": max_gap_us,
        "sim_max_gap_us": sim_max_gap_us,
        "error": error,
    }


def test_a_step_is_clean_only_with_every_chunk_and_no_stall() -> None:
    """Delivered counts every chunk of every stream; a stall is a gap over twice the interval, and the simulator
    owns it when its own stamps show the same gap."""
    clean = step(2, 2, 4, 0.020, _run([_stream(4)] * 4, [21000] * 12))
    assert clean.clean
    assert clean.fraction == 1.0
    assert clean.stalls == 0
    short = step(2, 2, 4, 0.020, _run([_stream(4)] * 3 + [_stream(1, error="UNAVAILABLE")], [21000] * 9))
    assert not short.clean
    assert short.fraction == 13 / 16
    assert short.errors == {"UNAVAILABLE": 1}
    stalled = step(
        2, 2, 4, 0.020, _run([_stream(4, 50000, 45000), _stream(4, 50000, 20000)] + [_stream(4)] * 2, [21000] * 12)
    )
    assert not stalled.clean
    assert stalled.stalls == 2
    assert stalled.sim_stalls == 1
    assert "the simulator itself sent late on 1 of the 2 stalled streams" in why(stalled, clean)


def test_sustained_is_the_last_step_of_an_unbroken_clean_run() -> None:
    def at(level: int, ok: bool) -> Step:
        streams = [_stream(4)] * level if ok else [_stream(4, 90000)] * level
        return step(level, 1, 4, 0.020, _run(streams, [21000] * 3 * level))

    assert sustained([at(1, True), at(8, True), at(32, False), at(128, True)]) == 8
    assert sustained([at(1, False), at(8, True)]) == 0


def test_rows_and_the_docs_table_come_from_the_same_steps() -> None:
    """Rows 12a/12b (with a row per step) and 12c, and the Markdown table made from their JSON."""
    levels = (1, 8)

    def steps(ttft_us: int) -> list[Step]:
        out = []
        for level in levels:
            streams = [{**_stream(4), "ttft_us": ttft_us}] * level
            out.append(
                step(level, 1, 4, 0.020, _run(streams, [21000] * 3 * level, load_cpu=0.95 if level == 8 else 0.1))
            )
        return out

    made = rows({"direct": steps(500), "grpc": steps(800), "http": steps(900)}, 4, 0.020)
    assert [r.key for r in made] == ["12a", "12a.1", "12a.8", "12b", "12b.1", "12b.8", "12c"]
    assert "added TTFT p50 +300 us" in made[0].result
    assert "sustained 8 streams" in made[0].result
    assert "added TTFT p50 +400 us" in made[3].result
    assert "12a.8" in table(made)
    report = {"rows": [{"key": r.key, "data": r.data} for r in made]}
    text = markdown(report)
    assert "| gRPC | 8 | +300 us / +300 us |" in text
    assert "| /v1/messages | 1 | +400 us / +400 us |" in text
    assert "| this gateway, gRPC | 1 core of an unknown CPU (2 cores), Python |" in text
    assert "StreamMessage` (Anthropic events as protobuf) | 300 us | 8 |" in text
    assert "| agentgateway (Rust) | 4 Graviton3 cores (m7g.2xlarge) |" in text


def test_a_step_that_could_not_run_is_a_failed_step_in_the_rows_and_the_table() -> None:
    """A step whose load client did not start is not clean, says why, and the docs' table still prints."""
    ok = step(1, 1, 4, 0.020, _run([_stream(4)], [21000] * 3))
    broken = failed(8, 32, "loadgen-sweep_sdk: no output within 30s")
    assert not broken.clean
    assert "not run: loadgen-sweep_sdk: no output within 30s" in why(broken, None)
    made = rows({"direct": [ok, broken], "grpc": [ok, ok], "http": [ok, broken]}, 4, 0.020)
    assert "sustained 1 streams" in made[3].result
    text = markdown({"rows": [{"key": r.key, "data": r.data} for r in made]})
    assert "| /v1/messages | 8 | n/a / n/a | n/a / n/a | 0.0% | 0 | n/a / n/a |" in text


def test_a_step_is_shared_over_as_few_readers_as_hold_it() -> None:
    assert split(1) == [1]
    assert split(512) == [512]
    assert split(1024) == [512, 512]
    assert split(1025) == [342, 342, 341]
