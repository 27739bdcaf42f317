"""Generated and mutated requests thrown at a running gateway (processes, as deployed): none ends UNKNOWN or
INTERNAL, every INVALID_ARGUMENT names its fields, every OK stream ends with message_stop, and the
access log records exactly the statuses the clients saw.

``make test`` runs FUZZ_REQUESTS (default 200, a few seconds); ``make fuzz`` runs 10,000.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import struct_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn

from tests.harness import PROCESS_TIMEOUT, body, call_log, deployed

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "200"))
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)
SERVICE = "/claude_gateway.v1.ChatService/"

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    leaves,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=16,
)
raw_texts = st.one_of(
    json_values.map(lambda v: json.dumps({"type": "x", "v": v})),  # NaN and Infinity literals included
    st.text(max_size=40),
    st.integers(1, 5000).map(lambda n: '{"type": "x", "a": ' + "[" * n + "]" * n + "}"),
    st.sampled_from(['{"type": "x", "v": "\\ud83d"}', '{"type": "x", "v": 1e999}', "[]", '{"type": 1}', "", "{}"]),
)
betas = st.one_of(st.text(max_size=20), st.sampled_from(["files-api-2025-04-14", "a\r\nb", "a\0", "a,b"]))


def value_of(v: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": v})
    return holder.fields["v"]


Mutation = Callable[[DrawFn, pb.MessageCreateParams], None]


def _model(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.model = draw(st.text(max_size=40))


def _max_tokens(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.max_tokens = draw(st.integers(-(2**31), 2**31 - 1))


def _role(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    message = p.messages[0] if p.messages else p.messages.add(content_text="hi")
    message.role = draw(st.one_of(st.sampled_from(["user", "assistant"]), st.text(max_size=10)))


def _raw_block(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    message = p.messages[draw(st.integers(0, len(p.messages) - 1))] if p.messages else p.messages.add(role="user")
    message.ClearField("content_text")
    message.content.add().raw_json.json = draw(raw_texts)


def _text_block(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    message = p.messages[0] if p.messages else p.messages.add(role="user")
    if draw(st.booleans()):
        message.ClearField("content_text")
    message.content.add().text.text = draw(st.text(max_size=30))


def _message(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.messages.add(role=draw(st.sampled_from(["user", "assistant"])), content_text=draw(st.text(max_size=30)))


def _extra(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.extra.update({draw(st.text(max_size=12)): draw(json_values)})


def _container(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.container.CopyFrom(value_of(draw(json_values)))


def _system(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    block = p.system.add(text=draw(st.text(max_size=20)))
    if draw(st.booleans()):
        block.citations.add().raw_json.json = draw(raw_texts)


def _tool(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    tool = p.tools.add()
    if draw(st.booleans()):
        tool.raw_json.json = draw(raw_texts)
    else:
        tool.custom.name = draw(st.text(max_size=12))
        tool.custom.input_schema.update({"type": "object", "properties": draw(json_values)})


def _choice(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    (p.tool_choice if draw(st.booleans()) else p.thinking).raw_json.json = draw(raw_texts)


def _clear(draw: DrawFn, p: pb.MessageCreateParams) -> None:
    p.ClearField(draw(st.sampled_from(["model", "messages", "max_tokens"])))


MUTATIONS: list[Mutation] = [
    _model, _max_tokens, _role, _raw_block, _text_block, _message, _extra, _container, _system, _tool, _choice, _clear,
]  # fmt: skip


@st.composite
def requests(draw: DrawFn) -> tuple[str, bytes]:
    """A method and its request bytes: a valid request changed by up to four mutations, its bytes
    sometimes corrupted after that."""
    method = draw(st.sampled_from(["StreamMessage", "CreateMessage"]))
    params = codec.from_json(body(draw(st.text(max_size=30).filter(lambda t: "[[" not in t))), pb.MessageCreateParams())
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        mutation(draw, params)
    kind = pb.StreamMessageRequest if method == "StreamMessage" else pb.CreateMessageRequest
    data = bytearray(kind(params=params, betas=draw(st.lists(betas, max_size=3))).SerializeToString())
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):  # one request in five has corrupted bytes
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return method, bytes(data)


def check(err: grpc.RpcError) -> None:
    """A failed call's status is one a request may get: rich details, never UNKNOWN/INTERNAL/a hang, and
    the gateway's own INVALID_ARGUMENT with a BadRequest."""
    code = err.code()
    assert code not in NEVER, (code, err.details())
    status = rpc_status.from_call(err)
    assert status is not None, "a status without rich details"
    if code == grpc.StatusCode.INVALID_ARGUMENT and "INVALID_REQUEST" in str(status.details):
        assert "BadRequest" in str([d.type_url for d in status.details])


def test_generated_and_mutated_requests_never_end_unknown_or_internal() -> None:
    """FUZZ_REQUESTS generated requests: never UNKNOWN/INTERNAL/a hang; the access log matches the clients."""
    seen: Counter[tuple[str, str]] = Counter()
    with deployed("--ttft", "0", "--tps", "0", GATEWAY_LOG_LEVEL="INFO", GATEWAY_MAX_ATTEMPTS="1") as (gw, target):
        log: list[str] = []
        assert gw.stderr is not None
        reader = threading.Thread(target=lambda: log.extend(gw.stderr or ()), daemon=True)
        reader.start()  # the log is read while it is written, so the pipe never fills
        with grpc.insecure_channel(target) as channel:
            calls = {
                "StreamMessage": channel.unary_stream(SERVICE + "StreamMessage"),
                "CreateMessage": channel.unary_unary(SERVICE + "CreateMessage"),
            }

            @settings(
                max_examples=REQUESTS,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(requests())
            def one(request: tuple[str, bytes]) -> None:
                method, data = request
                failed: grpc.RpcError | None = None
                try:
                    if method == "StreamMessage":
                        replies = [pb.StreamMessageResponse.FromString(r) for r in calls[method](data, timeout=10)]
                        events = [e for r in replies for e in r.events]
                        assert events[-1].WhichOneof("type") == "message_stop"
                    else:
                        pb.CreateMessageResponse.FromString(calls[method](data, timeout=10))
                except grpc.RpcError as err:
                    failed = err
                seen[method, "OK" if failed is None else failed.code().name] += 1
                if failed is not None:
                    check(failed)

            one()
        gw.terminate()
        gw.wait(timeout=PROCESS_TIMEOUT)
        reader.join(timeout=10)
    logged = Counter((line["method"], line["status"]) for line in call_log("".join(log)))
    assert logged == seen, (logged, seen)
    assert not [line for line in log if "Traceback" in line or " ERROR " in line]
    assert sum(seen.values()) >= REQUESTS
    print(f"fuzz: {sum(seen.values())} requests, by method and status: {dict(sorted(seen.items()))}")
