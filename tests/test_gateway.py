"""The core gateway end to end: real gRPC, real SDK, real HTTP simulator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anthropic
import grpc
import pytest
from claude_gateway import codec
from claude_gateway.client import create_request
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.app import build_server
from server.config import Settings
from server.upstream import failures
from simulator import EndWithoutStop, HttpError, Malformed, Replay, Simulator
from tests.corpus import SHARED, streams
from tests.harness import API_KEY, Status, body, fixture_events, gateway, run, sse_events, status_of, stream_request

COMPLETE = streams(complete=True)
INCOMPLETE = streams(complete=False)

GRAMMAR_ORDER = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta"]


async def raw_sse_events(sdk_base_url: str, request_body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events the simulator sends for a request, read as raw SSE without the gateway."""
    import httpx2

    headers = {"x-api-key": API_KEY, "anthropic-version": "2026-10-21"}
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{sdk_base_url}/v1/messages", json={**request_body, "stream": True}, headers=headers
        )
    frames = response.text.split("\n\n")
    return [json.loads(line[5:]) for f in frames for line in f.splitlines() if line.startswith("data:")]


def test_stream_relays_every_event_the_upstream_sends_in_order() -> None:
    """Every upstream event, pings included, reaches the client in order and unchanged."""

    async def go() -> None:
        async with gateway() as h:
            request_body = body("Tell me about gateways")
            direct = await raw_sse_events(h.sim.base_url, request_body)
            relayed = await h.events(request_body)
            assert [e["type"] for e in relayed] == [e["type"] for e in direct]
            assert "ping" in [e["type"] for e in relayed]
            for a, b in zip(relayed, direct, strict=True):
                a.get("message", {}).pop("id", None)
                b.get("message", {}).pop("id", None)
            assert relayed == direct

    run(go)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "tools": [
                {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
            ]
        },
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"stop_sequences": ["gateway"]},
        {"max_tokens": 3},
    ],
    ids=["text", "tool_use", "thinking", "stop_sequence", "max_tokens"],
)
def test_unary_create_equals_the_sdk_accumulation(extra: dict[str, Any]) -> None:
    """CreateMessage returns the same message as the SDK's stream helper on the same request."""

    async def go() -> None:
        async with gateway() as h:
            request_body = body("Hello gateway, please answer", **extra)
            params = codec.from_json(request_body, pb.MessageCreateParams())
            response = await h.stub.CreateMessage(pb.CreateMessageRequest(params=params), timeout=10)
            got = codec.to_json(response.message)
            async with h.sdk.messages.stream(**request_body) as sdk_stream:
                want = (await sdk_stream.get_final_message()).to_dict(mode="json", warnings=False)
            assert without_ids(got) == without_ids(want)

    run(go)


@pytest.mark.skipif(not os.environ.get("CI"), reason="the shared corpus is required in CI only")
def test_shared_corpus_is_present_in_ci() -> None:
    """CI always has ../shared: there the replays below must include the shared corpus, never skip it."""
    assert sorted(SHARED.glob("*.sse")), f"no recorded streams in {SHARED}: CI clones the project beside ../shared"


@pytest.mark.parametrize("path", COMPLETE)
def test_conformance_fixture_streams_rebuild_exactly(path: Any) -> None:
    """Each recorded stream replayed upstream reaches the client as exactly the same events."""

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(path.read_bytes()))
            relayed = await h.events(body())
            assert relayed == fixture_events(path)

    run(go)


def test_unknown_event_and_block_types_pass_through_whole() -> None:
    """Event, block and delta types the proto does not model arrive whole in raw_json arms."""
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        b'event: future_event\ndata: {"type":"future_event","payload":{"n":1.5,"list":[1,2]}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"hologram","frames":3}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"hologram_delta","frame":"AAA="}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null,"new_field":true},"usage":{"output_tokens":5}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(stream))
            call = h.stub.StreamMessage(stream_request(body()), timeout=10)
            protos = [e async for r in call for e in r.events]
            assert protos[1].raw_json.type == "future_event"
            assert json.loads(protos[1].raw_json.json) == {
                "type": "future_event",
                "payload": {"n": 1.5, "list": [1, 2]},
            }
            assert protos[2].content_block_start.content_block.raw_json.type == "hologram"
            assert protos[3].content_block_delta.delta.raw_json.type == "hologram_delta"
            assert [codec.to_json(p) for p in protos] == sse_events(stream)

    run(go)


def without_ids(value: Any) -> Any:
    """``value`` without "id" and "signature" keys: the simulator numbers them per request."""
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in ("id", "signature")}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


ERROR_TABLE = [
    (400, "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
    (401, "authentication_error", grpc.StatusCode.UNAUTHENTICATED),
    (402, "billing_error", grpc.StatusCode.FAILED_PRECONDITION),
    (403, "permission_error", grpc.StatusCode.PERMISSION_DENIED),
    (404, "not_found_error", grpc.StatusCode.NOT_FOUND),
    (409, "conflict_error", grpc.StatusCode.ABORTED),
    (413, "request_too_large", grpc.StatusCode.INVALID_ARGUMENT),
    (429, "rate_limit_error", grpc.StatusCode.RESOURCE_EXHAUSTED),
    (500, "api_error", grpc.StatusCode.UNAVAILABLE),
    (504, "timeout_error", grpc.StatusCode.UNAVAILABLE),
    (529, "overloaded_error", grpc.StatusCode.UNAVAILABLE),
    (418, "teapot_error", grpc.StatusCode.UNKNOWN),
]


@pytest.mark.parametrize(("http", "error_type", "code"), ERROR_TABLE, ids=[t[1] for t in ERROR_TABLE])
def test_upstream_http_errors_map_by_error_type(http: int, error_type: str, code: grpc.StatusCode) -> None:
    """An HTTP error before the stream becomes the mapped status with ErrorInfo and RetryInfo."""

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            h.sim.enqueue(HttpError(http, error_type, "simulated failure", retry_after=7))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body())
            status = status_of(caught.value)
            assert status.code == code
            assert status.error_info is not None
            assert status.error_info.metadata["error_type"] == error_type
            assert status.error_info.metadata["request_id"].startswith("req_")
            assert status.error_info.metadata["events_delivered"] == "0"
            assert status.retry_info is not None
            assert status.retry_info.retry_delay.seconds == 7
            assert "simulated failure" in status.message
            assert API_KEY not in status.message

    run(go)


@pytest.mark.parametrize("method", ["StreamMessage", "CreateMessage"])
def test_a_model_the_upstream_does_not_serve_is_not_found(method: str) -> None:
    """A typo in the model name (the simulator serves simulator/models.txt) is NOT_FOUND naming the model, untried."""

    async def go() -> Status:
        async with gateway() as h:
            request = body(model="claude-sonet-4-6")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if method == "StreamMessage":
                    await h.events(request)
                else:
                    await h.stub.CreateMessage(create_request(request), timeout=10)
            assert [r.status for r in h.sim.requests] == [404]  # a 404 is not retried
            return status_of(caught.value)

    status = run(go)
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert "model: claude-sonet-4-6" in status.message
    assert status.error_info is not None
    assert status.error_info.metadata["error_type"] == "not_found_error"
    assert status.retry_info is None


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (EndWithoutStop(after_events=5), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INCOMPLETE_STREAM"),
        (Malformed(after_events=3), grpc.StatusCode.DATA_LOSS, "UPSTREAM_MALFORMED_EVENT"),
    ],
    ids=["eof-without-message-stop", "malformed-frame"],
)
def test_broken_upstream_streams_end_with_a_distinct_status(fault: Any, code: grpc.StatusCode, reason: str) -> None:
    """A clean EOF before message_stop and a frame that is not JSON each end with their own status and reason."""

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(fault)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body())
            status = status_of(caught.value)
            assert status.code == code
            assert status.error_info is not None
            assert status.error_info.reason == reason

    run(go)


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"model": ""}, "params.model"),
    ({"max_tokens": -5}, "params.max_tokens"),
    ({"messages": []}, "params.messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "params.messages[0].role"),
]


def test_bad_requests_get_invalid_argument_naming_the_field_before_any_upstream_call() -> None:
    """Requests the API would reject for their shape never reach the upstream."""
    cases: list[tuple[pb.MessageCreateParams, str]] = []
    for change, field in BAD_REQUESTS:
        cases.append((codec.from_json({**body(), **change}, pb.MessageCreateParams()), field))
    empty_raw = codec.from_json(body(), pb.MessageCreateParams())
    empty_raw.messages[0].ClearField("content_text")
    empty_raw.messages[0].content.add().raw_json.json = ""
    cases.append((empty_raw, "params.messages[0].content[0].raw_json.json"))
    malformed_raw = codec.from_json(body(), pb.MessageCreateParams())
    malformed_raw.messages[0].ClearField("content_text")
    malformed_raw.messages[0].content.add().raw_json.json = "{not json"
    cases.append((malformed_raw, "params.messages[0].content[0].raw_json.json"))
    no_arm = codec.from_json(body(), pb.MessageCreateParams())
    no_arm.messages[0].ClearField("content_text")
    no_arm.messages[0].content.add()
    cases.append((no_arm, "params.messages[0].content[0]"))
    missing = pb.MessageCreateParams()
    cases.append((missing, "params.model"))

    async def go() -> None:
        async with gateway() as h:
            for params, field in cases:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await h.stub.CreateMessage(pb.CreateMessageRequest(params=params), timeout=5)
                check(caught.value, field)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in h.stub.StreamMessage(pb.StreamMessageRequest(params=params), timeout=5):
                        pass
                check(caught.value, field)
            assert h.sim.requests == []

    def check(error: grpc.aio.AioRpcError, field: str) -> None:
        status = status_of(error)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
        assert status.bad_request is not None
        assert field in [v.field for v in status.bad_request.field_violations], status.bad_request

    run(go)


def test_oversized_request_is_refused_by_the_message_limit() -> None:
    """A request above max_message_bytes is refused with RESOURCE_EXHAUSTED and the gateway keeps serving."""

    async def go() -> None:
        async with gateway(max_message_bytes=4096) as h:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body("x" * 10_000))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert [e["type"] for e in await h.events(body())][-1] == "message_stop"

    run(go)


def test_request_is_forwarded_as_the_same_json_body_with_stream_true() -> None:
    """The upstream receives exactly the caller's body plus "stream": true, and the beta header."""
    request_body = body(
        "Forward me",
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        metadata={"user_id": "u-1"},
        tools=[
            {
                "name": "lookup",
                "description": "d",
                "input_schema": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}},
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        output_config={"effort": "low"},
        service_tier="auto",
        brand_new_field={"nested": [1, None, "x"]},
    )

    async def go() -> None:
        async with gateway() as h:
            params = codec.from_json(request_body, pb.MessageCreateParams())
            call = h.stub.StreamMessage(pb.StreamMessageRequest(params=params, betas=["b1", "b2"]), timeout=10)
            async for _ in call:
                pass
            sent = h.sim.requests[-1]
            assert sent.body == {**request_body, "stream": True}
            assert sent.headers["anthropic-beta"] == "b1,b2"
            assert sent.headers["anthropic-version"] == "2026-10-21"

    run(go)


def test_health_serves_both_names_and_reflection_lists_the_services() -> None:
    """grpc.health.v1 answers SERVING for "" and the ChatService; reflection lists all services."""

    async def go() -> None:
        async with gateway() as h:
            health = health_pb2_grpc.HealthStub(h.channel)
            for name in ("", "claude_gateway.v1.ChatService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(h.channel)
            call = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            services = [s.name async for r in call for s in r.list_services_response.service]
            assert {"claude_gateway.v1.ChatService", "grpc.health.v1.Health"} <= set(services)

    run(go)


def nested_struct(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_undecodable_requests_get_invalid_argument_not_unknown() -> None:
    """Bytes that do not parse (bad UTF-8, nesting past protobuf's limit) get INVALID_ARGUMENT."""
    bad_utf8 = b"\x0a\x04\x0a\x02\xff\xfe"  # params { model: <invalid UTF-8> }
    too_deep = pb.StreamMessageRequest()
    too_deep.params.extra.update({"deep": nested_struct(150)})

    async def go() -> None:
        async with gateway() as h:
            call = h.channel.unary_stream(
                "/claude_gateway.v1.ChatService/StreamMessage",
                response_deserializer=pb.StreamMessageResponse.FromString,
            )
            for raw in (bad_utf8, too_deep.SerializeToString()):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in call(raw, timeout=5):
                        pass
                status = status_of(caught.value)
                assert status.code == grpc.StatusCode.INVALID_ARGUMENT
                assert status.bad_request is not None
                assert status.bad_request.field_violations[0].field == "request"
            assert (await h.events(body()))[-1]["type"] == "message_stop"
            assert len(h.sim.requests) == 1

    run(go)


def sse(*events: dict[str, Any]) -> bytes:
    """An SSE body in the API's wire form for these events."""
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def delta(index: int, kind: str, field: str, value: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: value}}


INTERLEAVED = sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_i",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "m",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    },
    delta(1, "input_json_delta", "partial_json", '{"ci'),
    delta(0, "text_delta", "text", "Hel"),
    delta(1, "input_json_delta", "partial_json", 'ty": "Oslo"}'),
    delta(0, "text_delta", "text", "lo"),
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
)


@pytest.mark.parametrize("stream", [pytest.param(INTERLEAVED, id="interleaved-blocks"), *COMPLETE])
def test_unary_create_equals_the_sdk_on_recorded_and_interleaved_streams(stream: bytes | Path) -> None:
    """CreateMessage over a replayed stream equals the SDK's final message for the same bytes."""
    stream = stream if isinstance(stream, bytes) else stream.read_bytes()

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(stream), Replay(stream))
            params = codec.from_json(body(), pb.MessageCreateParams())
            response = await h.stub.CreateMessage(pb.CreateMessageRequest(params=params), timeout=10)
            async with h.sdk.messages.stream(**body()) as sdk_stream:
                want = (await sdk_stream.get_final_message()).to_dict(mode="json", warnings=False)
            assert codec.to_json(response.message) == want

    run(go)


def test_gateway_without_credentials_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no API key anywhere, calls fail with FAILED_PRECONDITION naming the missing setting."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    async def go() -> None:
        async with Simulator() as sim:
            keyless = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=None, auth_token=None)
            gw = await build_server(Settings(listen="127.0.0.1:0"), keyless)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    call = chat_pb2_grpc.ChatServiceStub(channel).StreamMessage(stream_request(body()), timeout=5)
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call.read()
            finally:
                await gw.close()
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.FAILED_PRECONDITION
            assert status.error_info is not None
            assert status.error_info.reason == "GATEWAY_NOT_CONFIGURED"
            assert "ANTHROPIC_API_KEY" in status.message
            assert sim.requests == []

    run(go)


@pytest.mark.parametrize("path", INCOMPLETE)
def test_conformance_error_only_streams_end_with_their_status(path: Any) -> None:
    """A recorded stream that is only an `error` event ends with the status its error type maps to."""
    error_type = fixture_events(path)[-1]["error"]["type"]

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            h.sim.enqueue(Replay(path.read_bytes()))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body())
            status = status_of(caught.value)
            assert status.code == failures.API_ERRORS[error_type]
            assert status.error_info is not None
            assert status.error_info.metadata["error_type"] == error_type

    run(go)


def test_both_rpcs_return_the_upstream_request_id_as_initial_metadata() -> None:
    """Callers get the upstream request id (for Anthropic support) in `anthropic-request-id` metadata."""

    async def go() -> None:
        async with gateway() as h:
            params = codec.from_json(body(), pb.MessageCreateParams())
            stream = h.stub.StreamMessage(pb.StreamMessageRequest(params=params), timeout=10)
            unary = h.stub.CreateMessage(pb.CreateMessageRequest(params=params), timeout=10)
            await unary
            ids = [dict(await call.initial_metadata()).get("anthropic-request-id") for call in (stream, unary)]
            assert all(isinstance(i, str) and i.startswith("req_") for i in ids), ids
            assert ids[0] != ids[1]

    run(go)
