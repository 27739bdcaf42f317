"""The JSON <-> proto mapping, rule by rule: every object comes back exactly as it went in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf.message import Message

ROUND_TRIPS: list[tuple[str, type[Message], dict[str, Any]]] = [
    ("null stays null", pb.MessageDeltaEvent, {"delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
    ("absent stays absent", pb.Usage, {"output_tokens": 3}),
    ("zero is not absent", pb.Usage, {"input_tokens": 0, "output_tokens": 0}),
    ("empty list kept", pb.Message, {"id": "m", "content": [], "usage": {"input_tokens": 1}}),
    ("unknown key kept", pb.Usage, {"input_tokens": 1, "future_counter": {"a": [1, 2.5, None]}}),
    ("int32 overflow kept exact", pb.Usage, {"input_tokens": 2**40}),
    ("float where int expected", pb.Usage, {"input_tokens": 1.5}),
    ("bool is not an int", pb.Usage, {"input_tokens": True}),
    ("string content", pb.MessageParam, {"role": "user", "content": "hi"}),
    ("block content", pb.MessageParam, {"role": "user", "content": [{"type": "text", "text": "hi"}]}),
    ("tool without type is custom", pb.Tool, {"name": "t", "input_schema": {"type": "object"}}),
    ("custom tool keeps its type", pb.Tool, {"type": "custom", "name": "t", "input_schema": {"type": "object"}}),
    ("server tool as raw json", pb.Tool, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}),
    ("unknown block as raw json", pb.ContentBlock, {"type": "hologram", "frames": [1, 2]}),
    ("integral numbers stay ints", pb.ToolUseBlock, {"id": "t", "name": "n", "input": {"n": 3, "x": 0.5}}),
    ("value holds any json", pb.ServerToolResultBlock, {"tool_use_id": "s", "content": [{"type": "r", "n": 1}]}),
    ("value holds null", pb.MessageCreateParams, {"model": "m", "max_tokens": 1, "messages": [], "container": None}),
    ("system as string", pb.MessageCreateParams, {"model": "m", "max_tokens": 1, "system": "be brief"}),
    ("empty struct kept", pb.ToolUseBlock, {"id": "t", "name": "n", "input": {}}),
    ("union without type key", pb.ContentBlock, {"text": "no type"}),
]


@pytest.mark.parametrize(("name", "message_type", "obj"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_is_exact(name: str, message_type: type[Message], obj: dict[str, Any]) -> None:
    """to_json(from_json(obj)) gives back obj for every rule of the mapping."""
    assert codec.to_json(codec.from_json(obj, message_type())) == obj


def test_known_types_land_in_typed_fields() -> None:
    """Modelled keys go to typed fields, so other languages read them without parsing JSON."""
    event = codec.from_json(
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hi"}},
        pb.MessageStreamEvent(),
    )
    assert event.content_block_delta.index == 2
    assert event.content_block_delta.delta.text_delta.text == "Hi"
    assert not event.content_block_delta.HasField("extra")


def test_unknown_event_keeps_its_raw_text_verbatim() -> None:
    """An unknown event type travels as the exact text received, type copied out for switching."""
    raw = '{"type":"future_event",  "n": 1.50}'
    event = codec.from_json(json.loads(raw), pb.MessageStreamEvent(), raw)
    assert event.raw_json.type == "future_event"
    assert event.raw_json.json == raw


def test_nulls_and_unknown_keys_go_to_extra() -> None:
    """A null of a modelled field and an unknown key are carried in `extra`, not dropped."""
    delta = codec.from_json({"stop_reason": None, "brand_new": 1}, pb.MessageDelta())
    assert not delta.HasField("stop_reason")
    assert codec.plain(delta.extra) == {"stop_reason": None, "brand_new": 1}


def test_string_form_uses_the_text_field() -> None:
    """A string where the API also takes blocks goes to the `_text` field."""
    param = codec.from_json({"role": "user", "content": "hello"}, pb.MessageParam())
    assert param.content_text == "hello"
    assert len(param.content) == 0
