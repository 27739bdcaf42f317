"""The stream grammar: an upstream stream out of order ends the call DATA_LOSS / UPSTREAM_OUT_OF_ORDER on
both RPCs, after the events before the break were relayed, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from claude_gateway.client import create_request

from server.call.grammar import Grammar
from server.errors import GatewayError
from simulator import Replay
from tests.harness import body, gateway, run, status_of, stream_request
from tests.hostile import MESSAGE_START

START = MESSAGE_START
TEXT0 = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
DELTA0 = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
STOP0 = {"type": "content_block_stop", "index": 0}
MESSAGE_DELTA = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}
END = {"type": "message_stop"}

# name -> (the events, how many of them come before the break)
BROKEN: dict[str, tuple[list[dict[str, Any]], int]] = {
    "only-message-stop": ([END], 0),
    "delta-before-message-start": ([DELTA0, START, END], 0),
    "delta-before-its-block-start": ([START, DELTA0, TEXT0, STOP0, MESSAGE_DELTA, END], 1),
    "index-jump": ([START, {**TEXT0, "index": 2}, STOP0, MESSAGE_DELTA, END], 1),
    "stop-before-start": ([START, STOP0, TEXT0, MESSAGE_DELTA, END], 1),
    "delta-after-its-block-stop": ([START, TEXT0, STOP0, DELTA0, MESSAGE_DELTA, END], 3),
    "index-not-an-integer": ([START, TEXT0, {**DELTA0, "index": "0"}, STOP0, MESSAGE_DELTA, END], 2),
    "block-start-after-message-delta": ([START, MESSAGE_DELTA, TEXT0, STOP0, END], 2),
    "name-and-type-differ": ([START, TEXT0, {**STOP0, "type": "content_block_delta"}, MESSAGE_DELTA, END], 2),
    "message-delta-without-usage": ([START, {"type": "message_delta", "delta": {}}, END], 1),
}


def wire(events: list[dict[str, Any]], names: list[str] | None = None) -> bytes:
    names = names or [e["type"] for e in events]
    return b"".join(f"event: {n}\ndata: {json.dumps(e)}\n\n".encode() for n, e in zip(names, events, strict=True))


def broken_wire(case: str) -> bytes:
    events, _ = BROKEN[case]
    if case == "name-and-type-differ":
        return wire(events, [e["type"] if i != 2 else "content_block_stop" for i, e in enumerate(events)])
    return wire(events)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_stream_out_of_order_ends_stream_message_data_loss_after_what_came_before(case: str) -> None:
    """StreamMessage relays the events before the break, then ends DATA_LOSS / UPSTREAM_OUT_OF_ORDER."""

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(broken_wire(case)))
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for response in h.stub.StreamMessage(stream_request(body()), timeout=10):
                    got += list(response.events)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.DATA_LOSS, status
            assert status.error_info is not None
            assert status.error_info.reason == "UPSTREAM_OUT_OF_ORDER"
            assert len(got) == BROKEN[case][1]

    run(go)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_stream_out_of_order_ends_create_message_data_loss_never_unknown(case: str) -> None:
    """CreateMessage on the same streams ends DATA_LOSS / UPSTREAM_OUT_OF_ORDER, not UNKNOWN or INTERNAL."""

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(broken_wire(case)))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.stub.CreateMessage(create_request(body()), timeout=10)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.DATA_LOSS, status
            assert status.error_info is not None
            assert status.error_info.reason == "UPSTREAM_OUT_OF_ORDER"

    run(go)


def test_create_message_ends_data_loss_when_tool_input_is_not_json() -> None:
    """Tool input the SDK's accumulation cannot parse ends CreateMessage DATA_LOSS / UPSTREAM_MALFORMED_EVENT."""
    block = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    tool = {"type": "content_block_start", "index": 0, "content_block": block}
    bad = {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "}{"}}
    stream = wire([START, tool, bad, STOP0, MESSAGE_DELTA, END])

    async def go() -> None:
        async with gateway() as h:
            h.sim.enqueue(Replay(stream))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.stub.CreateMessage(create_request(body()), timeout=10)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.DATA_LOSS, status
            assert status.error_info is not None
            assert status.error_info.reason == "UPSTREAM_MALFORMED_EVENT"

    run(go)


def test_grammar_accepts_pings_anywhere_interleaved_blocks_and_unknown_event_types() -> None:
    """A valid stream with pings, interleaved blocks, a repeated message_start and a new event type passes."""
    tool = {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}
    events: list[dict[str, Any]] = [
        {"type": "ping"},
        START,
        TEXT0,
        tool,
        {"type": "ping"},
        DELTA0,
        {"type": "future_event", "x": 1},
        {"type": "content_block_stop", "index": 1},
        START,
        STOP0,
        MESSAGE_DELTA,
        END,
    ]
    grammar = Grammar()
    for event in events:
        grammar.check(event["type"], event)
    with pytest.raises(GatewayError):
        grammar.check("content_block_delta", DELTA0)  # block 0 stopped
