"""The simulator as Amazon Bedrock and Google Vertex AI, driven by the SDK's real AsyncAnthropicBedrock and
AsyncAnthropicVertex (credentials as arguments and from the environment), and by raw httpx2 where bytes matter;
faults and rate limits per platform and per key; several simulators, one backend each."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import MessageParam
from claude_gateway import sdk
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.upstream.eventstream import BedrockStreamError, EventStreamDecoder, EventStreamError, bedrock_event
from simulator import HttpError, Limits, Malformed, Replay, Simulator, SpendLimit, key_id
from tests.harness import run

ROOT = Path(__file__).resolve().parents[1]
ANTHROPIC_MODEL = "claude-sonnet-4-6"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-6-v1:0"
VERTEX_MODEL = "claude-sonnet-4-5@20250929"
ACCESS_KEY, SECRET = "AKIASIMULATOR0000001", "fake-secret"
TOKEN = "ya29.fake-access-token"
HELLO: list[MessageParam] = [{"role": "user", "content": "hello brave new world"}]


def bedrock(sim: Simulator, **credentials: Any) -> anthropic.AsyncAnthropicBedrock:
    """Bedrock's client aimed at `sim`, SigV4 with fake keys unless other credentials are given."""
    given = credentials or {"aws_access_key": ACCESS_KEY, "aws_secret_key": SECRET}
    return anthropic.AsyncAnthropicBedrock(aws_region="us-east-1", base_url=sim.base_url, max_retries=0, **given)


def vertex(sim: Simulator, token: str = TOKEN) -> anthropic.AsyncAnthropicVertex:
    """Vertex's client aimed at `sim`: Vertex's base URL ends in /v1, the paths start at /projects."""
    return anthropic.AsyncAnthropicVertex(
        region="us-east5", project_id="sim-project", access_token=token, base_url=f"{sim.base_url}/v1", max_retries=0
    )


def direct(sim: Simulator, key: str = "sk-ant-sim") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=key, max_retries=0)


Client = anthropic.AsyncAnthropic | anthropic.AsyncAnthropicBedrock | anthropic.AsyncAnthropicVertex


def clients(sim: Simulator) -> dict[str, tuple[Client, str]]:
    """Each platform's client of `sim` and the model id it names."""
    return {
        "anthropic": (direct(sim), ANTHROPIC_MODEL),
        "bedrock": (bedrock(sim), BEDROCK_MODEL),
        "vertex": (vertex(sim), VERTEX_MODEL),
    }


async def streamed(client: Client, model: str, prompt: str = "hello brave new world") -> tuple[list[Any], str]:
    """Every raw event of one streamed reply, and its text."""
    messages: list[MessageParam] = [{"role": "user", "content": prompt}]
    stream = await client.messages.create(model=model, max_tokens=100, messages=messages, stream=True)
    events = [event async for event in stream]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    return events, text


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[Simulator]:
    async with Simulator(**options) as sim:
        yield sim


def _shape(event: Any) -> dict[str, Any]:
    """An event without the model's name, which each platform names its own way, and Bedrock's metrics."""
    return dict(event.model_dump(exclude={"message", "amazon-bedrock-invocationMetrics"}))


def test_the_sdks_platform_clients_stream_the_same_reply() -> None:
    """AsyncAnthropicBedrock (SigV4 and a Bedrock API key) and AsyncAnthropicVertex stream, and receive whole,
    the same reply as AsyncAnthropic, event for event; each request is recorded with its platform, key and model,
    and its body is what the platform takes."""

    async def go() -> None:
        async with served() as sim:
            replies = {name: await streamed(client, model) for name, (client, model) in clients(sim).items()}
            keyed, _ = await streamed(bedrock(sim, api_key="bedrock-api-key"), BEDROCK_MODEL)
            wholes = {
                name: await client.messages.create(model=model, max_tokens=100, messages=HELLO)
                for name, (client, model) in clients(sim).items()
            }
        _, text = replies["anthropic"]
        assert text.startswith("hello brave new world the simulator")
        shapes = {name: [_shape(e) for e in events] for name, (events, _) in replies.items()}
        assert shapes["bedrock"] == shapes["anthropic"] == shapes["vertex"]
        assert [_shape(e) for e in keyed] == shapes["anthropic"]
        assert replies["bedrock"][0][-1].model_extra == {
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 4,
                "outputTokenCount": 24,
                "invocationLatency": 0,
                "firstByteLatency": 0,
            }
        }
        assert {name: reply[1] for name, reply in replies.items()} == dict.fromkeys(replies, text)
        assert {name: m.content[0].text for name, m in wholes.items() if m.content[0].type == "text"} == dict.fromkeys(
            wholes,
            text[: len(wholes["anthropic"].content[0].text)],  # type: ignore[union-attr]
        )
        assert replies["bedrock"][0][0].message.model == BEDROCK_MODEL
        assert replies["vertex"][0][0].message.model == VERTEX_MODEL
        seen = [(r.platform, r.key, r.model, r.status) for r in sim.requests]
        assert seen == [
            ("anthropic", "sk-ant-sim", ANTHROPIC_MODEL, 200),
            ("bedrock", ACCESS_KEY, BEDROCK_MODEL, 200),
            ("vertex", TOKEN, VERTEX_MODEL, 200),
            ("bedrock", "bedrock-api-key", BEDROCK_MODEL, 200),
            ("anthropic", "sk-ant-sim", ANTHROPIC_MODEL, 200),
            ("bedrock", ACCESS_KEY, BEDROCK_MODEL, 200),
            ("vertex", TOKEN, VERTEX_MODEL, 200),
        ]
        signed, stream_path = sim.requests[1], "/model/anthropic.claude-sonnet-4-6-v1:0"
        assert signed.path == f"{stream_path}/invoke-with-response-stream"
        assert sim.requests[5].path == f"{stream_path}/invoke"
        assert re.fullmatch(
            rf"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/\d{{8}}/us-east-1/bedrock/aws4_request, "
            r"SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}",
            signed.headers["authorization"],
        )
        assert sim.requests[3].headers["authorization"] == "Bearer bedrock-api-key"
        assert sorted(signed.body) == ["anthropic_version", "max_tokens", "messages"]
        vertexed = sim.requests[2]
        assert vertexed.path == (
            f"/v1/projects/sim-project/locations/us-east5/publishers/anthropic/models/{VERTEX_MODEL}:streamRawPredict"
        )
        assert sim.requests[6].path.endswith(":rawPredict")
        assert sorted(vertexed.body) == ["anthropic_version", "max_tokens", "messages", "stream"]
        assert vertexed.headers["authorization"] == f"Bearer {TOKEN}"
        assert signed.anthropic_version == vertexed.anthropic_version == anthropic._constants.ANTHROPIC_API_VERSION

    run(go)


def test_platform_clients_take_their_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Constructed with no arguments, AsyncAnthropicBedrock signs with AWS_ACCESS_KEY_ID (or sends
    AWS_BEARER_TOKEN_BEDROCK) to ANTHROPIC_BEDROCK_BASE_URL; AsyncAnthropicVertex finds its region, project
    and base URL in the environment and, with no token given, its application default credentials in
    GOOGLE_APPLICATION_CREDENTIALS (a service account, whose token_uri the simulator plays). Nothing leaves
    loopback."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    adc = tmp_path / "service-account.json"
    account = {
        "type": "service_account",
        "project_id": "adc-project",
        "private_key_id": "1",
        "private_key": pem.decode(),
        "client_email": "gateway@adc-project.iam.gserviceaccount.com",
        "client_id": "1",
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("CLOUD_ML_REGION", "europe-west1")
    monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", "env-project")

    sdk.forget_aws_sessions()  # the SDK's session of another test's environment

    async def go() -> None:
        async with served(keys=["AKIAFROMENVIRONMENT1", "env-bedrock-key"]) as sim:
            monkeypatch.setenv("ANTHROPIC_BEDROCK_BASE_URL", sim.base_url)
            monkeypatch.setenv("ANTHROPIC_VERTEX_BASE_URL", f"{sim.base_url}/v1")
            adc.write_text(json.dumps({**account, "token_uri": f"{sim.base_url}/token"}))
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
            _, signed = await streamed(anthropic.AsyncAnthropicBedrock(max_retries=0), BEDROCK_MODEL)
            monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "env-bedrock-key")
            _, keyed = await streamed(anthropic.AsyncAnthropicBedrock(max_retries=0), BEDROCK_MODEL)
            _, minted = await streamed(anthropic.AsyncAnthropicVertex(max_retries=0), VERTEX_MODEL)
        assert signed == keyed == minted != ""
        assert [(r.platform, r.key, r.status) for r in sim.requests] == [
            ("bedrock", "AKIAFROMENVIRONMENT1", 200),
            ("bedrock", "env-bedrock-key", 200),
            ("vertex", "ya29.sim-1", 200),
        ]
        assert "/eu-west-3/bedrock/" in sim.requests[0].headers["authorization"]
        assert sim.requests[2].path.startswith("/v1/projects/env-project/locations/europe-west1/")
        assert sim.tokens_issued == 1

    run(go)


async def _post(url: str, body: object, headers: dict[str, str]) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.post(url, content=json.dumps(body).encode(), headers=headers)


def test_credentials_are_checked_as_each_platform_does() -> None:
    """Bedrock answers 403 without an Authorization it can read (SigV4 or Bearer) or with a key it does not
    know; Vertex answers 401 in Google's shape without a bearer token; nothing reaches the model."""
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": HELLO}
    sigv4 = "AWS4-HMAC-SHA256 Credential=AKIA1/20261021/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature="

    async def go() -> None:
        async with served(keys=["AKIA1", "known"]) as sim:
            path = f"{sim.base_url}/model/m/invoke"
            answers = [
                await _post(path, body, {}),
                await _post(path, body, {"authorization": "Basic abc"}),
                await _post(path, body, {"authorization": sigv4 + "0" * 64}),  # no x-amz-date
                await _post(path, body, {"authorization": sigv4 + "xyz", "x-amz-date": "20261021T000000Z"}),
                await _post(path, body, {"authorization": "Bearer unknown"}),
                await _post(path, body, {"authorization": sigv4 + "0" * 64, "x-amz-date": "20261021T000000Z"}),
            ]
            vertex_path = f"{sim.base_url}/v1/projects/p/locations/r/publishers/anthropic/models/m:rawPredict"
            vertex_body = {**body, "anthropic_version": "vertex-2023-10-16"}
            unauthenticated = await _post(vertex_path, vertex_body, {"x-api-key": "known"})
            unknown = await _post(vertex_path, vertex_body, {"authorization": "Bearer other"})
        assert [(a.status_code, a.headers.get("x-amzn-errortype", "").partition(":")[0]) for a in answers] == [
            (403, "MissingAuthenticationTokenException"),
            (403, "MissingAuthenticationTokenException"),
            (403, "IncompleteSignatureException"),
            (403, "IncompleteSignatureException"),
            (403, "UnrecognizedClientException"),
            (200, ""),
        ]
        assert answers[0].json() == {"message": "Missing Authentication Token"}
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["status"] == "UNAUTHENTICATED"
        assert unknown.json()["error"] == {
            "code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED",
        }
        assert [r.status for r in sim.requests] == [403, 403, 403, 403, 403, 200, 401, 401]

    run(go)


def test_bodies_are_checked_as_each_platform_takes_them() -> None:
    """Bedrock refuses `model` or `stream` in the body and both refuse a missing or unknown anthropic_version
    (400, in each platform's shape); each platform's own version is taken and recorded; unknown paths are 404."""
    base = {"max_tokens": 5, "messages": HELLO}

    async def go() -> None:
        async with served() as sim:
            signed = {"authorization": "Bearer k"}
            path = f"{sim.base_url}/model/{BEDROCK_MODEL}/invoke"
            vertex_path = f"{sim.base_url}/v1/projects/p/locations/r/publishers/anthropic/models/m:rawPredict"
            bedrock_answers = [
                await _post(path, {**base, "anthropic_version": "bedrock-2023-05-31", "model": "m"}, signed),
                await _post(path, {**base, "anthropic_version": "bedrock-2023-05-31", "stream": True}, signed),
                await _post(path, base, signed),
                await _post(path, {**base, "anthropic_version": "2020-01-01"}, signed),
                await _post(path, {**base, "anthropic_version": "bedrock-2023-05-31", "max_tokens": 0}, signed),
                await _post(path, {**base, "anthropic_version": "bedrock-2023-05-31"}, signed),
            ]
            vertex_answers = [
                await _post(vertex_path, base, signed),
                await _post(vertex_path, {**base, "anthropic_version": "vertex-2023-10-16"}, signed),
            ]
            missing = [
                await _post(f"{sim.base_url}/model/m/converse", base, signed),
                await _post(f"{sim.base_url}/v1/projects/p/locations/r/publishers/google/models/m:rawPredict", {}, {}),
            ]
        messages = [a.json().get("message") for a in bedrock_answers[:5]]
        assert messages == [
            "Malformed input request: #: extraneous key [model] is not permitted",
            "Malformed input request: #: extraneous key [stream] is not permitted",
            "anthropic_version: Field required",
            "anthropic_version: '2020-01-01' is not a supported version"
            " (bedrock-2023-05-31 or 2023-06-01 or 2026-10-21)",
            "max_tokens: Field required, an integer greater than or equal to 1",
        ]
        assert {a.headers["x-amzn-errortype"].partition(":")[0] for a in bedrock_answers[:5]} == {"ValidationException"}
        assert bedrock_answers[5].json()["content"][0]["text"] == "hello brave new world the"
        assert vertex_answers[0].status_code == 400
        assert vertex_answers[0].json()["error"]["type"] == "invalid_request_error"
        assert vertex_answers[1].status_code == 200
        assert [a.status_code for a in missing] == [404, 404]
        assert [r.anthropic_version for r in sim.requests[5:8]] == ["bedrock-2023-05-31", None, "vertex-2023-10-16"]

    run(go)


# What each platform answers for each fault: status, the SDK's exception, where the error's kind shows.
HTTP_FAULTS: dict[str, dict[str, tuple[int, type, str]]] = {
    "[[sim:http_error 529]]": {
        "anthropic": (529, anthropic.OverloadedError, "overloaded_error"),
        "bedrock": (503, anthropic.ServiceUnavailableError, "ServiceUnavailableException"),
        "vertex": (529, anthropic.OverloadedError, "overloaded_error"),
    },
    "[[sim:http_error 429 rate_limit_error 7]]": {
        "anthropic": (429, anthropic.RateLimitError, "rate_limit_error"),
        "bedrock": (429, anthropic.RateLimitError, "ThrottlingException"),
        "vertex": (429, anthropic.RateLimitError, "RESOURCE_EXHAUSTED"),
    },
    "[[sim:spend_limit]]": {
        "anthropic": (429, anthropic.RateLimitError, "rate_limit_error"),
        "bedrock": (403, anthropic.PermissionDeniedError, "AccessDeniedException"),
        "vertex": (403, anthropic.PermissionDeniedError, "PERMISSION_DENIED"),
    },
}


def _kind(platform: str, error: anthropic.APIStatusError) -> str:
    body: Any = error.body
    if platform == "bedrock":
        return error.response.headers["x-amzn-errortype"].partition(":")[0]
    if platform == "vertex" and "status" in body.get("error", {}):
        return str(body["error"]["status"])
    return str(body["error"]["type"])


@pytest.mark.parametrize("directive", HTTP_FAULTS)
def test_http_faults_in_each_platforms_words(directive: str) -> None:
    """529, a 429 with retry-after and a spend-limit 429 reach each platform's SDK client as that platform
    says them; retry-after only where it was asked for."""

    async def go() -> None:
        async with served() as sim:
            caught: dict[str, anthropic.APIStatusError] = {}
            for name, (client, model) in clients(sim).items():
                with pytest.raises(anthropic.APIStatusError) as raised:
                    await client.messages.create(
                        model=model, max_tokens=5, messages=[{"role": "user", "content": directive}]
                    )
                caught[name] = raised.value
        for name, (status, exception, kind) in HTTP_FAULTS[directive].items():
            error = caught[name]
            assert (error.status_code, type(error), _kind(name, error)) == (status, exception, kind)
            assert ("retry-after" in error.response.headers) == ("429" in directive)
        if "spend_limit" in directive:
            message = caught["anthropic"].body["error"]["message"]  # type: ignore[index]
            assert re.fullmatch(
                r"You have reached your specified workspace API usage limits\. "
                r"You will regain access on \d{4}-\d{2}-01 at 00:00 UTC\.",
                message,
            )
        assert sim.count() == 3

    run(go)


@pytest.mark.parametrize(("after", "deltas"), [(3, 0), (5, 2)], ids=["before-first-delta", "after-first-delta"])
def test_in_stream_errors_on_each_platform(after: int, deltas: int) -> None:
    """An in-stream overloaded_error, before the first content delta or after two, ends each platform's
    stream: an `error` event on the Messages API and Vertex, a throttlingException message on Bedrock, which
    the gateway's decoder reads as a typed error."""

    async def go() -> None:
        async with served() as sim:
            prompt = f"[[sim:error_event {after}]] hi"
            got: dict[str, tuple[int, Any]] = {}
            for name, (client, model) in clients(sim).items():
                seen: list[Any] = []
                with pytest.raises(anthropic.APIStatusError) as caught:
                    stream = await client.messages.create(
                        model=model, max_tokens=50, messages=[{"role": "user", "content": prompt}], stream=True
                    )
                    async for event in stream:
                        seen.append(event)
                got[name] = (sum(e.type == "content_block_delta" for e in seen), caught.value.body)
            raw = await _bedrock_raw(sim, prompt)
        assert {name: count for name, (count, _) in got.items()} == dict.fromkeys(got, deltas)
        assert got["anthropic"][1]["error"]["type"] == got["vertex"][1]["error"]["type"] == "overloaded_error"
        assert got["bedrock"][1]["error"] == {"type": "throttlingException", "message": "Overloaded"}
        events, failure = raw
        assert sum(b'"content_block_delta"' in e for e in events) == deltas
        assert isinstance(failure, BedrockStreamError)
        assert (failure.error_type, failure.message) == ("throttlingException", "Overloaded")

    run(go)


async def _bedrock_raw(sim: Simulator, prompt: str, **body: Any) -> tuple[list[bytes], Exception | None]:
    """A Bedrock stream read with raw httpx2 and the gateway's decoder: the events, then the failure if any."""
    url = f"{sim.base_url}/model/{BEDROCK_MODEL}/invoke-with-response-stream"
    request = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": prompt}],
        **body,
    }
    events: list[bytes] = []
    decoder = EventStreamDecoder()
    async with (
        httpx2.AsyncClient() as http,
        http.stream("POST", url, content=json.dumps(request).encode(), headers={"authorization": "Bearer k"}) as answer,
    ):
        assert answer.headers["content-type"] == "application/vnd.amazon.eventstream"
        try:
            async for chunk in answer.aiter_raw():
                for message in decoder.feed(chunk):
                    event = bedrock_event(message)
                    if event is not None:
                        events.append(event)
            decoder.end()
        except (BedrockStreamError, EventStreamError) as exc:
            return events, exc
    return events, None


def test_bedrock_replies_decode_with_the_gateways_decoder() -> None:
    """A Bedrock reply is the Messages API's events in chunks, message_stop with Bedrock's invocation
    metrics; a malformed frame is one whose CRC is wrong; a replayed SSE recording is re-framed."""

    async def go() -> None:
        async with served() as sim:
            events, failure = await _bedrock_raw(sim, "hello brave new world")
            sim.enqueue(Malformed(4), platform="bedrock")
            before, broken = await _bedrock_raw(sim, "hi")
            recorded = (
                b'event: message_start\ndata: {"type":"message_start"}\n\nevent: ping\ndata: {"type": "ping"}\n\n'
            )
            sim.enqueue(Replay(recorded))
            replayed, _ = await _bedrock_raw(sim, "hi")
            sse = await direct(sim).messages.create(model=ANTHROPIC_MODEL, max_tokens=100, messages=HELLO, stream=True)
            expected: list[Any] = [event.to_dict() for event in [e async for e in sse]]
        assert failure is None
        parsed = [json.loads(e) for e in events]
        metrics = parsed[-1].pop("amazon-bedrock-invocationMetrics")
        assert metrics["inputTokenCount"] == 4
        assert metrics["outputTokenCount"] == 24
        assert [e["type"] for e in parsed].count("ping") == 1
        unpinged = [e for e in parsed if e["type"] != "ping"]  # the SDK skips pings
        for ours, theirs in zip(unpinged, expected, strict=True):
            if ours["type"] == "message_start":  # the model and the id (by serial) differ
                for name in ("model", "id"):
                    ours["message"][name] = theirs["message"][name]
            assert ours == theirs
        assert len(before) == 4
        assert isinstance(broken, EventStreamError)
        assert str(broken) == "message CRC mismatch"
        assert replayed == [b'{"type":"message_start"}', b'{"type": "ping"}']

    run(go)


def test_scoped_directives_fail_one_backend_or_key() -> None:
    """One prompt, sent to every platform and key: scoped directives apply only where they match, and every
    reply that succeeds echoes the same text, the directives removed."""
    prompt = (
        "[[sim@anthropic:http_error 529]] [[sim@bedrock,key=AKIA2:http_error 429 rate_limit_error 3]]"
        " [[sim@name=west:spend_limit]] [[sim@vertex,key=nobody:cut 0]] hello there"
    )

    async def go() -> None:
        async with served() as east, served(name="west") as west:
            outcomes: dict[str, str | int] = {}
            tried: list[tuple[str, Client, str]] = [
                ("anthropic", direct(east), ANTHROPIC_MODEL),
                ("bedrock AKIA1", bedrock(east, aws_access_key="AKIA1", aws_secret_key="s"), BEDROCK_MODEL),
                ("bedrock AKIA2", bedrock(east, aws_access_key="AKIA2", aws_secret_key="s"), BEDROCK_MODEL),
                ("vertex", vertex(east), VERTEX_MODEL),
                ("vertex west", vertex(west), VERTEX_MODEL),
            ]
            for label, client, model in tried:
                try:
                    outcomes[label] = (await streamed(client, model, prompt))[1]
                except anthropic.APIStatusError as exc:
                    outcomes[label] = exc.status_code
        text = outcomes["bedrock AKIA1"]
        assert isinstance(text, str)
        assert text.startswith("hello there the simulator")
        assert outcomes == {
            "anthropic": 529,
            "bedrock AKIA1": text,
            "bedrock AKIA2": 429,
            "vertex": text,
            "vertex west": 403,
        }
        with pytest.raises(ValueError, match="bad simulator directive"):
            from simulator.directives import parse

            parse("[[sim@azure:cut 1]]")

    run(go)


def test_queued_faults_by_platform_and_key() -> None:
    """A fault queued for a platform and key is taken by the first request that matches, in order, and by no other."""

    async def go() -> None:
        async with served() as sim:
            sim.enqueue(HttpError(529, "overloaded_error"), platform="anthropic", key="k1")
            sim.enqueue(SpendLimit(), key="k2")
            sim.enqueue(HttpError(500, "api_error"), platform="bedrock")
            statuses = []
            tried: list[tuple[Client, str]] = [
                (direct(sim, "k2"), ANTHROPIC_MODEL),
                (vertex(sim, "k1"), VERTEX_MODEL),
                (direct(sim, "k1"), ANTHROPIC_MODEL),
                (direct(sim, "k1"), ANTHROPIC_MODEL),
                (bedrock(sim, api_key="k3"), BEDROCK_MODEL),
            ]
            for client, model in tried:
                try:
                    await client.messages.create(model=model, max_tokens=5, messages=HELLO)
                    statuses.append(200)
                except anthropic.APIStatusError as exc:
                    statuses.append(exc.status_code)
        assert statuses == [429, 200, 529, 200, 500]
        assert (sim.count(key="k1"), sim.count(platform="anthropic", key="k1"), sim.count(platform="bedrock")) == (
            3,
            2,
            1,
        )

    run(go)


def test_several_simulators_one_backend_each() -> None:
    """Three simulators, each serving one platform on its own port: each answers only its own paths, and
    counts what it received per key."""

    async def go() -> None:
        async with (
            served(platforms=["anthropic"]) as first,
            served(platforms=["bedrock"]) as second,
            served(platforms=["vertex"]) as third,
        ):
            await streamed(direct(first, "k1"), ANTHROPIC_MODEL)
            await streamed(bedrock(second, api_key="k2"), BEDROCK_MODEL)
            await streamed(vertex(third, "k3"), VERTEX_MODEL)
            with pytest.raises(anthropic.NotFoundError):
                await direct(second, "k1").messages.create(model=ANTHROPIC_MODEL, max_tokens=5, messages=HELLO)
            with pytest.raises(anthropic.NotFoundError):
                await bedrock(third, api_key="k2").messages.create(model=BEDROCK_MODEL, max_tokens=5, messages=HELLO)
            with pytest.raises(anthropic.NotFoundError):
                await vertex(first).messages.create(model=VERTEX_MODEL, max_tokens=5, messages=HELLO)
            async with httpx2.AsyncClient() as http:
                counted = (await http.get(f"{second.base_url}/_simulator/requests")).json()
        assert [first.count(key="k1"), second.count(key="k2"), third.count(key="k3")] == [1, 1, 1]
        assert [first.count(), second.count(), third.count()] == [2, 2, 2]  # and one 404 each
        assert second.count(platform="bedrock") == 1
        assert counted == {
            "total": 2,
            "counts": [
                {"platform": "bedrock", "key_id": key_id("k2"), "model": BEDROCK_MODEL, "count": 1},
                {"platform": None, "key_id": None, "model": None, "count": 1},
            ],
        }

    run(go)


def _limits(response: httpx2.Response) -> dict[str, str]:
    return {k.removeprefix("anthropic-ratelimit-"): v for k, v in response.headers.items() if "ratelimit" in k}


def test_rate_limit_headers_on_every_messages_api_answer() -> None:
    """Every answer on the Messages API path carries the key's 12 rate-limit headers: limits, what remains after
    this request (tokens to the nearest thousand) and when each bucket is full again; a directive chooses what
    remains; keys are counted apart; Bedrock and Vertex answers carry none."""

    async def go() -> None:
        async with served(limits=Limits(requests=50, input_tokens=20000, output_tokens=8000)) as sim:
            client = direct(sim, "k1")
            first = await client.messages.with_raw_response.create(
                model=ANTHROPIC_MODEL, max_tokens=3000, messages=HELLO
            )
            second = await client.messages.with_raw_response.create(
                model=ANTHROPIC_MODEL,
                max_tokens=10,
                messages=[{"role": "user", "content": "[[sim:ratelimit input-tokens 0]] hi"}],
            )
            other = await direct(sim, "k2").messages.with_raw_response.create(
                model=ANTHROPIC_MODEL, max_tokens=10, messages=HELLO
            )
            failed = await _post(
                f"{sim.base_url}/v1/messages",
                {
                    "model": ANTHROPIC_MODEL,
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "[[sim:http_error 529]]"}],
                },
                {"x-api-key": "k1", "anthropic-version": "2023-06-01"},
            )
            elsewhere = await bedrock(sim).messages.with_raw_response.create(
                model=BEDROCK_MODEL, max_tokens=5, messages=HELLO
            )
        now = datetime.now(UTC)
        headers = _limits(first.http_response)
        assert sorted(headers) == sorted(
            f"{kind}-{part}"
            for kind in ("requests", "tokens", "input-tokens", "output-tokens")
            for part in ("limit", "remaining", "reset")
        )
        assert {k: v for k, v in headers.items() if k.endswith("limit")} == {
            "requests-limit": "50",
            "tokens-limit": "28000",
            "input-tokens-limit": "20000",
            "output-tokens-limit": "8000",
        }
        # 1 request, 4 input tokens and max_tokens 3000 taken (tokens to the nearest thousand)
        assert (headers["requests-remaining"], headers["output-tokens-remaining"]) == ("49", "5000")
        assert (headers["input-tokens-remaining"], headers["tokens-remaining"]) == ("20000", "25000")
        for kind in ("requests", "output-tokens"):
            reset = datetime.fromisoformat(headers[f"{kind}-reset"])
            assert now - timedelta(seconds=1) <= reset <= now + timedelta(minutes=1)
        chosen = _limits(second.http_response)
        assert chosen["input-tokens-remaining"] == "0"
        assert int(chosen["output-tokens-remaining"]) >= 5000  # the 2976 unused output tokens came back
        assert _limits(other.http_response)["requests-remaining"] == "49"
        assert failed.status_code == 529
        assert int(_limits(failed)["requests-remaining"]) in (47, 48)  # refilled at 50 a minute meanwhile
        assert _limits(elsewhere.http_response) == {}

    run(go)


def test_enforced_limits_answer_429_with_retry_after_per_key() -> None:
    """With limits enforced, a key whose bucket cannot take a request is answered 429 rate_limit_error with
    retry-after and nothing is taken; another key is served."""

    async def go() -> None:
        async with served(limits=Limits(requests=2, window=600, enforce=True)) as sim:
            statuses, answers = [], []
            for key in ("k1", "k1", "k1", "k2"):
                try:
                    answer = await direct(sim, key).messages.with_raw_response.create(
                        model=ANTHROPIC_MODEL, max_tokens=5, messages=HELLO
                    )
                    statuses.append(200)
                    answers.append(answer.http_response)
                except anthropic.RateLimitError as exc:
                    statuses.append(429)
                    answers.append(exc.response)
        assert statuses == [200, 200, 429, 200]
        refused = answers[2]
        assert refused.json()["error"]["message"] == (
            "This request would exceed your account's rate limit. Please try again later."
        )
        assert 250 <= int(refused.headers["retry-after"]) <= 300  # half a request at 2 per 600 s
        assert _limits(refused)["requests-remaining"] == "0"
        assert _limits(answers[3])["requests-remaining"] == "1"
        assert sim.count(key="k1") == 3

    run(go)


def test_main_serves_one_platform_and_counts_by_key() -> None:
    """`python -m simulator --platform bedrock` serves Bedrock alone; GET /_simulator/requests counts by key id."""
    with subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--platform", "bedrock", "--key", "kk", "--name", "b1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+)\n", process.stdout.readline())
            assert match
            url = match.group(1)
            body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2, "messages": HELLO}
            served_ = httpx2.post(f"{url}/model/m1/invoke", json=body, headers={"authorization": "Bearer kk"})
            refused = httpx2.post(f"{url}/model/m1/invoke", json=body, headers={"authorization": "Bearer other"})
            elsewhere = httpx2.post(f"{url}/v1/messages", json={}, headers={"x-api-key": "kk"})
            counted = httpx2.get(f"{url}/_simulator/requests").json()
        finally:
            process.terminate()
            process.wait(5)
    assert served_.json()["content"][0]["text"] == "hello brave"
    assert (refused.status_code, elsewhere.status_code) == (403, 404)
    assert {"platform": "bedrock", "key_id": key_id("kk"), "model": "m1", "count": 1} in counted["counts"]
    assert counted["total"] == 3
