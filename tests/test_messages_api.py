"""The Messages API on the HTTP port, driven by the official Python SDK on both of its transports.

The same SDK is pointed once at the gateway (its base URL the HTTP port, its API key a caller token)
and once at the simulator itself; what it gives through the gateway must be what it gives direct:
streamed text and final message for every body of the SDK stream corpus and the project's own
fixtures, created messages, token counts, the model list, and the error class of every refusal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import pytest

from server.limits.identity import token_hash
from server.ports.http.messages_api import GATEWAY_ERRORS, api_path, paged, sse
from server.reasons import Reason
from simulator import HttpError, Pace, Replay, Stall
from tests.corpus import OWN, sdk_streams, shared_streams
from tests.harness import API_KEY, ROOT, UNPACED, Harness, body, call_log, gateway, run, until
from tests.test_sdk_corpus import BETA, dispatched, relayable

TOKEN = "tok-sdk-caller"  # GATEWAY_AUTH_TOKEN: its holder is the caller "default"
TRANSPORTS = ["httpx", "aiohttp"]
MODEL = "claude-sonnet-4-6"


@asynccontextmanager
async def api_gateway(pace: Pace = UNPACED, /, **settings: Any) -> AsyncIterator[tuple[Harness, str]]:
    """A gateway with its HTTP port on and a caller token; the port's base URL."""
    settings.setdefault("auth_token", TOKEN)
    async with gateway(pace, http_listen="127.0.0.1:0", **settings) as h:
        yield h, f"http://127.0.0.1:{h.gateway.http_port}"


def sdk(base_url: str, api_key: str, transport: str, **options: Any) -> anthropic.AsyncAnthropic:
    """The official SDK on ``transport`` (httpx, its default, or aiohttp), no retries unless asked."""
    http = anthropic.DefaultAioHttpClient() if transport == "aiohttp" else anthropic.DefaultAsyncHttpxClient()
    options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key, http_client=http, **options)


def corpus() -> list[tuple[Path, bool]]:
    """Every body of the SDK stream corpus (with whether it is a beta one), the shared corpus
    (``../shared/fixtures/anthropic-sse``), then the project's own fixtures."""
    items: list[tuple[Path, bool]] = []
    for param in sdk_streams():
        for mark in param.marks:
            if mark.name == "skip":
                pytest.skip(mark.kwargs["reason"])
        path, entry = param.values
        items.append((path, entry["api"] == "beta"))
    return items + shared_streams() + [(p, False) for p in sorted(OWN.glob("*.sse"))]


async def streamed(client: anthropic.AsyncAnthropic, params: dict[str, Any], beta: bool) -> dict[str, Any]:
    """What ``messages.stream`` gives: the text pieces, then the final message or the error raised."""
    out: dict[str, Any] = {"text": [], "message": None, "error": None}
    helper = client.beta.messages.stream(**params, betas=[BETA]) if beta else client.messages.stream(**params)
    try:
        async with helper as stream:
            async for text in stream.text_stream:
                out["text"].append(text)
            out["message"] = (await stream.get_final_message()).to_dict(mode="json", warnings=False)
    except anthropic.APIStatusError as error:
        out["error"] = error_of(error)
    return out


async def created(client: anthropic.AsyncAnthropic, params: dict[str, Any], beta: bool) -> dict[str, Any]:
    """What ``messages.create`` (no stream) gives: the message or the error raised."""
    out: dict[str, Any] = {"message": None, "error": None}
    try:
        if beta:
            message: Any = await client.beta.messages.create(**params, betas=[BETA])
        else:
            message = await client.messages.create(**params)
        out["message"] = message.to_dict(mode="json", warnings=False)
    except anthropic.APIStatusError as error:
        out["error"] = error_of(error)
    return out


def body_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    """The error JSON the SDK read."""
    assert isinstance(error.body, dict)
    return error.body


def error_of(error: anthropic.APIStatusError) -> tuple[str, int, str | None]:
    """The SDK error's class, HTTP status and API error type."""
    inner = error.body.get("error") if isinstance(error.body, dict) else None
    return type(error).__name__, error.status_code, inner.get("type") if isinstance(inner, dict) else None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_stream_and_create_through_the_gateway_equal_the_sdk_direct_on_every_corpus_body(
    transport: str,
) -> None:
    """For every corpus body: the same text pieces and the same final message as the SDK reading the body
    straight from the upstream, and messages.create (no stream) gives that final message too. Where the
    body ends in an `error` event, the same error type (and, once events were relayed, the same error
    class); where it ends without message_stop (which the SDK lets pass), the gateway's `error` event
    says so (api_error) after the same text, and create is refused with 502 api_error."""
    items = corpus()

    async def go() -> dict[str, int]:
        ends = {"complete": 0, "error": 0, "incomplete": 0}
        async with api_gateway(max_attempts=1) as (h, url):
            through = sdk(url, TOKEN, transport)
            direct = sdk(h.sim.base_url, API_KEY, transport)
            try:
                for path, beta in items:
                    raw = path.read_bytes()
                    events, end = relayable(raw)
                    h.sim.enqueue(Replay(raw), Replay(raw), Replay(raw))
                    got = await streamed(through, body(), beta)
                    want = await streamed(direct, body(), beta)
                    whole = await created(through, body(), beta)  # to equal the final message of the stream
                    assert got["text"] == want["text"], path.name
                    kind = end.split(":")[0]
                    ends[kind] += 1
                    if kind == "complete":
                        assert got == want, path.name
                        assert whole == {"message": want["message"], "error": None}, path.name
                    elif kind == "error":
                        assert want["error"][2] == got["error"][2] == whole["error"][2] == end.split(":")[1], path.name
                        if events:
                            assert got["error"] == want["error"], path.name
                        else:  # refused before any event: the HTTP status of its type, as the API's own refusal
                            assert got["error"][1] == GATEWAY_STATUS[got["error"][2]], path.name
                        assert whole["error"][1] == GATEWAY_STATUS[whole["error"][2]], path.name
                    else:
                        assert want["error"] is None, path.name
                        status = ("APIStatusError", 200) if events else ("InternalServerError", 502)
                        assert got["error"] == (*status, "api_error"), path.name
                        assert whole["error"] == ("InternalServerError", 502, "api_error"), path.name
            finally:
                await through.close()
                await direct.close()
        return ends

    ends = run(go)
    assert ends["complete"] >= 50, ends
    assert ends["error"] >= 3, ends
    assert ends["incomplete"] >= 1, ends


GATEWAY_STATUS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429}


def test_a_stream_is_the_upstreams_bytes_where_the_gateway_changed_nothing() -> None:
    """Raw over HTTP, every corpus body comes back as the events an SSE reader dispatches from it, each
    framed `event: NAME` + `data: JSON` + blank line with the upstream's own data text; a body already
    in that form comes back byte for byte up to its message_stop. An error ends it with an `error` frame."""
    items = corpus()

    async def go() -> int:
        verbatim = 0
        async with api_gateway(max_attempts=1) as (h, url), aiohttp.ClientSession() as session:
            headers = {"authorization": f"Bearer {TOKEN}", "anthropic-version": "2026-10-21"}
            for path, _ in items:
                raw = path.read_bytes()
                events, end = relayable(raw)
                frames = [(n, d) for n, d in dispatched(raw) if n != "message"][: len(events)]
                h.sim.enqueue(Replay(raw))
                async with session.post(f"{url}/v1/messages", json={**body(), "stream": True}, headers=headers) as r:
                    got = await r.read()
                    content_type, request_id = r.headers["content-type"], r.headers.get("request-id")
                if not events:
                    continue  # refused before any event: an HTTP error, as the SDK test above checks
                assert content_type.startswith("text/event-stream"), path.name
                assert request_id == h.sim.requests[-1].request_id
                want = "".join(f"event: {n}\ndata: {d}\n\n" for n, d in frames).encode()
                if end == "complete":
                    assert got == want, path.name
                    verbatim += raw.startswith(want)
                else:
                    assert got.startswith(want), path.name
                    (name, data), *rest = dispatched(got[len(want) :])
                    assert (name, rest) == ("error", []), path.name
                    assert json.loads(data)["error"]["type"] == end.split(":")[1] if ":" in end else "api_error"
        return verbatim

    assert run(go) >= 10


def test_sse_framing_keeps_each_data_line() -> None:
    """Data of several lines (an upstream that split its JSON) keeps them, each its own `data:` line."""
    batch: list[tuple[str, dict[str, Any], str]] = [("ping", {}, '{"type": "ping"}'), ("x", {}, '{"a":\n1}')]
    assert sse(batch) == b'event: ping\ndata: {"type": "ping"}\n\nevent: x\ndata: {"a":\ndata: 1}\n\n'
    assert dispatched(sse(batch)) == [("ping", '{"type": "ping"}'), ("x", '{"a":\n1}')]


def comparable(value: Any) -> Any:
    """A message without what the simulator numbers by reply (ids, thinking signatures)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in ("id", "signature")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_create_count_and_list_through_the_gateway_equal_the_sdk_direct(transport: str) -> None:
    """messages.create (text, tools, thinking), messages.count_tokens, models.list and models.retrieve give
    through the gateway what they give direct; the beta flavours send their betas upstream."""

    async def go() -> None:
        async with api_gateway() as (h, url):
            through = sdk(url, TOKEN, transport)
            direct = sdk(h.sim.base_url, API_KEY, transport)
            try:
                for params in (
                    body("Hello gateway"),
                    body("Weather in Paris?", tools=TOOLS),
                    body("Think first", max_tokens=40, thinking={"type": "enabled", "budget_tokens": 20}),
                ):
                    # Every field as the SDK user reads it (a key the upstream left out reads as its default):
                    # the gateway's message is the stream's accumulation, which names stop_details (null).
                    got = (await through.messages.create(**params)).model_dump(mode="json")
                    want = (await direct.messages.create(**params)).model_dump(mode="json")
                    assert comparable(got) == comparable(want)
                    assert got["content"]
                    assert got["usage"]["output_tokens"] > 0
                    count = {k: v for k, v in params.items() if k != "max_tokens"}
                    assert await through.messages.count_tokens(**count) == await direct.messages.count_tokens(**count)
                got_beta = await through.beta.messages.count_tokens(**count, betas=[BETA])
                assert got_beta.input_tokens == (await direct.messages.count_tokens(**count)).input_tokens
                assert BETA in h.sim.requests[-2].headers["anthropic-beta"].split(",")
                listed = [m.to_dict(mode="json") async for m in through.models.list()]
                assert listed == [m.to_dict(mode="json") async for m in direct.models.list()]
                assert len(listed) >= 2
                page = await through.models.list(limit=1, after_id=str(listed[0]["id"]))
                assert [m.id for m in page.data] == [listed[1]["id"]]
                one = await through.models.retrieve(MODEL)
                assert one.to_dict(mode="json") == (await direct.models.retrieve(MODEL)).to_dict(mode="json")
                with pytest.raises(anthropic.NotFoundError):
                    await through.models.retrieve("claude-none-1")
            finally:
                await through.close()
                await direct.close()

    run(go)


ALPHA, BRAVO = "tok-alpha", "tok-bravo"
POLICY = """
models:
  chat: claude-sonnet-4-6
  fast: claude-haiku-4-5
  big: claude-opus-4-6
callers:
  alpha:
    models: [chat, claude-haiku-4-5, claude-private-1]
    max_tokens: 300
    requests_per_minute: 3
  bravo: {}
"""


def policy_files(tmp_path: Path, policy: str = POLICY) -> dict[str, str]:
    """Settings for token callers alpha and bravo under ``policy``."""
    callers = tmp_path / "callers"
    callers.write_text(f"{token_hash(ALPHA)} alpha\n{token_hash(BRAVO)} bravo\n")
    rules = tmp_path / "policy.yaml"
    rules.write_text(policy)
    return {"caller_identity": "token", "callers_file": str(callers), "policy_file": str(rules), "auth_token": ""}


async def raised(call: Any) -> anthropic.APIStatusError:
    """The SDK error ``call`` (an awaitable) raises."""
    with pytest.raises(anthropic.APIStatusError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_refusal_raises_the_error_class_the_sdk_raises_for_the_apis_own(transport: str, tmp_path: Path) -> None:
    """Unknown token, a model the policy does not allow, a bad body, a request over the caller's rate, an
    unknown model: through the gateway the SDK raises the class (and status, and error type) it raises
    when the API itself refuses so, with the API's error JSON and a request id."""

    async def go() -> None:
        async with api_gateway(**policy_files(tmp_path)) as (h, url):
            alpha = sdk(url, ALPHA, transport)
            stranger = sdk(url, "tok-unknown", transport)
            direct = sdk(h.sim.base_url, API_KEY, transport)
            wrong_key = sdk(h.sim.base_url, "sk-wrong", transport)
            try:
                pairs = []
                pairs.append(
                    (
                        await raised(stranger.messages.create(**body())),
                        await raised(wrong_key.messages.create(**body())),
                    )
                )
                h.sim.enqueue(HttpError(403, "permission_error"))
                pairs.append(
                    (
                        await raised(alpha.messages.create(**body(model="big"))),
                        await raised(direct.messages.create(**body())),
                    )
                )
                pairs.append(
                    (
                        await raised(alpha.messages.create(**body(max_tokens=0))),
                        await raised(direct.messages.create(**body(max_tokens=0))),
                    )
                )
                for _ in range(3):  # alpha's three requests of the minute (refusals before the quota count none)
                    await alpha.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "Hi"}])
                h.sim.enqueue(HttpError(429, "rate_limit_error", retry_after=30))
                pairs.append(
                    (
                        await raised(alpha.messages.create(**body(model="chat"))),
                        await raised(direct.messages.create(**body())),
                    )
                )
                pairs.append((await raised(alpha.models.retrieve("big")), await raised(direct.models.retrieve("big"))))
                classes = [
                    anthropic.AuthenticationError,
                    anthropic.PermissionDeniedError,
                    anthropic.BadRequestError,
                    anthropic.RateLimitError,
                    anthropic.NotFoundError,
                ]
                for (got, want), cls in zip(pairs, classes, strict=True):
                    assert type(got) is type(want) is cls
                    assert error_of(got) == error_of(want)
                    assert got.request_id
                    assert got.request_id.startswith("req_")
                    assert body_of(got)["type"] == "error"
                    assert body_of(got)["request_id"] == got.request_id
                rate = pairs[3][0]
                waits = float(rate.response.headers["retry-after"]), int(rate.response.headers["retry-after-ms"])
                assert waits[0] > 0
                assert waits[0] - 1 < waits[1] / 1000 <= waits[0]
                assert "requests_per_minute" in rate.message
                assert body_of(pairs[2][0])["error"]["message"] == "max_tokens: must be at least 1, got 0"
                # Upstream: the direct calls, alpha's counts and the model list; the gateway's refusals sent nothing.
                direct_paths = ["/v1/messages"] * 3 + ["/v1/messages/count_tokens"] * 3 + ["/v1/messages"]
                assert [r.path for r in h.sim.requests] == [*direct_paths, "/v1/models", "/v1/models/big"]
            finally:
                for client in (alpha, stranger, direct, wrong_key):
                    await client.close()

    run(go)


def test_the_sdk_waits_the_retry_after_of_a_quota_refusal_then_its_retry_is_admitted(tmp_path: Path) -> None:
    """A caller at its concurrent_streams limit gets 429 with retry-after (1 s); the SDK waits that long
    (its own backoff would be at most 0.5 s) and its retry, once the other stream has ended, streams."""
    policy = "callers:\n  alpha:\n    concurrent_streams: 1\n"
    seen: list[tuple[float, int]] = []

    async def hook(response: httpx2.Response) -> None:
        seen.append((time.monotonic(), response.status_code))

    async def go() -> None:
        async with api_gateway(Pace(tokens_per_second=50), **policy_files(tmp_path, policy)) as (_, url):
            http = anthropic.DefaultAsyncHttpxClient(event_hooks={"response": [hook]})
            alpha = anthropic.AsyncAnthropic(base_url=url, api_key=ALPHA, http_client=http, max_retries=2)
            holder = sdk(url, ALPHA, "httpx")
            try:
                async with holder.messages.stream(**body("hold [[sim:tokens 2000]]")) as held:
                    await anext(aiter(held.text_stream))
                    second = asyncio.ensure_future(alpha.messages.create(**body("Hi [[sim:tokens 3]]")))
                    await until(lambda: len(seen) == 1)
                assert seen[0][1] == 429  # the held stream is closed: the retry is admitted
                message = await second
                assert message.content[0].text.startswith("Hi")
                assert message.stop_reason == "end_turn"
                assert [status for _, status in seen] == [429, 200]
                assert seen[1][0] - seen[0][0] >= 0.9  # the retry-after (1 s), not the SDK's backoff
            finally:
                await alpha.close()
                await holder.close()

    run(go)


def test_the_sdk_timeout_is_the_calls_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """x-stainless-timeout (the SDK's timeout, in seconds) bounds the call: a stalled upstream ends it at
    that deadline with 504 timeout_error and the gateway's DEADLINE_EXCEEDED."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with api_gateway() as (h, url), aiohttp.ClientSession() as session:
            h.sim.enqueue(Stall(after_events=-1))
            headers = {"x-api-key": TOKEN, "x-stainless-timeout": "0.5"}
            started = time.monotonic()
            async with session.post(f"{url}/v1/messages", json=body(), headers=headers) as r:
                assert r.status == 504
                error = await r.json()
            assert time.monotonic() - started >= 0.5
            assert error["error"]["type"] == "timeout_error"
            logged = [r.getMessage() for r in caplog.records if r.name == "server.call"]
            assert len(logged) == 1, logged
            line = json.loads(logged[0])
            assert (line["status"], line["reason"]) == ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")

    run(go)


def test_anthropic_version_and_beta_headers_go_upstream() -> None:
    """The SDK's anthropic-version and anthropic-beta go upstream as it sent them: under 2023-06-01 the
    upstream takes temperature, under the gateway's own version it refuses it (400, passed on)."""

    async def go() -> None:
        async with api_gateway() as (h, url):
            old = sdk(url, TOKEN, "httpx", default_headers={"anthropic-version": "2023-06-01"})
            new = sdk(url, TOKEN, "httpx")
            try:
                betas = [BETA, "other-2025-02-02"]
                message = await old.beta.messages.create(**body(), extra_body={"temperature": 0.5}, betas=betas)
                assert message.content
                sent = h.sim.requests[-1]
                assert (sent.headers["anthropic-version"], sent.headers["anthropic-beta"]) == (
                    "2023-06-01",
                    f"{BETA},other-2025-02-02",
                )
                assert sent.body["temperature"] == 0.5
                error = await raised(new.messages.create(**body(), extra_body={"temperature": 0.5}))
                assert error_of(error) == ("BadRequestError", 400, "invalid_request_error")
                assert "temperature" in error.message
                assert h.sim.requests[-1].headers["anthropic-version"] == "2026-10-21"
                bad = await raised(
                    sdk(url, TOKEN, "httpx", default_headers={"anthropic-version": "v2"}).messages.create(**body())
                )
                assert error_of(bad) == ("BadRequestError", 400, "invalid_request_error")
                assert body_of(bad)["error"]["message"].startswith("anthropic_version: must be an API version date")
            finally:
                await old.close()
                await new.close()

    run(go)


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "kind", "message"),
    [
        ("POST", "/v1/messages", b"not json", 400, "invalid_request_error", "body: not JSON"),
        ("POST", "/v1/messages", b"[1]", 400, "invalid_request_error", "body: not a request"),
        ("POST", "/v1/messages", b'{"stream": "yes"}', 400, "invalid_request_error", "stream: not a boolean"),
        ("POST", "/v1/messages", b'{"model": "m", "max_tokens": 9, "messages": []}', 400, "invalid_request_error",
         "messages: required"),
        ("POST", "/v1/messages", b'{"messages": [{"role": "x", "content": "Hi"}]}', 400, "invalid_request_error",
         "model: required"),
        ("POST", "/v1/messages", b"{" + b'"a":' * 100 + b"1" + b"}" * 100, 400, "invalid_request_error", "body:"),
        ("GET", "/v1/messages", b"", 405, "invalid_request_error", "method GET is not allowed"),
        ("POST", "/v1/complete", b"{}", 404, "not_found_error", "no such path"),
        ("POST", "/v1/messages/count_tokens", b'{"model": "m"}', 400, "invalid_request_error", "messages: required"),
    ],
)  # fmt: skip
def test_bad_requests_are_the_apis_error_json_and_never_go_upstream(
    method: str, path: str, data: bytes, status: int, kind: str, message: str
) -> None:
    """Bad bodies, methods and paths: the API's error JSON with its status and a request id; nothing upstream."""

    async def go() -> None:
        async with api_gateway() as (h, url), aiohttp.ClientSession() as session:
            headers = {"x-api-key": TOKEN, "content-type": "application/json"}
            async with session.request(method, f"{url}{path}", data=data, headers=headers) as r:
                assert r.status == status
                error = await r.json()
                assert r.headers["request-id"] == error["request_id"]
            assert error["type"] == "error"
            assert error["error"]["type"] == kind
            assert error["error"]["message"].startswith(message), error
            assert h.sim.requests == []

    run(go)


def test_a_body_over_the_message_limit_is_request_too_large() -> None:
    """A body over GATEWAY_MAX_MESSAGE_BYTES is 413 request_too_large, read no further."""

    async def go() -> None:
        async with api_gateway(max_message_bytes=64 * 1024) as (h, url), aiohttp.ClientSession() as session:
            data = json.dumps(body("x " * 40_000)).encode()
            async with session.post(f"{url}/v1/messages", data=data, headers={"x-api-key": TOKEN}) as r:
                assert r.status == 413
                assert (await r.json())["error"]["type"] == "request_too_large"
            assert h.sim.requests == []

    run(go)


def test_count_tokens_counts_against_the_request_rate_only(tmp_path: Path) -> None:
    """CountTokens is the upstream's count (gRPC and HTTP alike) of the body without max_tokens and the
    rest only generation uses; it counts against requests_per_minute and never against tokens."""
    from claude_gateway.client import stream_request
    from claude_gateway.v1 import chat_pb2 as pb

    policy = "callers:\n  alpha:\n    requests_per_minute: 2\n    tokens_per_minute: 1000\n"

    async def go() -> None:
        async with api_gateway(**policy_files(tmp_path, policy)) as (h, url):
            alpha = sdk(url, ALPHA, "httpx")
            try:
                params = body("one two three", stop_sequences=["x"], metadata={"user_id": "u"})
                request = pb.CountTokensRequest(params=stream_request(params).params)
                grpc_count = await h.stub.CountTokens(request, metadata=(("authorization", f"Bearer {ALPHA}"),))
                assert h.sim.requests[-1].body == {"model": MODEL, "messages": params["messages"]}
                count = await alpha.messages.count_tokens(model=MODEL, messages=params["messages"])
                assert count.input_tokens == grpc_count.input_tokens == 3
                error = await raised(alpha.messages.count_tokens(model=MODEL, messages=params["messages"]))
                assert error_of(error)[:2] == ("RateLimitError", 429)
                assert h.gateway.admission.quotas.usage("alpha") == (0, 2, 0)  # type: ignore[attr-defined]
            finally:
                await alpha.close()

    run(go)


def test_the_error_table_names_every_gateway_failure_and_fields_read_as_the_api_writes_them() -> None:
    """Every reason of the gateway's own has its HTTP status and API error type; field paths lose "params."."""
    assert set(GATEWAY_ERRORS) == {r.name for r in Reason}
    assert api_path("params.messages[0].content[12].text") == "messages.0.content.12.text"
    assert api_path("betas[1]") == "betas.1"
    statuses = {status for status, _ in GATEWAY_ERRORS.values()}
    assert statuses <= {400, 401, 403, 404, 429, 500, 502, 504, 529}


def test_model_pages_follow_limit_after_id_and_before_id() -> None:
    """GET /v1/models pages as the API's: 20 by default, after_id / before_id cursors, has_more."""
    data = [{"id": f"m{i}"} for i in range(25)]
    first = paged(data, {})
    assert isinstance(first, dict)
    assert (len(first["data"]), first["has_more"], first["first_id"], first["last_id"]) == (20, True, "m0", "m19")
    rest = paged(data, {"after_id": ["m19"]})
    assert isinstance(rest, dict)
    assert ([m["id"] for m in rest["data"]], rest["has_more"]) == (["m20", "m21", "m22", "m23", "m24"], False)
    back = paged(data, {"before_id": ["m3"], "limit": ["2"]})
    assert isinstance(back, dict)
    assert ([m["id"] for m in back["data"]], back["has_more"]) == (["m1", "m2"], True)
    assert paged(data, {"limit": ["0"]}) == "limit: must be a whole number from 1 to 1000"
    assert paged([], {}) == {"data": [], "has_more": False, "first_id": None, "last_id": None}


def test_log_lines_never_hold_the_caller_token(caplog: pytest.LogCaptureFixture) -> None:
    """Neither the x-api-key nor a bearer token reaches a log line, a refusal's message or the upstream."""
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with api_gateway() as (h, url), aiohttp.ClientSession() as session:
            for headers in ({"x-api-key": TOKEN}, {"authorization": f"Bearer {TOKEN}"}, {"x-api-key": "tok-nope"}):
                async with session.post(f"{url}/v1/messages", json=body(), headers=headers) as r:
                    text = await r.text()
                    assert TOKEN not in text
                    assert "tok-nope" not in text
            assert [r.headers.get("authorization") for r in h.sim.requests] == [f"Bearer {API_KEY}"] * 2
            assert all("x-api-key" not in r.headers for r in h.sim.requests)
            lines = call_log("\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records))
            assert [line["status"] for line in lines] == ["OK", "OK", "UNAUTHENTICATED"]
            assert TOKEN not in caplog.text
            assert "tok-nope" not in caplog.text

    run(go)


def test_the_docs_error_table_is_the_ports_error_table() -> None:
    """docs/api.md's table of the gateway's failures on the HTTP port is exactly GATEWAY_ERRORS."""
    from tests.test_docs import API, table_rows

    rows = {
        row[0].strip("`"): (int(row[1]), row[2].strip("`")) for row in table_rows("| reason (ErrorInfo) | HTTP |", API)
    }
    assert rows == GATEWAY_ERRORS


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_of_v1_messages_streams_the_apis_events() -> None:
    """The README's curl of /v1/messages, run as written, prints the API's server-sent events to message_stop."""
    from tests.test_web import marked_shell_block

    script = marked_shell_block(ROOT / "README.md", "curl-messages")

    async def go() -> None:
        async with api_gateway(auth_token="") as (h, url):
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", script.replace("http://127.0.0.1:8080", url), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            frames = dispatched(out)
            assert [name for name, _ in frames][:2] == ["message_start", "content_block_start"]
            assert frames[-1] == ("message_stop", '{"type":"message_stop"}')
            text = "".join(json.loads(d)["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
            assert text.startswith("Hello the simulator")
            assert len(h.sim.requests) == 1

    run(go)


def test_the_pools_refusals_are_the_errors_the_sdk_knows(tmp_path: Path) -> None:
    """A model no backend serves is the SDK's NotFoundError (404 not_found_error, as the API's for a model it
    does not know); a model whose every key is dead is 529 overloaded_error that the SDK does not retry
    (x-should-retry: false), and neither goes upstream."""
    from simulator import SpendLimit
    from tests.pools import pools

    async def go() -> None:
        async with pools(tmp_path, ("anthropic",), options={"anthropic": {"models": {MODEL: MODEL}}}) as p:
            sim = p.sims["anthropic"]
            client = anthropic.AsyncAnthropic(base_url=p.http_url, api_key="tok-any", max_retries=2)
            try:
                unknown = await raised(client.messages.create(**body(model="claude-haiku-4-5")))
                assert error_of(unknown) == ("NotFoundError", 404, "not_found_error")
                assert "claude-haiku-4-5" in unknown.message
                assert sim.requests == []
                sim.enqueue(SpendLimit())
                await raised(client.messages.create(**body()))  # the spend limit: the only key is dead
                sent = len(sim.requests)
                dead = await raised(client.messages.create(**body()))
                assert error_of(dead) == ("OverloadedError", 529, "overloaded_error")
                assert dead.response.headers["x-should-retry"] == "false"
                assert "retry-after" not in dead.response.headers
                assert len(sim.requests) == sent  # not sent, and not retried by the SDK
            finally:
                await client.close()

    run(go)
