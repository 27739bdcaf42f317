"""The simulator, driven by the real `anthropic` SDK (and raw httpx2 where bytes matter) over loopback."""

import asyncio
import json
import re
import signal
import subprocess
import sys
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import MessageParam, RawMessageStreamEvent, ToolParam

from simulator import (
    Cut,
    EndWithoutStop,
    ErrorEvent,
    HttpError,
    Malformed,
    Pace,
    Replay,
    Simulator,
    Stall,
    catalog,
)
from tests.corpus import streams
from tests.harness import run, until

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "hello brave new world"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
    },
}
# The stream grammar, over event types with pings removed.
GRAMMAR = re.compile(
    r"message_start( content_block_start( content_block_delta)*( content_block_stop)?)* message_delta message_stop"
)


@asynccontextmanager
async def connected(
    pace: Pace | None = None, *, server_key: str | None = None, client_key: str = "test-key", **client_options: Any
) -> AsyncIterator[tuple[Simulator, anthropic.AsyncAnthropic]]:
    """A running simulator and an SDK client of it that does not retry."""
    async with (
        Simulator(pace or Pace(), api_key=server_key) as sim,
        anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=client_key, max_retries=0, **client_options) as client,
    ):
        yield sim, client


async def raw_events(client: anthropic.AsyncAnthropic, **params: Any) -> list[RawMessageStreamEvent]:
    stream = await client.messages.create(**{"model": MODEL, "max_tokens": 1000, **params}, stream=True)
    return [event async for event in stream]


def types(events: list[RawMessageStreamEvent]) -> str:
    return " ".join(event.type for event in events)


async def post(sim: Simulator, body: object, headers: dict[str, str] | None = None) -> httpx2.Response:
    """POST `body` (bytes as they are, anything else as JSON) to /v1/messages with raw httpx2."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx2.AsyncClient() as http:
        return await http.post(
            f"{sim.base_url}/v1/messages",
            content=content,
            headers={"x-api-key": "k", "anthropic-version": "2026-10-21", **(headers or {})},
        )


def test_stream_text_follows_grammar_and_accumulates() -> None:
    """A plain streamed reply follows the event grammar and the SDK rebuilds its text."""

    async def go() -> None:
        async with connected() as (sim, client):
            events = await raw_events(client, messages=HELLO)
            async with client.messages.stream(model=MODEL, max_tokens=1000, messages=HELLO) as stream:
                final = await stream.get_final_message()
        assert GRAMMAR.fullmatch(types(events))
        deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
        assert len(deltas) == 24
        assert final.content[0].type == "text"
        assert final.content[0].text == "".join(deltas)
        assert final.content[0].text.startswith("hello brave new world the simulator")
        assert (final.model, final.stop_reason, final.usage.output_tokens, final.usage.input_tokens) == (
            MODEL,
            "end_turn",
            24,
            4,
        )
        assert sim.requests[0].headers["authorization"] == "Bearer test-key"
        assert sim.requests[0].body["stream"] is True

    run(go)


def test_non_stream_reply_is_the_accumulated_stream() -> None:
    """A non-streaming request gets the Message the same stream adds up to."""

    async def go() -> None:
        async with connected() as (_, client):
            params: dict[str, Any] = {"model": MODEL, "max_tokens": 1000, "messages": HELLO, "tools": [WEATHER]}
            async with client.messages.stream(**params) as stream:
                final = await stream.get_final_message()
            whole = await client.messages.create(**params)
        assert [block.model_dump(exclude={"parsed_output", "id"}) for block in final.content] == [
            block.model_dump(exclude={"id"}) for block in whole.content
        ]
        assert (whole.stop_reason, whole.usage) == (final.stop_reason, final.usage)

    run(go)


def test_thinking_then_tool_use() -> None:
    """Thinking comes first with a signature, then a short text, then tool_use with streamed JSON input."""

    async def go() -> None:
        async with connected() as (_, client):
            events = await raw_events(
                client, messages=HELLO, tools=[WEATHER], thinking={"type": "enabled", "budget_tokens": 1024}
            )
            async with client.messages.stream(
                model=MODEL, max_tokens=1000, messages=HELLO, tools=[WEATHER], thinking={"type": "adaptive"}
            ) as stream:
                final = await stream.get_final_message()
        assert GRAMMAR.fullmatch(types(events))
        delta_types = [e.delta.type for e in events if e.type == "content_block_delta"]
        assert delta_types.count("signature_delta") == 1
        assert delta_types.count("input_json_delta") >= 4
        assert [block.type for block in final.content] == ["thinking", "text", "tool_use"]
        thinking, tool = final.content[0], final.content[2]
        assert thinking.type == "thinking"
        assert thinking.signature
        assert tool.type == "tool_use"
        assert tool.id.startswith("toolu_")
        assert (tool.name, tool.input) == ("get_weather", {"location": "hello", "days": 42, "metric": True})
        assert final.stop_reason == "tool_use"

    run(go)


def test_max_tokens_stops_text() -> None:
    """max_tokens ends the reply after that many tokens with stop_reason max_tokens."""

    async def go() -> None:
        async with connected() as (_, client):
            message = await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
        assert message.content[0].type == "text"
        assert message.content[0].text == "hello brave new world the"
        assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)

    run(go)


def test_max_tokens_inside_tool_json_leaves_block_open() -> None:
    """When max_tokens falls inside tool JSON, that block gets no content_block_stop."""

    async def go() -> None:
        async with connected() as (_, client):
            events = await raw_events(client, max_tokens=6, messages=HELLO, tools=[WEATHER])
        assert GRAMMAR.fullmatch(types(events))
        stops = [e.index for e in events if e.type == "content_block_stop"]
        assert stops == [0]
        assert events[-2].type == "message_delta"
        assert events[-2].delta.stop_reason == "max_tokens"
        assert events[-2].usage.output_tokens == 6

    run(go)


def test_stop_sequence_ends_text_before_it() -> None:
    """A stop sequence cuts the text right before it and is reported."""

    async def go() -> None:
        async with connected() as (_, client):
            message = await client.messages.create(
                model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["zzz", "new world"]
            )
        assert message.content[0].type == "text"
        assert message.content[0].text == "hello brave "
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "new world")

    run(go)


def test_http_error_carries_retry_headers() -> None:
    """HttpError(429) surfaces as RateLimitError with the retry headers and the error body."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(
                HttpError(429, "rate_limit_error", "slow down", retry_after=3, retry_after_ms=2500, should_retry=True)
            )
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True)
            after = await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        error = caught.value
        assert (error.type, error.api_message) == ("rate_limit_error", "slow down")
        headers = error.response.headers
        assert (headers["retry-after"], headers["retry-after-ms"], headers["x-should-retry"]) == ("3", "2500", "true")
        assert error.request_id is not None
        assert error.request_id.startswith("req_")
        assert isinstance(error.body, dict)
        assert error.body["request_id"] == error.request_id
        assert after.stop_reason == "max_tokens"

    run(go)


def test_error_event_is_a_plain_api_status_error() -> None:
    """An error event mid-stream raises the base APIStatusError with status 200 and the error type."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(ErrorEvent(after_events=5))
            with pytest.raises(anthropic.APIStatusError) as caught:
                await raw_events(client, messages=HELLO)
        assert not isinstance(caught.value, anthropic.OverloadedError)
        assert (caught.value.status_code, caught.value.type) == (200, "overloaded_error")
        assert sim.requests[0].events_sent == 6

    run(go)


def test_cut_is_a_transport_error_and_closes() -> None:
    """Cut resets the connection after N events, which the SDK lets through as httpx2.ReadError."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(Cut(after_events=4))
            with pytest.raises(httpx2.ReadError):
                await raw_events(client, messages=HELLO)
            record = sim.requests[0]
            await record.wait_closed(1)
            assert record.events_sent == 4
            assert sim.open_connections == 0

    run(go)


def test_malformed_frame_is_a_json_error() -> None:
    """A frame whose data is not JSON makes the SDK raise json.JSONDecodeError."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(Malformed(after_events=3))
            with pytest.raises(json.JSONDecodeError):
                await raw_events(client, messages=HELLO)

    run(go)


def test_end_without_stop_raises_nothing() -> None:
    """A stream that ends cleanly before message_stop passes through the SDK silently."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(EndWithoutStop(after_events=6))
            events = await raw_events(client, messages=HELLO)
        assert types(events) == "message_start content_block_start" + " content_block_delta" * 3
        assert sim.requests[0].events_sent == 6

    run(go)


def test_wait_closed_fires_when_client_leaves_mid_stream() -> None:
    """Closing a paced stream early is seen by the server at once, between two events."""

    async def go() -> None:
        async with connected(Pace(tokens_per_second=20)) as (sim, client):
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
                async for event in stream:
                    if event.type == "text":
                        break
            record = sim.requests[0]
            closed_at = await record.wait_closed(5)
            assert closed_at - record.received_at < 2.5  # well before the 5 s the whole stream takes
            assert record.events_sent < 10
            assert sim.open_connections == 0

    run(go)


def test_wait_closed_fires_during_stall_before_headers() -> None:
    """A Stall(-1) sends nothing, not even headers; the client gives up and the server sees it leave."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(Stall(after_events=-1))
            reading = asyncio.create_task(raw_events(client, messages=HELLO))
            await until(lambda: bool(sim.requests))
            await asyncio.sleep(0.2)  # a while in which nothing comes
            record = sim.requests[0]
            assert not reading.done()
            assert record.closed_at is None
            reading.cancel()  # the client gives up
            await record.wait_closed(5)
            assert (record.status, record.events_sent) == (None, 0)

    run(go)


def test_stall_mid_stream_holds_the_connection() -> None:
    """A Stall(N) sends N events and then nothing until the client closes."""

    async def go() -> None:
        async with connected() as (sim, client):
            sim.enqueue(Stall(after_events=3))
            got: list[RawMessageStreamEvent] = []

            async def read() -> None:
                stream = await client.messages.create(model=MODEL, max_tokens=1000, messages=HELLO, stream=True)
                async for event in stream:
                    got.append(event)

            reading = asyncio.create_task(read())
            await until(lambda: bool(sim.requests) and sim.requests[0].events_sent == 3 and len(got) == 2)
            await asyncio.sleep(0.2)  # a while in which nothing more comes, and the connection stays open
            record = sim.requests[0]
            assert record.events_sent == 3
            assert [e.type for e in got] == ["message_start", "content_block_start"]  # the third is a ping
            assert not reading.done()
            assert record.closed_at is None
            reading.cancel()
            await record.wait_closed(5)
            assert (record.status, record.events_sent) == (200, 3)

    run(go)


def test_authentication() -> None:
    """A wrong key is a 401; a right one passes by Bearer token or by x-api-key under either version."""

    async def go() -> None:
        async with connected(server_key="secret", client_key="wrong") as (sim, client):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            assert caught.value.type == "authentication_error"
            body = {"model": MODEL, "max_tokens": 3, "messages": HELLO}
            assert (await post(sim, body)).status_code == 401
            ok = await post(sim, body, {"x-api-key": "secret", "anthropic-version": "2023-06-01"})
            assert ok.status_code == 200
            assert ok.headers["content-type"] == "application/json"

    run(go)


def test_request_validation() -> None:
    """Bad requests get a 400 invalid_request_error whose message names the field."""

    async def go() -> None:
        good: dict[str, Any] = {"model": MODEL, "max_tokens": 3, "messages": HELLO}
        document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
        cases: list[tuple[object, str, dict[str, str]]] = [
            ({**good, "temperature": 0.5}, "temperature", {}),
            ({**good, "top_k": 5}, "top_k", {}),
            ({k: v for k, v in good.items() if k != "model"}, "model", {}),
            ({**good, "max_tokens": 0}, "max_tokens", {}),
            ({**good, "messages": []}, "messages", {}),
            ({**good, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role", {}),
            ({**good, "messages": [*HELLO, {"role": "assistant", "content": [document]}]}, "messages.1.content.0", {}),
            (good, "anthropic-version", {"anthropic-version": "2024-01-01"}),
            ({**good, "messages": [{"role": "user", "content": "[[sim:explode 1]]"}]}, "[[sim:explode 1]]", {}),
        ]
        async with connected() as (sim, _):
            for body, field, headers in cases:
                response = await post(sim, body, headers)
                error = response.json()["error"]
                assert (response.status_code, error["type"]) == (400, "invalid_request_error"), body
                assert field in error["message"]
            old_version = {"anthropic-version": "2023-06-01"}
            assert (await post(sim, {**good, "temperature": 0.5}, old_version)).status_code == 200
            assert (await post(sim, b"{")).status_code == 400
            async with httpx2.AsyncClient() as http:
                missing = await http.get(f"{sim.base_url}/v1/nothing")
            assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")

    run(go)


def test_an_unknown_model_is_not_found_as_the_api_answers() -> None:
    """A model outside simulator/models.txt (a typo) gets the API's 404 not_found_error, streamed or not."""

    async def go() -> None:
        async with connected() as (sim, client):
            with pytest.raises(anthropic.NotFoundError) as caught:
                await client.messages.create(model="claude-sonet-4-6", max_tokens=10, messages=HELLO, stream=True)
            raw = await post(sim, {"model": "claude-sonet-4-6", "max_tokens": 3, "messages": HELLO})
        assert caught.value.type == "not_found_error"
        not_found = {"type": "not_found_error", "message": "model: claude-sonet-4-6"}
        assert caught.value.body == {"type": "error", "error": not_found, "request_id": caught.value.request_id}
        assert raw.status_code == 404
        assert raw.headers["content-type"] == "application/json"
        assert raw.json() == {"type": "error", "error": not_found, "request_id": raw.headers["request-id"]}
        assert [r.status for r in sim.requests] == [404, 404]

    run(go)


def test_the_models_file_names_every_model_the_sdk_names() -> None:
    """simulator/models.txt serves every name of the pinned SDK's `anthropic.types.Model`, dated snapshots too."""
    literal, _ = typing.get_args(anthropic.types.Model)
    named = set(typing.get_args(literal))
    assert {"claude-sonnet-4-6", "claude-haiku-4-5-20251001"} <= named
    assert named <= catalog.MODELS, sorted(named - catalog.MODELS)
    assert "claude-sonet-4-6" not in catalog.MODELS


def test_sdk_maps_the_2026_temperature_rejection() -> None:
    """The SDK, which sends anthropic-version 2026-10-21, gets BadRequestError for temperature."""

    async def go() -> None:
        async with connected() as (sim, client):
            with pytest.raises(anthropic.BadRequestError, match="temperature"):
                await client.messages.create(
                    model=MODEL, max_tokens=10, messages=HELLO, extra_body={"temperature": 0.2}
                )
            assert sim.requests[0].headers["anthropic-version"] == "2026-10-21"

    run(go)


@pytest.mark.parametrize("path", [*streams(complete=True), *streams(complete=False)])
def test_replay_is_byte_identical(path: Path) -> None:
    """A Replay of a recorded stream reaches the client byte for byte, with its extra headers."""
    recorded = path.read_bytes()

    async def go() -> None:
        async with connected() as (sim, _):
            sim.enqueue(Replay(recorded, {"x-replayed": "yes"}))
            async with (
                httpx2.AsyncClient() as http,
                http.stream(
                    "POST",
                    f"{sim.base_url}/v1/messages",
                    json={"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True},
                    headers={"x-api-key": "k", "anthropic-version": "2026-10-21"},
                ) as response,
            ):
                chunks = [chunk async for chunk in response.aiter_raw()]
        assert b"".join(chunks) == recorded
        assert response.headers["x-replayed"] == "yes"
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert sim.requests[0].events_sent == recorded.count(b"\n\n")

    run(go)


def test_wire_format_and_pings() -> None:
    """Frames are `event:`/`data:` pairs, the first ping follows the first block start, and waits carry pings."""

    async def go() -> None:
        async with connected(Pace(ttft=0.25, ping_interval=0.1)) as (sim, _):
            response = await post(sim, {"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True})
        frames = response.content.split(b"\n\n")[:-1]
        names = [frame.split(b"\n")[0].removeprefix(b"event: ").decode() for frame in frames]
        assert names[:5] == ["message_start", "content_block_start", "ping", "ping", "ping"]
        assert names[5] == "content_block_delta"
        assert any(frame.endswith(b" }") for frame in frames)
        for frame, name in zip(frames, names, strict=True):
            data = frame.split(b"\n")[1]
            assert json.loads(data.removeprefix(b"data: "))["type"] == name
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["request-id"].startswith("req_")

    run(go)


def test_prompt_directives() -> None:
    """Directives in the prompt set the reply length and inject faults, for clients in other processes."""

    async def go() -> None:

        def ask(text: str) -> list[MessageParam]:
            return [{"role": "user", "content": text}]

        async with connected() as (_, client):
            short = await client.messages.create(model=MODEL, max_tokens=100, messages=ask("hi [[sim:tokens 3]] there"))
            with pytest.raises(anthropic.OverloadedError):
                await client.messages.create(model=MODEL, max_tokens=100, messages=ask("[[sim:http_error 529]]"))
            with pytest.raises(anthropic.APIStatusError) as caught:
                await raw_events(client, messages=ask("[[sim:error_event 2 api_error]]"))
            with pytest.raises(httpx2.ReadError):
                await raw_events(client, messages=ask("[[sim:cut 5]]"))
            ended = await raw_events(client, messages=ask("[[sim:eof 4]]"))
        assert short.content[0].type == "text"
        assert short.content[0].text == "hi there the"
        assert caught.value.type == "api_error"
        assert ended[-1].type == "content_block_delta"

    run(go)


def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests share one pooled connection, which closes when the client does."""

    async def go() -> None:
        async with connected() as (sim, client):
            for _ in range(3):
                await raw_events(client, messages=HELLO)
            assert sim.open_connections == 1
            await client.close()
            closed = {await record.wait_closed(1) for record in sim.requests}
            assert len(closed) == 1
            assert sim.open_connections == 0

    run(go)


def test_main_runs_until_sigterm(tmp_path: Path) -> None:
    """`python -m simulator` prints its base URL, answers the models of its --models file, and exits on SIGTERM."""
    models = tmp_path / "models.txt"
    models.write_text(f"# ours\n{MODEL}\nclaude-in-house-1  # a model of our own\n")
    with subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--api-key", "k", "--models", str(models)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        response = httpx2.post(
            f"{match.group(1)}/v1/messages",
            json={"model": MODEL, "max_tokens": 2, "messages": HELLO},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
        assert response.json()["content"][0]["text"] == "hello brave"
        served = {
            model: httpx2.post(
                f"{match.group(1)}/v1/messages",
                json={"model": model, "max_tokens": 2, "messages": HELLO},
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            ).status_code
            for model in ("claude-in-house-1", "claude-opus-4-7")
        }
        assert served == {"claude-in-house-1": 200, "claude-opus-4-7": 404}  # the file's list, not the default
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
