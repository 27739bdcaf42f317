"""Generated and mutated requests thrown at a running gateway (processes, as deployed) on both ports: gRPC, and
the HTTP port's Connect JSON and Messages API (``POST /v1/messages``). None ends UNKNOWN or INTERNAL (on the
HTTP port: no 500, no Connect ``internal`` or ``unknown``, no ``api_error``) or hangs, every gRPC INVALID_ARGUMENT
names its fields, every OK stream ends with message_stop, the access log records exactly the statuses the
clients saw, and the gateway's resident memory is back within 50 MB of its start after the run.

``make test`` runs FUZZ_REQUESTS (default 200, a few seconds) on each of the three; ``make fuzz`` runs 10,000
each and prints the figures: requests, statuses seen, resident memory at the start, at the peak and at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import json_format, struct_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn

from tests.harness import PROCESS_TIMEOUT, body, call_log, deployed
from tests.memory import free_port, rss, sampling

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "200"))
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)
NEVER_CONNECT = {"unknown", "internal", "deadline_exceeded"}
SERVICE = "/claude_gateway.v1.ChatService/"
MB = 1_000_000
RSS_SLACK = 50 * MB  # the gateway's resident memory after a run may exceed its start by less than this
TIMEOUT = 10.0  # seconds a call may take: a hang guard (an unpaced simulator answers in milliseconds)

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
def messages(draw: DrawFn) -> tuple[str, pb.StreamMessageRequest | pb.CreateMessageRequest]:
    """A method and its request: a valid request changed by up to four mutations."""
    method = draw(st.sampled_from(["StreamMessage", "CreateMessage"]))
    params = codec.from_json(body(draw(st.text(max_size=30).filter(lambda t: "[[" not in t))), pb.MessageCreateParams())
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        mutation(draw, params)
    kind = pb.StreamMessageRequest if method == "StreamMessage" else pb.CreateMessageRequest
    return method, kind(params=params, betas=draw(st.lists(betas, max_size=3)))


@st.composite
def corrupted(draw: DrawFn, data: bytes) -> bytes:
    """``data``, in one case in five with bytes flipped, cut off or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del out[at:]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


@st.composite
def requests(draw: DrawFn) -> tuple[str, bytes]:
    """A method and its request bytes, as gRPC carries them."""
    method, request = draw(messages())
    return method, draw(corrupted(request.SerializeToString()))


def containers(value: Any) -> list[Any]:
    """Every object and array in a JSON value."""
    found: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def json_bytes(draw: DrawFn, obj: dict[str, Any]) -> bytes:
    """``obj`` after up to three edits anywhere in it (a key set to any JSON value, NaN included, or removed;
    an array item replaced or added), as JSON text, sometimes with lone surrogates as raw bytes, then
    sometimes corrupted."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        target = draw(st.sampled_from(containers(obj)))
        if isinstance(target, dict):
            key = draw(st.one_of(st.sampled_from(sorted(target) or [""]), st.text(max_size=8)))
            if key in target and draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(json_values)
        elif target and draw(st.booleans()):
            target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
        else:
            target.append(draw(json_values))
    text = json.dumps(obj, allow_nan=True, ensure_ascii=draw(st.booleans()))
    return draw(corrupted(text.encode("utf-8", "surrogatepass")))


@st.composite
def connect_requests(draw: DrawFn) -> tuple[str, bytes]:
    """A method and its request as Connect JSON (proto JSON, edited and corrupted)."""
    method, request = draw(messages())
    try:
        obj = json_format.MessageToDict(request)
    except (ValueError, json_format.SerializeToJsonError):  # NaN or infinity in a Struct, which proto JSON
        reject()  # cannot spell (json_bytes adds them as literals)
    return method, json_bytes(draw, obj)


header_texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20)


@st.composite
def messages_api_requests(draw: DrawFn) -> tuple[bytes, dict[str, str]]:
    """A Messages API request body (the Anthropic JSON, ``stream`` of any type, edited and corrupted) and its
    headers (sometimes ``anthropic-beta``, of any Latin-1 text)."""
    method, request = draw(messages())
    try:
        obj = codec.to_json(request.params)
    except (ValueError, RecursionError):  # raw JSON nested past what json.loads goes (json_bytes can nest too)
        reject()
    stream = draw(st.one_of(st.just(method == "StreamMessage"), st.sampled_from([None, 1, "true"])))
    if stream is not None:
        obj["stream"] = stream
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    beta = draw(st.lists(header_texts, max_size=3))
    if beta:
        headers["anthropic-beta"] = ",".join(beta).strip()
    return json_bytes(draw, obj), headers


def check(err: grpc.RpcError) -> None:
    """A failed call's status is one a request may get: rich details, never UNKNOWN/INTERNAL/a hang, and
    the gateway's own INVALID_ARGUMENT with a BadRequest."""
    code = err.code()
    assert code not in NEVER, (code, err.details())
    status = rpc_status.from_call(err)
    assert status is not None, "a status without rich details"
    if code == grpc.StatusCode.INVALID_ARGUMENT and "INVALID_REQUEST" in str(status.details):
        assert "BadRequest" in str([d.type_url for d in status.details])


@dataclass
class Run:
    """A deployed gateway under fuzzing: its addresses, its log (read while it is written, so the pipe never
    fills), and what the clients saw."""

    target: str
    http: tuple[str, int]
    log: list[str]
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)


@contextlib.contextmanager
def fuzzing(label: str) -> Iterator[Run]:
    """A simulator and a gateway process with its HTTP port; after the body: the gateway stopped, no traceback
    or ERROR in its log, FUZZ_REQUESTS calls made, and its resident memory back within RSS_SLACK of its start
    (the figures printed)."""
    http_port = free_port()
    settings = {
        "GATEWAY_LOG_LEVEL": "INFO",
        "GATEWAY_MAX_ATTEMPTS": "1",
        "GATEWAY_HTTP_LISTEN": f"127.0.0.1:{http_port}",
    }
    with deployed("--ttft", "0", "--tps", "0", **settings) as (gw, target):
        run = Run(target, ("127.0.0.1", http_port), [])
        assert gw.stderr is not None
        reader = threading.Thread(target=lambda: run.log.extend(gw.stderr or ()), daemon=True)
        reader.start()
        start = rss(gw.pid)
        with sampling(gw.pid) as sampler:
            yield run
        end = rss(gw.pid)
        gw.terminate()
        gw.wait(timeout=PROCESS_TIMEOUT)
        reader.join(timeout=10)
    print(
        f"fuzz {label}: {sum(run.seen.values())} requests, by method and outcome: {dict(sorted(run.seen.items()))}; "
        f"gateway RSS start {start / MB:.1f} MB, peak {sampler.peak / MB:.1f} MB, end {end / MB:.1f} MB"
    )
    assert not [line for line in run.log if "Traceback" in line or " ERROR " in line]
    assert sum(run.seen.values()) >= REQUESTS
    assert end - start < RSS_SLACK, (start, sampler.peak, end)


def fuzzed(strategy: st.SearchStrategy[Any]) -> Callable[[Callable[[Any], None]], Callable[[], None]]:
    """``given(strategy)`` for FUZZ_REQUESTS examples, with no deadline, database or health checks."""
    return lambda test: settings(
        max_examples=REQUESTS, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )(given(strategy)(test))


def test_generated_and_mutated_requests_never_end_unknown_or_internal() -> None:
    """FUZZ_REQUESTS generated requests over gRPC: never UNKNOWN/INTERNAL/a hang; the access log matches the
    clients."""
    with fuzzing("gRPC") as run, grpc.insecure_channel(run.target) as channel:
        calls = {
            "StreamMessage": channel.unary_stream(SERVICE + "StreamMessage"),
            "CreateMessage": channel.unary_unary(SERVICE + "CreateMessage"),
        }

        @fuzzed(requests())
        def one(request: tuple[str, bytes]) -> None:
            method, data = request
            failed: grpc.RpcError | None = None
            try:
                if method == "StreamMessage":
                    replies = [pb.StreamMessageResponse.FromString(r) for r in calls[method](data, timeout=TIMEOUT)]
                    events = [e for r in replies for e in r.events]
                    assert events[-1].WhichOneof("type") == "message_stop"
                else:
                    pb.CreateMessageResponse.FromString(calls[method](data, timeout=TIMEOUT))
            except grpc.RpcError as err:
                failed = err
            run.seen[method, "OK" if failed is None else failed.code().name] += 1
            if failed is not None:
                check(failed)

        one()
    logged = Counter((line["method"], line["status"]) for line in call_log("".join(run.log)))
    assert logged == run.seen, (logged, run.seen)


@contextlib.contextmanager
def connection(address: tuple[str, int]) -> Iterator[http.client.HTTPConnection]:
    """A connection of its own for one request, so that no example inherits another's connection state."""
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT * 3)
    try:
        yield conn
    finally:
        conn.close()


def connect_call(address: tuple[str, int], method: str, data: bytes) -> str:
    """One Connect JSON call: the code it ended with, in gRPC's spelling (OK for a success)."""
    if method == "StreamMessage":
        headers = {"content-type": "application/connect+json", "connect-protocol-version": "1"}
        data = struct.pack(">BI", 0, len(data)) + data
    else:
        headers = {"content-type": "application/json"}
    headers["connect-timeout-ms"] = str(int(TIMEOUT * 1000))
    with connection(address) as conn:
        conn.request("POST", SERVICE + method, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    if method == "CreateMessage" or response.status != 200:
        reply = json.loads(raw)
        if response.status == 200:
            assert "message" in reply, reply
            return "OK"
        code = str(reply["code"])
        assert code not in NEVER_CONNECT, (response.status, reply)
        return code.upper()
    frames = []
    while raw:
        flags, size = struct.unpack(">BI", raw[:5])
        frames.append((flags, json.loads(raw[5 : 5 + size])))
        raw = raw[5 + size :]
    flags, end = frames[-1]
    assert flags & 2, frames[-1]  # the end-of-stream message comes last
    if "error" in end:
        code = str(end["error"]["code"])
        assert code not in NEVER_CONNECT, end
        return code.upper()
    events = [event for _, message in frames[:-1] for event in message.get("events", [])]
    assert "messageStop" in events[-1], events[-1]
    return "OK"


def test_generated_and_mutated_connect_json_never_ends_internal_or_unknown() -> None:
    """FUZZ_REQUESTS generated Connect JSON requests (edited JSON, corrupted text) at the HTTP port: never
    `internal`, `unknown` or a hang; the access log matches the clients."""
    with fuzzing("Connect JSON") as run:

        @fuzzed(connect_requests())
        def one(request: tuple[str, bytes]) -> None:
            method, data = request
            run.seen[method, connect_call(run.http, method, data)] += 1

        one()
    logged = Counter(
        (line["method"], line["status"].replace("CANCELLED", "CANCELED")) for line in call_log("".join(run.log))
    )
    assert logged == run.seen, (logged, run.seen)


def messages_api_call(address: tuple[str, int], data: bytes, headers: dict[str, str]) -> str:
    """One POST /v1/messages: its HTTP status and what ended it (a message, a stream's message_stop, or an
    error type), never a 500 or `api_error`."""
    with connection(address) as conn:
        conn.request("POST", "/v1/messages", body=data, headers={**headers, "x-stainless-timeout": str(TIMEOUT)})
        response = conn.getresponse()
        raw = response.read()
    if response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:")]
        last = events[-1]
        if last["type"] == "error":
            assert last["error"]["type"] != "api_error", last
            return f"200 stream error {last['error']['type']}"
        assert last["type"] == "message_stop", last
        return "200 stream"
    reply = json.loads(raw)
    if response.status == 200:
        assert reply["type"] == "message", reply
        return "200 message"
    assert response.status < 500 or response.status in (503, 529), (response.status, reply)
    assert reply["error"]["type"] != "api_error", reply
    return f"{response.status} {reply['error']['type']}"


def test_generated_and_mutated_messages_api_requests_never_end_in_a_server_error() -> None:
    """FUZZ_REQUESTS generated Messages API requests (edited JSON, corrupted text, odd `stream` values and beta
    headers) at POST /v1/messages: never a 500, an `api_error` or a hang; every call logged, none INTERNAL or
    UNKNOWN."""
    with fuzzing("Messages API") as run:

        @fuzzed(messages_api_requests())
        def one(request: tuple[bytes, dict[str, str]]) -> None:
            run.seen["POST /v1/messages", messages_api_call(run.http, *request)] += 1

        one()
    logged = Counter(line["status"] for line in call_log("".join(run.log)))
    assert sum(logged.values()) == sum(run.seen.values()), (logged, run.seen)
    assert not {status for status in logged if status in {code.name for code in NEVER}}, logged
