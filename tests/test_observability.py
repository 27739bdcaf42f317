"""Usage trailers, the call log line, the metrics endpoint and traces, on real streams through the simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from claude_gateway import AsyncGateway, GatewayError, codec
from claude_gateway.usage import CallUsage, from_metadata
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1.chat_pb2_grpc import ChatServiceStub
from claude_gateway.wire import USAGE_KEY
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from server.config import Settings
from server.reporting.metrics import Metrics
from server.reporting.record import CallRecord
from server.reporting.usage import Usage
from server.supervisor import metrics_listen_of_worker
from simulator import Cut, ErrorEvent, HttpError, Pace, Replay, Stall
from tests.harness import PROCESS_TIMEOUT, ROOT, Harness, body, deployed, gateway, run, status_of, stream_request, until
from tests.pools import Pools

FIXTURE = ROOT / "tests/fixtures/sse/own_server_tool_cache_usage.sse"
# The fixture's usage, merged: message_start's input side, message_delta's cumulative totals.
FIXTURE_USAGE = {
    "input_tokens": 2100,
    "cache_creation_input_tokens": 1500,
    "cache_read_input_tokens": 4000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
    "output_tokens": 95,
    "service_tier": "standard",
    "server_tool_use": {"web_search_requests": 1},
}
FIXTURE_TOKENS = {"input": 2100, "output": 95, "cache_read": 4000, "cache_write_5m": 1000, "cache_write_1h": 500}
# claude-sonnet-4-6: (2100 x 3 + 95 x 15 + 1000 x 3.75 + 500 x 6 + 4000 x 0.30) / 1e6, and one web search at $10 a
# thousand.
FIXTURE_COST = 0.025675
MODEL = "claude-sonnet-4-6"
HELLO: list[Any] = [{"role": "user", "content": "Hello gateway"}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(h: Harness | Pools) -> Samples:
    """Every sample the gateway's /metrics endpoint serves now (a harness's, or a pool's gateway)."""
    assert h.gateway.metrics is not None
    url = f"http://127.0.0.1:{h.gateway.metrics.port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    samples: Samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def stream_with_trailer(h: Harness, request_body: dict[str, Any]) -> tuple[list[dict[str, Any]], CallUsage]:
    call = h.stub.StreamMessage(stream_request(request_body), timeout=10)
    events = [codec.to_json(e) async for r in call for e in r.events]
    trailer = list(await call.trailing_metadata())
    assert [k for k, _ in trailer].count(USAGE_KEY) == 1
    usage = from_metadata(trailer)
    assert usage is not None
    return events, usage


def calls(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.call"]


def test_a_stream_reports_its_merged_usage_and_cost_once_in_the_trailer() -> None:
    """StreamMessage and CreateMessage end OK with one usage trailer: the merged usage, its exact cost, not partial."""

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(FIXTURE.read_bytes()))
            events, usage = await stream_with_trailer(h, body())
            assert events[-1]["type"] == "message_stop"
            assert (usage.model, usage.usage, usage.cost_usd, usage.partial) == (
                MODEL,
                FIXTURE_USAGE,
                FIXTURE_COST,
                False,
            )

            h.sim.enqueue(Replay(FIXTURE.read_bytes()))
            unary = h.stub.CreateMessage(pb.CreateMessageRequest(params=stream_request(body()).params), timeout=10)
            await unary
            trailer = list(await unary.trailing_metadata())
            assert [k for k, _ in trailer].count(USAGE_KEY) == 1
            assert from_metadata(trailer) == CallUsage(MODEL, FIXTURE_USAGE, FIXTURE_COST, False)

    run(go)


@pytest.mark.parametrize(
    ("fault", "settings", "code", "reason"),
    [
        (Cut(after_events=5), {}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_CONNECTION_LOST"),
        (Stall(after_events=4), {"idle_timeout": 0.3}, grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_IDLE_TIMEOUT"),
    ],
)
def test_a_failed_stream_reports_its_partial_usage_in_the_trailer_beside_its_status(
    fault: Any, settings: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    """A stream cut upstream or by the watchdog ends with its status details and a usage trailer marked partial."""

    async def go() -> None:
        async with gateway(**settings) as h:
            h.sim.enqueue(fault)
            events: list[dict[str, Any]] = []
            call = h.stub.StreamMessage(stream_request(body()), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for response in call:
                    events.extend(codec.to_json(e) for e in response.events)
            status = status_of(caught.value)
            assert (status.code, status.error_info and status.error_info.reason) == (code, reason)
            trailer = list(caught.value.trailing_metadata())
            assert [k for k, _ in trailer].count(USAGE_KEY) == 1
            usage = from_metadata(trailer)
            assert usage is not None
            assert usage.partial
            assert usage.usage == events[0]["message"]["usage"]  # what message_start said, nothing more
            assert usage.cost_usd is not None
            assert usage.cost_usd > 0

    run(go)


def test_the_client_library_streams_and_errors_carry_the_usage_trailer() -> None:
    """AsyncGateway's finished stream and its GatewayError keep the trailers from_metadata reads."""

    async def go() -> None:
        async with gateway() as h, AsyncGateway(h.target) as client:
            h.sim.enqueue(Replay(FIXTURE.read_bytes()))
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
                await stream.until_done()
            assert from_metadata(stream.trailing_metadata) == CallUsage(MODEL, FIXTURE_USAGE, FIXTURE_COST, False)
            h.sim.enqueue(Cut(after_events=5))
            with pytest.raises(GatewayError) as failed:
                async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
                    await stream.until_done()
            usage = from_metadata(failed.value.trailing_metadata)
            assert usage is not None
            assert usage.partial
            assert usage.input_tokens > 0

    run(go)


def test_a_refused_call_reports_zero_usage_at_zero_cost() -> None:
    """A call refused before anything went upstream ends with an empty, partial usage that cost nothing."""

    async def go() -> None:
        async with gateway() as h:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in h.stub.StreamMessage(stream_request(body(max_tokens=0)), timeout=10):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert from_metadata(caught.value.trailing_metadata()) == CallUsage(MODEL, {}, 0.0, True)

    run(go)


def test_an_unpriced_model_counts_its_tokens_and_reports_its_cost_unknown() -> None:
    """A model missing from the price table gets a null cost in the trailer, never zero, and its tokens are counted."""

    async def go() -> None:
        async with gateway(served_models={"claude-unlisted-1"}, metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            events, usage = await stream_with_trailer(h, body(model="claude-unlisted-1"))
            after = await scrape(h)
            assert usage.cost_usd is None
            assert usage.output_tokens == events[-2]["usage"]["output_tokens"] > 0
            assert moved(before, after, "gateway_unpriced_calls_total", model="claude-unlisted-1") == 1
            assert moved(before, after, "gateway_tokens_total", model="claude-unlisted-1", type="output") == (
                usage.output_tokens
            )
            assert moved(before, after, "gateway_cost_usd_total") == 0

    run(go)


def test_a_stream_moves_each_token_and_cost_counter_by_exactly_its_usage() -> None:
    """Two streams of known usage move each token counter, the cost, calls, events and TTFT count by exactly theirs."""

    async def go() -> None:
        async with gateway(metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            relayed = 0
            for _ in range(2):
                h.sim.enqueue(Replay(FIXTURE.read_bytes()))
                events, _ = await stream_with_trailer(h, body())
                relayed += len(events)
            after = await scrape(h)
            who = {"model": MODEL, "caller": "anonymous"}
            for kind, count in FIXTURE_TOKENS.items():
                assert moved(before, after, "gateway_tokens_total", type=kind, **who) == 2 * count, kind
                genai = {"gen_ai_request_model": MODEL, "gen_ai_token_type": kind}
                assert moved(before, after, "gen_ai_client_token_usage_sum", **genai) == 2 * count, kind
                assert moved(before, after, "gen_ai_client_token_usage_count", **genai) == 2, kind
            assert moved(before, after, "gateway_cost_usd_total", **who) == 2 * FIXTURE_COST
            ok = {"method": "StreamMessage", "model": MODEL, "status": "OK", "reason": ""}
            assert moved(before, after, "gateway_calls_total", **ok) == 2
            assert moved(before, after, "gateway_relayed_events_total", method="StreamMessage") == relayed
            assert moved(before, after, "gateway_upstream_bytes_total") == 2 * FIXTURE.stat().st_size
            assert moved(before, after, "gen_ai_server_time_to_first_token_seconds_count") == 2
            assert moved(before, after, "gen_ai_server_request_duration_seconds_count", error_type="") == 2
            assert moved(before, after, "gen_ai_server_time_per_output_token_seconds_count") == 2
            assert value(after, "gateway_active_streams") == 0

    run(go)


def test_time_to_first_token_is_taken_at_the_first_content_delta_not_the_first_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With message_start at once and the first text delta 0.3 s later, TTFT is observed once, at 0.3 s or more."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with gateway(Pace(ttft=0.3), metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            await h.events(body())
            after = await scrape(h)
            ttft = "gen_ai_server_time_to_first_token_seconds_bucket"
            assert moved(before, after, ttft, le="0.25") == 0
            assert moved(before, after, ttft, le="+Inf") == 1
            assert calls(caplog)[-1]["ttft_ms"] >= 300

    run(go)


def test_a_cancelled_stream_is_counted_as_cancelled_with_its_partial_usage(caplog: pytest.LogCaptureFixture) -> None:
    """A client's cancel mid-stream counts a streaming-phase cancellation, logs CANCELLED, counts the tokens so far."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50), metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            call = h.stub.StreamMessage(stream_request(body("[[sim:tokens 500]]")), timeout=30)
            events: list[dict[str, Any]] = []
            async for response in call:
                events.extend(codec.to_json(e) for e in response.events)
                if len(events) >= 6:
                    break
            call.cancel()
            await until(lambda: len(calls(caplog)) == 1)
            after = await scrape(h)
            line = calls(caplog)[0]
            start_usage = events[0]["message"]["usage"]
            assert (line["status"], line["reason"], line["partial"]) == ("CANCELLED", "CLIENT_CANCELLED", True)
            assert line["usage"] == start_usage
            assert moved(before, after, "gateway_cancellations_total", method="StreamMessage", phase="streaming") == 1
            cancelled = {"status": "CANCELLED", "reason": "CLIENT_CANCELLED"}
            assert moved(before, after, "gateway_calls_total", **cancelled) == 1
            for kind, key in (("input", "input_tokens"), ("output", "output_tokens")):
                assert moved(before, after, "gateway_tokens_total", type=kind) == start_usage[key]
            assert moved(before, after, "gen_ai_server_time_per_output_token_seconds_count") == 0

    run(go)


def test_retries_and_upstream_errors_are_counted_by_type(caplog: pytest.LogCaptureFixture) -> None:
    """A retried 529 counts one retry and one upstream error; a mid-stream error event counts one more, as final."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with gateway(metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            h.sim.enqueue(HttpError(529, "overloaded_error", retry_after=0))
            await h.events(body())
            h.sim.enqueue(ErrorEvent(after_events=3, error_type="api_error"))
            with pytest.raises(grpc.aio.AioRpcError):
                await h.events(body())
            after = await scrape(h)
            assert moved(before, after, "gateway_retries_total", reason="overloaded_error") == 1
            assert moved(before, after, "gateway_upstream_errors_total", type="overloaded_error") == 1
            assert moved(before, after, "gateway_upstream_errors_total", type="api_error") == 1
            assert moved(before, after, "gateway_calls_total", status="UNAVAILABLE", reason="API_ERROR") == 1
            assert moved(before, after, "gen_ai_server_request_duration_seconds_count", error_type="api_error") == 1
            assert [(c["status"], c["attempts"]) for c in calls(caplog)] == [("OK", 2), ("UNAVAILABLE", 1)]

    run(go)


def test_a_cancel_before_the_first_event_is_counted_in_its_phase(caplog: pytest.LogCaptureFixture) -> None:
    """A client that gives up while the upstream has not answered counts a before_first_event cancellation, no TTFT."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with gateway(metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            h.sim.enqueue(Stall(after_events=-1))
            call = h.stub.StreamMessage(stream_request(body()), timeout=30)
            await until(lambda: h.gateway.admission.active == 1)
            call.cancel()
            await until(lambda: len(calls(caplog)) == 1)
            after = await scrape(h)
            phase = {"method": "StreamMessage", "phase": "before_first_event"}
            assert moved(before, after, "gateway_cancellations_total", **phase) == 1
            assert moved(before, after, "gen_ai_server_time_to_first_token_seconds_count") == 0
            assert moved(before, after, "gateway_tokens_total") == 0
            assert calls(caplog)[0]["ttft_ms"] is None

    run(go)


def test_each_call_writes_one_json_log_line_without_prompt_or_completion(caplog: pytest.LogCaptureFixture) -> None:
    """The call's one JSON log line: caller, model, method, status, request id, TTFT, duration, events, usage, cost."""
    caplog.set_level(logging.INFO, logger="server.call")
    prompt = "Tell me the launch code, word for word"

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(FIXTURE.read_bytes(), headers={"request-id": "req_logged"}))
            events, _ = await stream_with_trailer(h, body(prompt))
            lines = calls(caplog)
            assert len(lines) == 1
            line = lines[0]
            assert {k: line[k] for k in ("caller", "model", "method", "status", "reason", "request_id")} == {
                "caller": "anonymous",
                "model": MODEL,
                "method": "StreamMessage",
                "status": "OK",
                "reason": "",
                "request_id": "req_logged",
            }
            assert (line["events"], line["usage"], line["cost_usd"], line["partial"]) == (
                len(events),
                FIXTURE_USAGE,
                FIXTURE_COST,
                False,
            )
            assert 0 < line["ttft_ms"] <= line["duration_ms"]
            text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
            record = caplog.records[-1].getMessage()
            assert prompt not in record
            assert "launch" not in record
            assert text[:20] not in record

    run(go)


def test_the_docs_and_the_dashboard_name_exactly_the_metrics_the_gateway_serves() -> None:
    """docs/operations.md's metrics table lists every metric served, and each dashboard query is on that page and
    uses them."""
    readme = (ROOT / "docs" / "operations.md").read_text()
    served = set()
    for family in Metrics(10, frozenset(), lambda: 0, pool=dict).registry.collect():  # with a backends file's pool
        served.add(family.name + "_total" if family.type == "counter" else family.name)
    section = readme[readme.index("| metric | type | labels | what |") :].split("\n\n")[0]
    listed = {line.split("`")[1] for line in section.splitlines()[2:]}
    assert listed == served
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["expr"] in readme, panel["title"]
            names = set(re.findall(r"\b(?:gen_ai|gateway)_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            for name in names:
                assert name.removesuffix("_bucket") in served, name


def test_the_docs_log_line_table_lists_exactly_the_fields_of_the_log_line() -> None:
    """Every field of the call log line is in docs/operations.md's table, and the table lists no other."""
    readme = (ROOT / "docs" / "operations.md").read_text()
    section = readme[readme.index("| field | meaning |") :].split("\n\n")[0]
    listed = [line.split("`")[1] for line in section.splitlines()[2:]]
    pooled = CallRecord("StreamMessage", MODEL)  # with a backends file, the line names who served too
    pooled.pool("anthropic", "-", "anthropic", [], None)
    assert listed == list(pooled.log_line())
    assert listed[: len(CallRecord("StreamMessage", MODEL).log_line())] == list(
        CallRecord("StreamMessage", MODEL).log_line()
    )


def test_each_worker_serves_its_metrics_on_a_port_of_its_own() -> None:
    """With GATEWAY_WORKERS, worker N serves metrics on the set port plus N - 1; port 0 stays 0."""
    assert [metrics_listen_of_worker("0.0.0.0:9464", n) for n in (1, 2, 3)] == [
        "0.0.0.0:9464",
        "0.0.0.0:9465",
        "0.0.0.0:9466",
    ]
    assert metrics_listen_of_worker("127.0.0.1:0", 2) == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, ""),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "http://collector:4317"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}, "http://traces:4317"),
        (
            {"GATEWAY_OTLP_ENDPOINT": "http://mine:4317", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
            "http://mine:4317",
        ),
    ],
)
def test_tracing_turns_on_with_the_gateway_setting_or_opentelemetrys_own_variables(
    env: dict[str, str], endpoint: str
) -> None:
    """GATEWAY_OTLP_ENDPOINT wins; without it the standard OTLP endpoint variables turn tracing on; else it is off."""
    assert Settings.from_env(env).otlp_endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"GATEWAY_METRICS_LISTEN": "9464"}, "GATEWAY_METRICS_LISTEN='9464' has no port"),
        ({"GATEWAY_METRICS_MAX_CALLERS": "0"}, "GATEWAY_METRICS_MAX_CALLERS must be at least 1"),
    ],
)
def test_bad_metrics_settings_are_refused_by_name(env: dict[str, str], complaint: str) -> None:
    """A metrics address without a port, or a caller cap below one, stops start-up naming the variable."""
    with pytest.raises(ValueError, match=complaint):
        Settings.from_env(env)


def free_port_pair() -> int:
    """A port p such that p and p + 1 are both free on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two adjacent free ports")


def test_two_workers_each_serve_metrics_that_add_up_to_every_call() -> None:
    """With GATEWAY_WORKERS=2 each worker serves /metrics on its own port; their call counts sum to the calls made."""
    port = free_port_pair()
    with deployed(GATEWAY_WORKERS="2", GATEWAY_METRICS_LISTEN=f"127.0.0.1:{port}") as (proc, target):

        async def go() -> None:
            for _ in range(8):  # a connection of its own each time, spread over the workers by the kernel
                async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    async for _ in ChatServiceStub(ch).StreamMessage(stream_request(body()), timeout=10):
                        pass

        run(go)
        totals = []
        for worker_port in (port, port + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=5) as response:
                text = response.read().decode()
            totals.append(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "gateway_calls_total"
                )
            )
        assert sum(totals) == 8, totals
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=PROCESS_TIMEOUT)
        assert proc.returncode == 0


def test_metrics_are_off_unless_a_port_is_set() -> None:
    """By default the gateway serves no metrics endpoint."""

    async def go() -> None:
        async with gateway() as h:
            assert h.gateway.metrics is None

    run(go)


def test_without_tracing_neither_the_opentelemetry_sdk_nor_an_exporter_is_loaded() -> None:
    """A gateway that served a call with tracing off has loaded no OpenTelemetry SDK, exporter or tracing module."""
    check = (
        "import asyncio, sys\n"
        "from tests.harness import body, gateway\n"
        "async def go():\n"
        "    async with gateway() as h:\n"
        "        assert h.gateway.tracing is None\n"
        "        await h.events(body())\n"
        "asyncio.run(go())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'server.reporting.tracing'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver on loopback: keeps every exported span."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, port
    finally:
        await server.stop(None)


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = (
            getattr(kv.value, kind) if kind != "array_value" else [v.string_value for v in kv.value.array_value.values]
        )
    return out


def test_a_call_continues_the_callers_trace_into_a_server_span_and_an_upstream_child_span() -> None:
    """With an OTLP endpoint set, the caller's traceparent parents the call's span, which parents the upstream span."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def go() -> None:
        async with collector() as (received, port), gateway(otlp_endpoint=f"http://127.0.0.1:{port}") as h:
            h.sim.enqueue(Replay(FIXTURE.read_bytes(), headers={"request-id": "req_traced"}))
            call = h.stub.StreamMessage(
                stream_request(body()), timeout=10, metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),)
            )
            async for _ in call:
                pass
            assert h.gateway.tracing is not None
            await asyncio.to_thread(h.gateway.tracing.flush)
            await until(lambda: len(received.spans) >= 2)
            by_kind = {span.kind: span for span in received.spans}
            server, client = by_kind[trace_pb2.Span.SPAN_KIND_SERVER], by_kind[trace_pb2.Span.SPAN_KIND_CLIENT]
            assert server.trace_id.hex() == client.trace_id.hex() == trace_id
            assert server.parent_span_id.hex() == parent_id
            assert client.parent_span_id == server.span_id
            assert server.name == client.name == f"chat {MODEL}"
            attrs = attributes(client)
            assert {k: attrs[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")} == {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": MODEL,
            }
            assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (2100, 95)
            assert attrs["gen_ai.usage.cache_read.input_tokens"] == 4000
            assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 1500
            assert attrs["gen_ai.response.id"] == "msg_own_search"
            assert attrs["gen_ai.response.finish_reasons"] == ["end_turn"]
            assert attrs["anthropic.request_id"] == "req_traced"
            assert attributes(server)["rpc.method"] == "StreamMessage"

    run(go)


def test_a_call_served_by_another_model_is_priced_and_counted_by_the_model_that_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request naming claude-haiku-4-5 that claude-sonnet-4-6 serves (message_start says so) costs Sonnet's
    price, not Haiku's: in the trailer, the log line and the cost metric; the GenAI metrics carry both models."""
    caplog.set_level(logging.INFO, logger="server.call")
    asked, served = "claude-haiku-4-5", "claude-sonnet-4-6"

    async def go() -> None:
        async with gateway(metrics_listen="127.0.0.1:0") as h:
            before = await scrape(h)
            events, usage = await stream_with_trailer(h, body(f"[[sim:model {served}]] hello", model=asked))
            after = await scrape(h)
            assert events[0]["message"]["model"] == served
            table = h.gateway.prices
            merged = Usage()
            for event in events:
                merged.observe(event["type"], event)
            assert usage.usage == merged.values
            price_served, price_asked = table.cost(served, merged), table.cost(asked, merged)
            assert price_served is not None
            assert price_asked is not None
            assert price_served > price_asked > 0
            assert usage.cost_usd == pytest.approx(price_served)
            (line,) = calls(caplog)
            assert (line["model"], line["response_model"], line["cost_usd"]) == (asked, served, usage.cost_usd)
            assert moved(before, after, "gateway_cost_usd_total", model=served) == pytest.approx(price_served)
            assert moved(before, after, "gateway_cost_usd_total", model=asked) == 0
            both = {"gen_ai_request_model": asked, "gen_ai_response_model": served, "gen_ai_token_type": "output"}
            assert moved(before, after, "gen_ai_client_token_usage_sum", **both) == usage.output_tokens

    run(go)
