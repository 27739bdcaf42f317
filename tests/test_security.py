"""Transport security and caller authentication: TLS on the port, a bearer token on ChatService."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import Settings
from tests.harness import body, gateway, run, status_of, stream_request

TOKEN = "gw-token-SECRET-value"
ROOT = Path(__file__).resolve().parents[1]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, made by the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificate")
def test_tls_port_serves_tls_clients_and_refuses_plaintext(tmp_path: Path) -> None:
    """With GATEWAY_TLS_CERT/KEY the port speaks TLS: a TLS client streams, a plaintext one cannot connect."""
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with gateway(tls_cert=str(cert), tls_key=str(key)) as h:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(h.target, credentials) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                events = [e async for r in stub.StreamMessage(stream_request(body()), timeout=10) for e in r.events]
                assert events[-1].WhichOneof("type") == "message_stop"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body(), timeout=2)
            assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    run(go)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificate")
def test_http_port_speaks_tls_with_the_grpc_ports_certificate(tmp_path: Path) -> None:
    """With GATEWAY_TLS_CERT/KEY the HTTP port is https with the same certificate, and refuses plain http."""
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with gateway(tls_cert=str(cert), tls_key=str(key), http_listen="127.0.0.1:0") as h:
            url = f"127.0.0.1:{h.gateway.http_port}/claude_gateway.v1.ChatService/CreateMessage"
            data = json_format.MessageToJson(stream_request(body("Hi [[sim:tokens 3]]"))).encode()
            context = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession() as session:
                headers = {"content-type": "application/json"}
                async with session.post(f"https://{url}", data=data, headers=headers, ssl=context) as response:
                    assert response.status == 200
                    assert (await response.json())["message"]["stopReason"] == "end_turn"
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(f"http://{url}", data=data, headers=headers) as response:
                        await response.read()

    run(go)


def test_auth_token_guards_chat_calls_but_not_health() -> None:
    """With GATEWAY_AUTH_TOKEN, ChatService wants the bearer token; health stays open for probes."""

    async def go() -> None:
        async with gateway(auth_token=TOKEN) as h:
            for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
                call = h.stub.StreamMessage(stream_request(body()), timeout=5, metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                status = status_of(caught.value)
                assert status.code == grpc.StatusCode.UNAUTHENTICATED
                assert status.error_info is not None
                assert status.error_info.reason == "CALLER_UNAUTHENTICATED"
                assert TOKEN not in status.message
            good = (("authorization", f"Bearer {TOKEN}"),)
            call = h.stub.StreamMessage(stream_request(body()), timeout=5, metadata=good)
            events = [e async for r in call for e in r.events]
            assert events[-1].WhichOneof("type") == "message_stop"
            reply = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert len(h.sim.requests) == 1

    run(go)


def test_settings_never_show_the_token() -> None:
    """The token stays out of the settings' repr, which error reports and logs may print."""
    assert TOKEN not in repr(Settings(auth_token=TOKEN))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificate")
def test_sample_client_speaks_tls_and_sends_the_token(tmp_path: Path) -> None:
    """`python -m client --ca-cert F --token T` reaches a TLS gateway that wants a token."""
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with gateway(tls_cert=str(cert), tls_key=str(key), auth_token=TOKEN) as h:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "client", "--target", h.target, "--deadline", "10",
                "--ca-cert", str(cert), "--token", TOKEN, "Hello over TLS",
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert out.decode().startswith("Hello over TLS")

    run(go)
