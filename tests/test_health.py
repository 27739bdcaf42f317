"""Health as the kubelet's probes see it: a plaintext health port beside a TLS one, and liveness that never
depends on the upstream."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import SERVICE
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import build_server, sdk_client
from server.config import Settings
from tests.harness import API_KEY, body, clean_env, deployed, gateway, process, run, stream_request
from tests.test_security import self_signed

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check(channel: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = reply.status
    return status


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificate")
def test_health_port_answers_in_plaintext_beside_a_tls_port_and_follows_the_drain(tmp_path: Path) -> None:
    """GATEWAY_HEALTH_LISTEN serves health alone in plaintext while the main port is TLS, and turns NOT_SERVING
    on drain."""
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with gateway(tls_cert=str(cert), tls_key=str(key), health_listen="127.0.0.1:0", drain_delay=0.5) as h:
            assert h.gateway.health_port not in (0, h.gateway.port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{h.gateway.health_port}") as probe:
                assert await check(probe, "") == SERVING
                assert await check(probe, SERVICE) == SERVING
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await chat_pb2_grpc.ChatServiceStub(probe).CreateMessage(stream_request(body()), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the health port serves health only"
                watch = health_pb2_grpc.HealthStub(probe).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
                assert (await watch.read()).status == SERVING
                draining = asyncio.create_task(h.gateway.drain())
                assert (await watch.read()).status == NOT_SERVING
                await draining

    run(go)


def test_process_health_stays_serving_while_the_upstream_is_unreachable() -> None:
    """Health "" (what liveness probes) says SERVING whatever the upstream does: a dead upstream fails calls,
    never the process, so the kubelet does not restart a gateway for an upstream outage."""

    async def go() -> None:
        settings = Settings(listen="127.0.0.1:0", max_attempts=1, connect_timeout=1)
        # A port nothing listens on: connections are refused at once.
        client = sdk_client(settings, base_url="http://127.0.0.1:9", api_key=API_KEY)
        gw = await build_server(settings, client)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in stub.StreamMessage(stream_request(body()), timeout=10):
                        pass
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert await check(channel, "") == SERVING
        finally:
            await gw.close()

    run(go)


def test_without_upstream_credentials_the_chat_service_is_not_serving_and_the_start_up_line_says_why() -> None:
    """No ANTHROPIC_API_KEY: health "" stays SERVING (liveness: the process is fine) while ChatService is
    NOT_SERVING (readiness: every call would fail FAILED_PRECONDITION); the start-up line names the upstream
    URL, without the password its URL holds, and says that no credentials are configured."""
    env = {
        **clean_env(),
        "ANTHROPIC_BASE_URL": "http://gateway:hunter2@127.0.0.1:9/",
        "GATEWAY_LISTEN": "127.0.0.1:0",
        "GATEWAY_LOG_LEVEL": "INFO",
    }

    async def go(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            assert await check(channel, "") == SERVING
            assert await check(channel, SERVICE) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat_pb2_grpc.ChatServiceStub(channel).CreateMessage(stream_request(body()), timeout=10)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with process(["-m", "server"], env, "gateway listening on ", stderr=subprocess.PIPE) as (proc, target):
        run(lambda: go(target))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "upstream http://127.0.0.1:9/ with NO credentials" in err
    assert "hunter2" not in err


def test_the_start_up_line_names_the_upstream_url_and_the_kind_of_credentials_never_their_value() -> None:
    """With a key, the start-up line says `upstream <URL> with an API key`, and ChatService serves."""
    with deployed(GATEWAY_LOG_LEVEL="INFO") as (proc, target):

        async def go() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                assert await check(channel, SERVICE) == SERVING

        run(go)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    (line,) = [ln for ln in err.splitlines() if " upstream http://127.0.0.1:" in ln]
    assert line.endswith(" with an API key")
    assert API_KEY not in err
