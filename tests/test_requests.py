"""Caller input that cannot be sent upstream gets INVALID_ARGUMENT with a BadRequest naming the field,
before anything is sent, on both RPCs; the access log says what the client saw."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import json_format

from tests.harness import body, gateway, run, status_of

Change = Callable[[pb.StreamMessageRequest], None]


def params() -> pb.MessageCreateParams:
    return codec.from_json(body(), pb.MessageCreateParams())


def raw_block(text: str) -> Change:
    def change(request: pb.StreamMessageRequest) -> None:
        message = request.params.messages[0]
        message.ClearField("content_text")
        message.content.add().raw_json.json = text

    return change


def system_citation(text: str) -> Change:
    def change(request: pb.StreamMessageRequest) -> None:
        block = request.params.system.add(text="be brief")
        block.citations.add().raw_json.json = text

    return change


def extra(value: float) -> Change:
    def change(request: pb.StreamMessageRequest) -> None:
        request.params.extra.update({"brand_new": {"score": [1.0, value]}})

    return change


def container(value: float) -> Change:
    def change(request: pb.StreamMessageRequest) -> None:
        request.params.container.number_value = value

    return change


def beta(value: str) -> Change:
    def change(request: pb.StreamMessageRequest) -> None:
        request.betas.extend(["files-api-2025-04-14", value])

    return change


DEEP = '{"type": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}"
NESTED_65 = '{"type": "x", "a": ' + "[" * 64 + "]" * 64 + "}"
RAW = "params.messages[0].content[0].raw_json.json"
CITATION = "params.system[0].citations[0].raw_json.json"

CASES: list[tuple[str, Change, str]] = [
    ("nan-in-extra-struct", extra(float("nan")), "params.extra"),
    ("infinity-in-extra-struct", extra(float("inf")), "params.extra"),
    ("nan-in-container-value", container(float("nan")), "params.container"),
    ("minus-infinity-in-container-value", container(float("-inf")), "params.container"),
    ("raw-json-nested-100000-deep", raw_block(DEEP), RAW),
    ("raw-json-nested-past-the-limit", raw_block(NESTED_65), RAW),
    ("raw-json-nan-literal", raw_block('{"type": "x", "v": NaN}'), RAW),
    ("raw-json-infinity-literal", raw_block('{"type": "x", "v": -Infinity}'), RAW),
    ("raw-json-number-overflowing-to-infinity", raw_block('{"type": "x", "v": 1e999}'), RAW),
    ("raw-json-lone-surrogate", raw_block('{"type": "x", "v": "\\ud800"}'), RAW),
    ("raw-json-lone-surrogate-in-a-key", raw_block('{"type": "x", "\\udc00": 1}'), RAW),
    ("system-citation-raw-json-malformed", system_citation("{not json"), CITATION),
    ("system-citation-raw-json-nan", system_citation('{"type": "x", "v": NaN}'), CITATION),
    ("beta-with-crlf", beta("a\r\nx-injected: 1"), "betas[1]"),
    ("beta-with-lf", beta("a\nb"), "betas[1]"),
    ("beta-with-nul", beta("a\0b"), "betas[1]"),
    ("beta-with-space", beta("a b"), "betas[1]"),
    ("beta-with-comma", beta("a,b"), "betas[1]"),
    ("beta-empty", beta(""), "betas[1]"),
    ("beta-non-ascii", beta("bêta"), "betas[1]"),
]


@pytest.mark.parametrize(("change", "field"), [pytest.param(c, f, id=n) for n, c, f in CASES])
def test_request_that_cannot_be_sent_upstream_gets_invalid_argument_naming_the_field(
    change: Change, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both RPCs answer INVALID_ARGUMENT with the field in BadRequest; nothing reaches the upstream."""
    caplog.set_level(logging.INFO, logger="server.call")
    request = pb.StreamMessageRequest(params=params())
    change(request)

    async def go() -> None:
        async with gateway() as h:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in h.stub.StreamMessage(request, timeout=10):
                    pass
            check(caught.value)
            unary = pb.CreateMessageRequest(params=request.params, betas=request.betas)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.stub.CreateMessage(unary, timeout=10)
            check(caught.value)
            assert h.sim.requests == []

    def check(error: grpc.aio.AioRpcError) -> None:
        status = status_of(error)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
        assert status.bad_request is not None
        assert [v.field for v in status.bad_request.field_violations] == [field]

    run(go)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.call"]
    assert [(line["status"], line["reason"]) for line in lines] == [("INVALID_ARGUMENT", "INVALID_REQUEST")] * 2


def test_valid_betas_and_deep_but_allowed_raw_json_go_upstream() -> None:
    """Betas that are header tokens and raw JSON nested to the limit pass and reach the upstream."""
    allowed = '{"type": "x", "a": ' + "[" * 62 + "]" * 62 + "}"
    request = pb.StreamMessageRequest(params=params(), betas=["files-api-2025-04-14", "context-1m-2025-08-07"])
    request.params.messages[0].ClearField("content_text")
    request.params.messages[0].content.add().text.text = "hi"
    request.params.messages[0].content.add().raw_json.json = allowed

    async def go() -> None:
        async with gateway() as h:
            events = [e async for r in h.stub.StreamMessage(request, timeout=10) for e in r.events]
            assert events[-1].WhichOneof("type") == "message_stop"
            (sent,) = h.sim.requests
            assert sent.headers["anthropic-beta"] == "files-api-2025-04-14,context-1m-2025-08-07"

    run(go)


LONG = "claude-" + "x" * 20_000


def long_model(request: dict[str, Any]) -> None:
    request["model"] = LONG


def model_with_a_newline(request: dict[str, Any]) -> None:
    request["model"] = "claude-sonnet-4-6\nx-injected: 1"


def long_role(request: dict[str, Any]) -> None:
    request["messages"][0]["role"] = LONG


STRINGS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("model-of-20000-characters", long_model, "params.model"),
    ("model-with-a-newline", model_with_a_newline, "params.model"),
    ("role-of-20000-characters", long_role, "params.messages[0].role"),
]


@pytest.mark.parametrize(("change", "field"), [pytest.param(c, f, id=n) for n, c, f in STRINGS])
def test_caller_strings_are_bounded_before_they_are_repeated_anywhere(
    change: Callable[[dict[str, Any]], None], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 20,000-character (or header-unsafe) model name or role gets INVALID_ARGUMENT naming the field on
    gRPC (with grpc's default metadata limit: the trailers stay small, where a repeated name used to make
    the client see RESOURCE_EXHAUSTED), on Connect and on the Messages API; nothing reaches the upstream,
    and no log line repeats the value (a 1 MB model name used to write a 1 MB line)."""
    caplog.set_level(logging.INFO, logger="server.call")
    request = body()
    change(request)
    grpc_request = pb.StreamMessageRequest(params=codec.from_json(request, pb.MessageCreateParams()))

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0") as h:
            url = f"http://127.0.0.1:{h.gateway.http_port}"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in h.stub.StreamMessage(grpc_request, timeout=10):
                    pass
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
            assert status.bad_request is not None
            assert [v.field for v in status.bad_request.field_violations] == [field]
            assert len(status.message) < 512
            async with aiohttp.ClientSession() as session:
                connect = json_format.MessageToDict(grpc_request)
                async with session.post(f"{url}/claude_gateway.v1.ChatService/CreateMessage", json=connect) as reply:
                    answer = await reply.json()
                    assert (reply.status, answer["code"]) == (400, "invalid_argument"), answer
                    assert len(await reply.read()) < 2048
                async with session.post(f"{url}/v1/messages", json=request) as reply:
                    answer = await reply.json()
                    assert (reply.status, answer["error"]["type"]) == (400, "invalid_request_error"), answer
                    assert len(await reply.read()) < 2048
            assert h.sim.requests == []

    run(go)
    lines = [r.getMessage() for r in caplog.records if r.name == "server.call"]
    assert [(json.loads(line)["status"], json.loads(line)["reason"]) for line in lines] == [
        ("INVALID_ARGUMENT", "INVALID_REQUEST")
    ] * 3
    assert max(len(line) for line in lines) < 2048
    assert "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in caplog.text
