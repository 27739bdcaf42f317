"""Replies never exceed GATEWAY_MAX_MESSAGE_BYTES: big batches are split, and one event (or one whole
CreateMessage reply) that cannot fit ends the call RESOURCE_EXHAUSTED / REPLY_TOO_LARGE, with no traceback."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from claude_gateway.client import create_request

from server.call.events import Event, responses
from simulator import Replay
from tests.harness import body, gateway, run, status_of, stream_request
from tests.test_grammar import END, MESSAGE_DELTA, START, STOP0, TEXT0, wire

LIMIT = 64 * 1024


def text(n: int) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * n}}


def test_a_batch_bigger_than_the_limit_is_split_into_messages_that_fit() -> None:
    """Twelve 20 KiB events read at once go out as several messages, each within the limit, all in order."""
    events: list[dict[str, Any]] = [START, TEXT0, *[text(20_000) for _ in range(12)], STOP0, MESSAGE_DELTA, END]
    batch: list[Event] = [(e["type"], e, wire([e]).decode().split("data: ", 1)[1].strip()) for e in events]
    out, failure = responses(batch, LIMIT)
    assert failure is None
    assert len(out) >= 4
    assert all(r.ByteSize() <= LIMIT for r in out)
    assert sum(len(r.events) for r in out) == len(events)
    got = [e.content_block_delta.delta.text_delta.text for r in out for e in r.events]
    assert got[2:14] == ["x" * 20_000] * 12


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
def test_an_event_that_cannot_fit_ends_the_call_resource_exhausted_without_a_traceback(
    rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 100 KB event under a 64 KiB message limit ends REPLY_TOO_LARGE after the events before it."""
    caplog.set_level(logging.INFO)
    stream = wire([START, TEXT0, text(10), text(100_000), STOP0, MESSAGE_DELTA, END])

    async def go() -> None:
        async with gateway(max_message_bytes=LIMIT) as h:
            h.sim.enqueue(Replay(stream))
            got = 0
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if rpc == "StreamMessage":
                    async for response in h.stub.StreamMessage(stream_request(body()), timeout=10):
                        got += len(response.events)
                else:
                    await h.stub.CreateMessage(create_request(body()), timeout=10)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED, status
            assert status.error_info is not None
            assert status.error_info.reason == "REPLY_TOO_LARGE"
            assert got == (3 if rpc == "StreamMessage" else 0)
            h.sim.enqueue(Replay(wire([START, TEXT0, text(10), STOP0, MESSAGE_DELTA, END])))
            assert (await h.events(body()))[-1]["type"] == "message_stop"  # the gateway serves on

    run(go)
    assert [r for r in caplog.records if r.name == "server.call"], "the call log was not captured"
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
