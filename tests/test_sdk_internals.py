"""Each private name of the anthropic SDK that claude_gateway/sdk.py relies on, named and exercised.

An SDK release that moves, renames or reshapes one of them fails here, in ``make test``, and not in a
gateway in production. The client's ``anthropic`` range (client/pyproject.toml) is what these ran against.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx2
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from claude_gateway import sdk
from packaging.specifiers import SpecifierSet

from simulator import Simulator
from tests.harness import API_KEY, run

ROOT = Path(__file__).resolve().parent.parent

START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-6",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
}
BLOCK = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
DELTA = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}


def test_the_installed_sdk_is_in_the_client_s_tested_range() -> None:
    """The SDK these tests run against is inside the range the client distribution declares."""
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    (spec,) = [d.removeprefix("anthropic") for d in project["dependencies"] if d.startswith("anthropic")]
    assert anthropic.__version__ in SpecifierSet(spec)


def test_sse_decoder_turns_lines_into_events() -> None:
    """anthropic._streaming.SSEDecoder: decode(line) returns the event when a blank line ends it."""
    decoder = sdk.SSEDecoder()
    assert decoder.decode("event: ping") is None
    assert decoder.decode('data: {"type":"ping"}') is None
    event = decoder.decode("")
    assert event is not None
    assert (event.event, event.data) == ("ping", '{"type":"ping"}')


def test_construct_type_builds_the_sdk_s_objects_without_validation() -> None:
    """anthropic._models.construct_type(type_=..., value=...) gives the SDK's own event type."""
    event: Any = sdk.construct_type(type_=RawMessageStreamEvent, value=START)
    assert type(event).__name__ == "RawMessageStartEvent"
    assert isinstance(event.message, Message)


def test_accumulate_and_build_events_follow_a_stream() -> None:
    """anthropic.lib.streaming._messages.accumulate_event and build_events, and the beta accumulate_event."""
    beta: dict[str, Any] = {"request_headers": httpx2.Headers({"anthropic-beta": "context-1m-2025-08-07"})}
    accumulations: list[tuple[Any, dict[str, Any]]] = [(sdk.accumulate_event, {}), (sdk.accumulate_beta_event, beta)]
    snapshot: Any = None
    for accumulate, extra in accumulations:
        snapshot = None
        for raw in (START, BLOCK, DELTA):
            snapshot = accumulate(event=raw, current_snapshot=snapshot, json_bufs={}, **extra)
        assert snapshot is not None
        assert snapshot.content[0].text == "hi"
    event = cast(Any, sdk.construct_type(type_=RawMessageStreamEvent, value=DELTA))
    derived: list[Any] = sdk.build_events(event=event, message_snapshot=snapshot)
    assert [e.type for e in derived] == ["content_block_delta", "text"]


def test_status_error_is_the_sdk_s_exception_for_an_http_error() -> None:
    """AsyncAnthropic._make_status_error_from_response: a 429 body becomes RateLimitError with its fields."""
    client = anthropic.AsyncAnthropic(api_key="k")
    request = httpx2.Request("POST", "https://example.invalid/v1/messages")
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    response = httpx2.Response(429, headers={"request-id": "req_1"}, content=body, request=request)
    error: Any = sdk.status_error(client, response)
    assert isinstance(error, anthropic.RateLimitError)
    assert (error.status_code, error.request_id, cast(Any, error.body)["error"]["type"]) == (
        429,
        "req_1",
        "rate_limit_error",
    )


def test_aiohttp_response_is_found_under_the_sdk_s_aiohttp_transport() -> None:
    """httpx's bound stream ``_stream`` wraps the SDK's AiohttpResponseStream, whose ``_aiohttp_response``
    is aiohttp's response; on httpx's own transport there is none."""
    import aiohttp

    async def go() -> None:
        async with Simulator(api_key=API_KEY) as sim:
            for http_client, found in (
                (anthropic.DefaultAioHttpClient(), True),
                (anthropic.DefaultAsyncHttpxClient(), False),
            ):
                async with anthropic.AsyncAnthropic(
                    base_url=sim.base_url, api_key=API_KEY, http_client=http_client
                ) as client:
                    body = {
                        "model": "claude-sonnet-4-6",
                        "max_tokens": 5,
                        "messages": [{"role": "user", "content": "x"}],
                    }
                    response = await client.post("/v1/messages", cast_to=httpx2.Response, body=body, stream=True)
                    try:
                        raw = sdk.aiohttp_response(response)
                        assert isinstance(raw, aiohttp.ClientResponse) == found
                    finally:
                        await response.aclose()

    run(go)


def test_forget_aws_sessions_makes_bedrock_clients_read_the_environment_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AnthropicBedrock clients built without credentials share one botocore session per process: a second key
    in the environment is not seen until ``forget_aws_sessions`` drops it."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "internals-secret")

    async def sign(sim: Simulator, key: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        client = anthropic.AsyncAnthropicBedrock(aws_region="us-east-1", base_url=sim.base_url, max_retries=0)
        async with client:
            await client.messages.create(
                model="anthropic.claude-sonnet-4-6-v1:0",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
            )

    async def go() -> list[str | None]:
        first, second = "AKIAINTERNALS0000001", "AKIAINTERNALS0000002"
        async with Simulator(platforms=["bedrock"]) as sim:
            sdk.forget_aws_sessions()
            await sign(sim, first)
            await sign(sim, second)  # the session of the first is kept
            sdk.forget_aws_sessions()
            await sign(sim, second)
            return [r.key for r in sim.requests]

    try:
        assert run(go) == ["AKIAINTERNALS0000001", "AKIAINTERNALS0000001", "AKIAINTERNALS0000002"]
    finally:
        sdk.forget_aws_sessions()
