"""The official SDKs' own stream fixtures (``../shared/fixtures/sdk-streams``, 79 bodies) replayed
verbatim upstream, through both RPCs: StreamMessage relays exactly what an SSE reader dispatches from
the bytes, and CreateMessage equals the SDK's own accumulation (its beta helper for beta bodies)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from claude_gateway import codec
from claude_gateway.client import create_request, stream_request

from server.upstream import failures
from simulator import Replay
from tests.corpus import sdk_streams
from tests.harness import Status, body, gateway, run, status_of

BETA = "test-beta-2025-01-01"


def dispatched(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) of every event an SSE reader dispatches from ``raw`` (WHATWG rules: only a blank line
    dispatches; a frame without data, or an unterminated last one, dispatches nothing)."""
    lines = re.split(r"\r\n|\r|\n", raw.decode())[:-1]  # the last piece has no line end: never complete
    out: list[tuple[str, str]] = []
    name, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                out.append((name or "message", "\n".join(data)))
            name, data = "", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    return out


def relayable(raw: bytes) -> tuple[list[dict[str, Any]], str]:
    """The events the gateway should relay (named ones, up to message_stop or error) and how the stream
    ends: "complete", "error:<type>" or "incomplete"."""
    events: list[dict[str, Any]] = []
    for name, data in dispatched(raw):
        if name == "message":
            continue  # no `event:` line: the SDK ignores it, and so does the gateway
        obj = json.loads(data)
        if name == "error":
            return events, f"error:{obj['error']['type']}"
        events.append(obj)
        if name == "message_stop":
            return events, "complete"
    return events, "incomplete"


def request(entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return body(), [BETA] if entry["api"] == "beta" else []


@pytest.mark.parametrize(("path", "entry"), sdk_streams())
def test_stream_message_relays_what_an_sse_reader_dispatches(path: Path, entry: dict[str, Any]) -> None:
    """StreamMessage relays every dispatched event exactly, then ends OK, or with the status the end calls for."""
    raw = path.read_bytes()
    want, end = relayable(raw)

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            h.sim.enqueue(Replay(raw))
            got: list[dict[str, Any]] = []
            params, betas = request(entry)
            call = h.stub.StreamMessage(stream_request(params, betas), timeout=10)
            try:
                async for response in call:
                    got += [codec.to_json(e) for e in response.events]
                status = None
            except grpc.aio.AioRpcError as err:
                status = status_of(err)
            assert got == want
            if end == "complete":
                assert status is None
            else:
                assert status is not None
                assert status.code == ended(end), status
                if end == "incomplete":
                    assert status.error_info is not None
                    assert status.error_info.reason == "UPSTREAM_INCOMPLETE_STREAM"

    run(go)


@pytest.mark.parametrize(("path", "entry"), sdk_streams())
def test_create_message_equals_the_sdk_accumulation(path: Path, entry: dict[str, Any]) -> None:
    """CreateMessage equals the SDK's final message for the same bytes (beta helper for beta bodies)."""
    raw = path.read_bytes()
    _, end = relayable(raw)

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            h.sim.enqueue(Replay(raw), Replay(raw))
            params, betas = request(entry)
            try:
                response = await h.stub.CreateMessage(create_request(params, betas), timeout=10)
                got: Any = codec.to_json(response.message)
            except grpc.aio.AioRpcError as err:
                got = status_of(err)
            if end != "complete":
                assert isinstance(got, Status), got
                assert got.code == ended(end), got
                return
            if betas:
                async with h.sdk.beta.messages.stream(**params, betas=betas) as beta_stream:
                    want = (await beta_stream.get_final_message()).to_dict(mode="json", warnings=False)
            else:
                async with h.sdk.messages.stream(**params) as sdk_stream:
                    want = (await sdk_stream.get_final_message()).to_dict(mode="json", warnings=False)
            assert got == want

    run(go)


def ended(end: str) -> grpc.StatusCode:
    """The code a stream that ends ``end`` must end the call with."""
    if end == "incomplete":
        return grpc.StatusCode.UNAVAILABLE
    return failures.API_ERRORS[end.split(":", 1)[1]]
