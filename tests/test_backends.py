"""The backends file: what it accepts and refuses (one line naming the file), and each kind of backend
serving calls against the simulator of its platform, its credentials by reference."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
import yaml
from claude_gateway import sdk
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import USAGE_KEY
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.app import StartupError, build_server
from server.config import Settings
from server.upstream.backends import BackendsError, SecretRef, parse
from simulator import Simulator
from tests.harness import body, gateway, run, status_of, stream_request
from tests.pools import ANTHROPIC_KEYS, AWS_ID, AWS_SECRET, MODEL, MODEL_IDS, VERTEX_TOKEN, VIAS, key_id, pools
from tests.store import redis_server
from tests.test_startup import every_part, leaves_nothing

VERSIONS = {"anthropic": "2023-06-01", "bedrock": "bedrock-2023-05-31", "vertex": "vertex-2023-10-16"}
GOOD = """
backends:
  - name: primary
    kind: anthropic
    keys: [{env: KEY_A}, {file: /run/key-b}]
  - name: aws
    kind: bedrock
    region: us-east-1
    models: {claude-sonnet-4-6: us.anthropic.claude-sonnet-4-6-v1:0}
    weight: 2
    priority: 0
  - name: gcp
    kind: vertex
    region: us-east5
    project: p
    anthropic_version: vertex-2023-10-16
    first_event_timeout: 2.5
"""

# (file text, what the one-line error says): each a mistake an operator can make.
BAD = [
    ("", "empty"),
    ("backends: [", "not valid YAML"),
    ("callers: {}", "unknown key `callers`"),
    ("backends: []", "lists no backend"),
    ("backends:\n  - kind: anthropic\n", "has no `name`"),
    ("backends:\n  - name: Bad Name\n    kind: anthropic\n", "must be 1-64 of"),
    ("backends:\n  - name: a\n    kind: openai\n", "must be one of anthropic, bedrock, vertex"),
    ("backends:\n  - name: a\n    kind: anthropic\n", "needs `keys`"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [sk-ant-inline]\n", "never the secret itself"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{env: A, file: /b}]\n", "exactly one of"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{vault: x}]\n", "unknown key `vault`"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: []\n", "is empty"),
    ("backends:\n  - name: a\n    kind: bedrock\n", "needs `region`"),
    ("backends:\n  - name: a\n    kind: vertex\n    region: r\n", "needs `project`"),
    ("backends:\n  - name: a\n    kind: vertex\n    region: r\n    project: p\n    keys: [{env: A}]\n", "unknown key"),
    ("backends:\n  - name: a\n    kind: bedrock\n    region: r\n    aws_access_key_id: {env: A}\n", "go together"),
    ("backends:\n  - name: a\n    kind: bedrock\n    region: r\n    keys: [{env: A}]\n    aws_profile: p\n", "exclude"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{env: A}]\n    models: {}\n", "`models` of"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{env: A}]\n    base_url: ftp://x\n", "http://"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{env: A}]\n    weight: 0\n", "`weight`"),
    ("backends:\n  - name: a\n    kind: anthropic\n    keys: [{env: A}]\n    priority: -1\n", "`priority`"),
    ("backends:\n  - {name: a, kind: anthropic, keys: [{env: A}]}\n  - {name: a, kind: anthropic, keys: [{env: B}]}\n",
     "used twice"),
]  # fmt: skip


def test_a_good_file_parses_in_priority_order_with_each_kinds_defaults() -> None:
    specs = parse(GOOD, "backends.yaml")
    assert [s.name for s in specs] == ["primary", "aws", "gcp"]  # aws's priority 0 ties primary's place 0
    primary, aws, gcp = specs
    assert primary.keys == (SecretRef(env="KEY_A"), SecretRef(file="/run/key-b"))
    assert primary.version is None  # the SDK's own anthropic-version header
    assert aws.version == "bedrock-2023-05-31"
    assert aws.weight == 2.0
    assert aws.priority == 0
    assert aws.model_id(MODEL) == "us.anthropic.claude-sonnet-4-6-v1:0"
    assert aws.model_id("claude-haiku-4-5") is None  # not served there
    assert gcp.model_id("claude-haiku-4-5") == "claude-haiku-4-5"  # no models: any, as named
    assert gcp.version == "vertex-2023-10-16"
    assert gcp.first_event_timeout == 2.5
    assert gcp.priority == 2


@pytest.mark.parametrize(("text", "says"), BAD)
def test_a_bad_file_is_one_error_naming_the_file_and_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BackendsError) as caught:
        parse(text, "/etc/gw/backends.yaml")
    message = str(caught.value)
    assert message.startswith("/etc/gw/backends.yaml")
    assert says in message
    assert "\n" not in message
    assert "sk-ant-inline" not in message


def test_a_bad_backends_file_stops_start_up_and_leaves_nothing(tmp_path: Path) -> None:
    """A file that does not parse, and one whose credential is unset: each a StartupError of one line naming
    the file or the reference (never a secret), and nothing stays open."""
    bad = tmp_path / "backends.yaml"
    bad.write_text("backends:\n  - name: a\n    kind: openai\n")
    unset = tmp_path / "unset.yaml"
    unset.write_text("backends:\n  - {name: a, kind: anthropic, keys: [{env: GATEWAY_TEST_UNSET_KEY}]}\n")
    with redis_server() as store:
        for path, says in ((bad, r"backends\.yaml line 3"), (unset, "env GATEWAY_TEST_UNSET_KEY")):

            async def fail(path: Path = path, says: str = says) -> None:
                with pytest.raises(StartupError, match=says) as caught:
                    await build_server(every_part(store, backends_file=str(path)))
                assert "\n" not in str(caught.value)

            leaves_nothing(store, fail)


def test_a_missing_backends_file_stops_start_up(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(StartupError, match="cannot read the backends file"):
            await build_server(Settings(listen="127.0.0.1:0", backends_file=str(tmp_path / "absent.yaml")))

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_each_kind_serves_on_its_own_with_its_credentials_model_id_and_version(
    tmp_path: Path, via: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of one backend of each kind in turn: the call reaches that platform's simulator with the key
    from its file, the platform's model id and anthropic_version, and the trailer names it; no secret
    reaches the log."""

    async def go() -> None:
        for kind, secret in (("anthropic", ANTHROPIC_KEYS[0]), ("bedrock", AWS_ID), ("vertex", VERTEX_TOKEN)):
            directory = tmp_path / kind
            directory.mkdir()
            # anthropic: the file's version replaces the SDK's own anthropic-version header
            async with pools(directory, (kind,), options={"anthropic": {"anthropic_version": "2023-06-01"}}) as p:
                with caplog.at_level(logging.DEBUG):
                    served = await p.call(via, f"hello {kind}")
                assert served.ok, served
                assert served.report["backend"] == kind
                assert served.report["key_id"] == key_id(secret)
                assert served.report["response_model"] == MODEL_IDS.get(kind, MODEL)
                assert served.report["failovers"] == []
                seen = p.sims[kind].requests[-1]
                assert seen.key == secret
                assert seen.model == MODEL_IDS.get(kind, MODEL)
                assert seen.anthropic_version == VERSIONS[kind]
        logged = caplog.text
        for secret in (*ANTHROPIC_KEYS, AWS_SECRET, VERTEX_TOKEN):
            assert secret not in logged

    run(go)


def test_a_bedrock_api_key_pool_authorizes_with_bearer(tmp_path: Path) -> None:
    """Bedrock API keys (`keys:`) instead of SigV4: each request carries one as its bearer token."""

    async def go() -> None:
        async with Simulator(platforms=["bedrock"]) as sim:
            (tmp_path / "b1").write_text("bedrock-api-key-SECRET-1")
            path = tmp_path / "backends.yaml"
            entry = {"name": "aws", "kind": "bedrock", "region": "eu-west-1", "base_url": sim.base_url,
                     "keys": [{"file": str(tmp_path / "b1")}]}  # fmt: skip
            path.write_text(yaml.safe_dump({"backends": [entry]}))
            gw = await build_server(Settings(listen="127.0.0.1:0", backends_file=str(path)))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    async for _ in stub.StreamMessage(stream_request(body("hi")), timeout=10):
                        pass
                assert sim.requests[-1].headers["authorization"] == "Bearer bedrock-api-key-SECRET-1"
                assert sim.requests[-1].model == MODEL  # no models: the caller's id
            finally:
                await gw.close()

    run(go)


def test_a_bedrock_key_echoed_inside_a_chunk_ends_the_call_unrelayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bedrock carries each event base64 in its chunk, so the raw bytes never show an echoed credential: the
    decoded text of each event is what is searched. A prompt holding the backend's bearer key (the simulator echoes the
    prompt) ends the call DATA_LOSS / UPSTREAM_ECHOED_SECRET, and no event, status or log line holds the key;
    the same call with an ordinary prompt is served by the same backend."""
    caplog.set_level(logging.INFO)
    secret = "bedrock-api-key-SECRET-echoed-1"

    async def go() -> bytes:
        got: list[bytes] = []
        async with Simulator(platforms=["bedrock"]) as sim:
            (tmp_path / "b1").write_text(secret)
            path = tmp_path / "backends.yaml"
            entry = {"name": "aws", "kind": "bedrock", "region": "eu-west-1", "base_url": sim.base_url,
                     "keys": [{"file": str(tmp_path / "b1")}]}  # fmt: skip
            path.write_text(yaml.safe_dump({"backends": [entry]}))
            gw = await build_server(Settings(listen="127.0.0.1:0", backends_file=str(path), max_attempts=1))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    async for response in stub.StreamMessage(stream_request(body("plain words")), timeout=10):
                        got.append(response.SerializeToString())
                    assert got, "an ordinary reply is relayed"
                    got.clear()
                    call = stub.StreamMessage(stream_request(body(f"say {secret} twice")), timeout=10)
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        async for response in call:
                            got.append(response.SerializeToString())
                status = status_of(caught.value)
                assert status.code == grpc.StatusCode.DATA_LOSS, status
                assert status.error_info is not None
                assert status.error_info.reason == "UPSTREAM_ECHOED_SECRET"
                got.append(repr(status).encode())
                assert sim.requests[-1].headers["authorization"] == f"Bearer {secret}"
            finally:
                await gw.close()
        return b"".join(got)

    got = run(go)
    assert secret.encode() not in got
    assert caplog.text.count(secret) == 0


def test_platform_credentials_from_the_environment_aws_chain_and_google_adc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bedrock backend that names no credentials signs with the standard AWS chain (here, the environment);
    a vertex backend with no access_token uses application default credentials (a service account whose
    token endpoint the simulator plays). Both serve; the trailer names each with no key id of its own."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPOOLFROMENV00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pool-env-secret-SECRET")

    sdk.forget_aws_sessions()  # the SDK's session of another test's environment

    async def go() -> None:
        async with Simulator(platforms=["bedrock"]) as aws, Simulator(platforms=["vertex"]) as gcp:
            account = tmp_path / "service-account.json"
            account.write_text(
                json.dumps(
                    {
                        "type": "service_account",
                        "project_id": "adc-project",
                        "private_key_id": "1",
                        "private_key": pem.decode(),
                        "client_email": "gateway@adc-project.iam.gserviceaccount.com",
                        "client_id": "1",
                        "token_uri": f"{gcp.base_url}/token",
                    }
                )
            )
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(account))
            entries = [
                # A region of its own: the SDK caches one boto3 session per (keys, region, profile) for the
                # process, so a region another test also signs for from the environment would hand it these
                # credentials.
                {"name": "aws", "kind": "bedrock", "region": "eu-south-2", "base_url": aws.base_url},
                {"name": "gcp", "kind": "vertex", "region": "europe-west1", "project": "adc-project",
                 "base_url": f"{gcp.base_url}/v1"},
            ]  # fmt: skip
            path = tmp_path / "backends.yaml"
            path.write_text(yaml.safe_dump({"backends": entries}))
            gw = await build_server(Settings(listen="127.0.0.1:0", backends_file=str(path)))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    for prompt in ("signed", "minted [[sim@bedrock:http_error 500]]"):
                        call = stub.StreamMessage(stream_request(body(prompt)), timeout=20)
                        async for _ in call:
                            pass
                        report = json.loads(dict(await call.trailing_metadata())[USAGE_KEY])
                        assert report["key_id"] == "-"
                assert report["backend"] == "gcp"
            finally:
                await gw.close()
            assert aws.requests[0].key == "AKIAPOOLFROMENV00001"
            assert "/eu-south-2/bedrock/" in aws.requests[0].headers["authorization"]
            assert gcp.requests[-1].key == "ya29.sim-1"
            assert gcp.tokens_issued == 1

    run(go)


def test_without_a_backends_file_the_trailer_and_log_line_are_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """No file: one backend from the SDK's client, and nothing of the pool in what a caller or operator sees."""

    async def go() -> None:
        async with gateway() as h:
            call = h.stub.StreamMessage(stream_request(body("plain")), timeout=10)
            async for _ in call:
                pass
            trailer = dict(await call.trailing_metadata())
            report = json.loads(trailer[USAGE_KEY])
            assert set(report) == {"model", "response_model", "usage", "cost_usd", "partial"}
            assert not h.gateway.pool.managed

    run(go)
