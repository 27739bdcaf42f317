"""SSE framing and the event mapping's fast path: same result as the general path, whatever the bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb

from server.call import events
from server.call.events import SseFramer, fill_event, parse
from server.errors import GatewayError
from tests.corpus import sdk_streams, streams

HOT = [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"a'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "signature_delta", "signature": "c2ln"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x", "new": 1}},
    {"type": "content_block_delta", "index": 2**40, "delta": {"type": "text_delta", "text": "x"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": None}},
    {"type": "ping"},
    {"type": "message_stop"},
    {"type": "ping", "extra": 1},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_stop", "index": 7},
    {"type": "content_block_stop", "index": "0"},
    {"type": "content_block_stop", "index": 0, "new": True},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": "Hi"}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "", "citations": []}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_start", "index": 2**40, "content_block": {"type": "text", "text": ""}},
]


@pytest.mark.parametrize("obj", HOT, ids=range(len(HOT)))
def test_fast_path_builds_exactly_what_the_codec_builds(obj: dict[str, object]) -> None:
    """Hot deltas and the small events of every reply take a shortcut that must give the same proto
    as the general mapping, and anything off their exact shape takes the general mapping."""
    data = json.dumps(obj)
    fast = pb.MessageStreamEvent()
    fill_event(fast, parse(str(obj["type"]), data), data)
    assert fast == codec.from_json(obj, pb.MessageStreamEvent(), data)
    assert codec.to_json(fast) == obj


def _same_as_codec(obj: dict[str, Any], data: str) -> pb.MessageStreamEvent:
    """The event ``fill_event`` builds, asserted equal to the codec's, field for field and byte for byte."""
    fast = pb.MessageStreamEvent()
    fill_event(fast, obj, data)
    general = codec.from_json(obj, pb.MessageStreamEvent(), data)
    assert fast == general
    assert fast.SerializeToString(deterministic=True) == general.SerializeToString(deterministic=True)
    assert fast.SerializeToString() == general.SerializeToString()
    return fast


CORPUS = [
    *streams(complete=True),
    *streams(complete=False),
    *(pytest.param(p.values[0], id="sdk-" + str(p.id), marks=p.marks) for p in sdk_streams()),
]


@pytest.mark.parametrize("path", CORPUS)
def test_every_recorded_event_maps_as_the_codec_maps_it(path: Path) -> None:
    """Every event of every recorded stream (the project's, the shared corpus, the SDKs' own fixtures) gives the
    codec's proto through ``fill_event``, whichever of its paths the event takes."""
    framer = SseFramer()
    frames = framer.feed(path.read_bytes() + b"\n\n")
    mapped = 0
    for name, data in frames:
        try:
            obj = parse(name, data)
        except GatewayError:
            continue  # an `error` event or a malformed frame: never mapped
        _same_as_codec(obj, data)
        mapped += 1
    assert mapped or all(name == "error" for name, _ in frames)


def _start(**usage: object) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1, **usage},
    }
    return {"type": "message_start", "message": message}


def _delta(delta: dict[str, Any] | None = None, **usage: object) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None} if delta is None else delta,
        "usage": {"output_tokens": 9, **usage},
    }


def _without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(obj))
    target = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return out


def _with_message(**fields: object) -> dict[str, Any]:
    out = _start()
    out["message"].update(fields)
    return out


# message_start and message_delta in their usual shapes (the direct fill) and off them (the codec).
DIRECT = [
    _start(),
    _start(cache_creation_input_tokens=0, cache_read_input_tokens=0, service_tier="standard"),
    _start(
        cache_creation_input_tokens=1500,
        cache_read_input_tokens=4000,
        cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
        service_tier="standard",
        inference_geo="global",
        speed="fast",
    ),
    _start(cache_creation_input_tokens=None, cache_read_input_tokens=None, service_tier=None),
    _start(server_tool_use={"web_search_requests": 1, "web_fetch_requests": 0}, output_tokens_details=None),
    _start(server_tool_use={"web_search_requests": None, "new_counter": 3}),
    _start(cache_creation={}, output_tokens_details={"thinking_tokens": 7, "other": [1, {"a": None}]}),
    _start(iterations=[{"input_tokens": 1, "type": "message"}], brand_new={"x": 1}),
    _start(input_tokens=2**31, output_tokens=-(2**31)),
    _start(input_tokens=True, output_tokens=1.0, service_tier=7),
    _start(cache_creation=[], server_tool_use="many"),
    _without(_start(), "message", "usage", "input_tokens"),
    _without(_start(), "message", "usage"),
    _without(_start(), "message", "id"),
    _with_message(usage=None),
    _with_message(usage={}),
    _with_message(content=[{"type": "text", "text": "Hi"}]),
    _with_message(content="Hi"),
    _with_message(content=None),
    _with_message(stop_details=None, container=None),
    _with_message(stop_details={"type": "refusal", "category": "cyber", "explanation": None, "new": 1}),
    _with_message(container={"id": "container_1", "expires_at": "2026-01-01T00:00:00Z", "skills": []}),
    _with_message(container="container_1"),
    _with_message(stop_reason="end_turn", stop_sequence="STOP"),
    _with_message(model=None, role=5, type=None),
    _with_message(extra={"a": 1}, unknown=None, more=[]),
    {**_start(), "extra": 1},
    {**_start(), "new_top_level_key": {"a": [1, 2]}},
    {"type": "message_start"},
    {"type": "message_start", "message": None},
    {"type": "message_start", "message": "text"},
    {"type": "message_start", "message": {}},
    _delta(),
    _delta({"stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:"}),
    _delta({"stop_reason": "tool_use", "stop_sequence": None}, input_tokens=397, cache_read_input_tokens=0),
    _delta(
        {"stop_reason": "refusal", "stop_sequence": None, "stop_details": {"type": "refusal", "category": None}},
        output_tokens_details={"thinking_tokens": 67},
        iterations=[{"input_tokens": 28, "type": "message"}],
    ),
    _delta(server_tool_use={"web_search_requests": 1}, cache_creation={"ephemeral_1h_input_tokens": 2}),
    _delta({"stop_reason": "pause_turn", "container": {"id": "c", "expires_at": "x"}}),
    _delta({"stop_reason": "end_turn", "container": None, "stop_details": None}),
    _delta({}),
    _delta(None, output_tokens=None),
    _delta(None, output_tokens=2**40),
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
    {"type": "message_delta", "usage": {"output_tokens": 1}},
    {"type": "message_delta", "delta": None, "usage": None},
    {"type": "message_delta", "delta": [], "usage": [1]},
    {**_delta(), "context_management": {"applied_edits": []}},
]


@pytest.mark.parametrize("obj", DIRECT, ids=range(len(DIRECT)))
def test_message_start_and_delta_build_exactly_what_the_codec_builds(obj: dict[str, Any]) -> None:
    """The direct fills of message_start and message_delta give the codec's proto for every shape: nulls and
    absent counts, unknown keys at every level, cache and server-tool usage, stop details and containers,
    values of the wrong type, and anything they leave to the codec (content blocks, a non-object message)."""
    data = json.dumps(obj)
    _same_as_codec(parse(str(obj["type"]), data), data)


@pytest.mark.parametrize("obj", [_start(cache_creation_input_tokens=0, service_tier="standard"), _delta()])
def test_the_usual_shapes_take_the_direct_fill(obj: dict[str, Any]) -> None:
    """The shapes every reply has are filled by the tables, not handed back to the codec."""
    arm, table = events._DIRECT[obj["type"]]
    event = pb.MessageStreamEvent()
    assert events._fill_flat(getattr(event, arm), obj, table)


STREAM = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b": a comment line\n\n"
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'data: {"type":"no_event_line"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta",\ndata: "index":0}\n\n'
    b'event:tight\ndata:{"type":"tight"}\n\n'
)
WANT = [
    ("message_start", '{"type":"message_start"}'),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", '{"type":"content_block_delta",\n"index":0}'),
    ("tight", '{"type":"tight"}'),
]


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_framer_yields_the_same_frames_however_the_bytes_are_cut(size: int, newline: bytes) -> None:
    """Frames come out whole and in order for any chunking, LF or CRLF; frames without `event:` are dropped."""
    stream = STREAM.replace(b"\n", newline)
    framer = SseFramer()
    frames = []
    for start in range(0, len(stream), size):
        frames.extend(framer.feed(stream[start : start + size]))
    assert frames == WANT


def test_error_event_and_malformed_data_raise_gateway_errors() -> None:
    """An `error` frame maps by its type; data that is not a JSON object is DATA_LOSS."""
    with pytest.raises(GatewayError) as caught:
        parse("error", '{"type":"error","error":{"type":"overloaded_error","message":"x"}}')
    assert caught.value.failure.reason == "OVERLOADED_ERROR"
    for bad in ("{not json", "[1, 2]", ""):
        with pytest.raises(GatewayError) as caught:
            parse("content_block_delta", bad)
        assert caught.value.failure.reason == "UPSTREAM_MALFORMED_EVENT"


@pytest.mark.parametrize(
    "block",
    [{"type": "thinking", "thinking": ""}, {"type": "thinking", "thinking": "", "signature": ""}],
    ids=["signature-absent", "signature-empty"],
)
def test_thinking_signature_is_present_exactly_when_the_json_key_is(block: dict[str, str]) -> None:
    """A thinking block without a signature key comes back without one; an empty one stays empty."""
    obj = {"type": "content_block_start", "index": 0, "content_block": block}
    event = pb.MessageStreamEvent()
    fill_event(event, obj, json.dumps(obj))
    assert codec.to_json(event) == obj
