"""SSE framing and the event mapping's fast path: same result as the general path, whatever the bytes."""

from __future__ import annotations

import json

import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb

from server.call.events import SseFramer, fill_event, parse
from server.errors import GatewayError

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
