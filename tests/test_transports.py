"""The SDK's two HTTP transports (GATEWAY_HTTP_CLIENT) behave the same at the gateway's edge."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import grpc
import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2_grpc

from server.app import build_server, sdk_client
from server.config import Settings
from simulator import Cut, ErrorEvent, HttpError, Pace, Replay, Simulator, Stall
from tests.corpus import OWN
from tests.harness import API_KEY, at_once, body, gateway, run, status_of, stream_request, until

TRANSPORTS = ["aiohttp", "httpx"]


@pytest.mark.parametrize("http_client", TRANSPORTS)
def test_stream_retry_and_midstream_failures_map_the_same(http_client: str) -> None:
    """A retried 529, a reset mid-stream and an error event mid-stream look the same on both transports."""

    async def go() -> None:
        async with gateway(http_client=http_client, max_attempts=2) as h:
            h.sim.enqueue(HttpError(529, "overloaded_error", retry_after_ms=10))
            assert (await h.events(body()))[-1]["type"] == "message_stop"
            for fault, reason in (
                (Cut(after_events=4), "UPSTREAM_CONNECTION_LOST"),
                (ErrorEvent(4), "OVERLOADED_ERROR"),
            ):
                h.sim.enqueue(fault)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await h.events(body())
                status = status_of(caught.value)
                assert status.error_info is not None
                assert (status.code, status.error_info.reason) == (grpc.StatusCode.UNAVAILABLE, reason)

    run(go)


@pytest.mark.parametrize("http_client", TRANSPORTS)
def test_cancel_and_stall_close_the_upstream_on_both_transports(http_client: str) -> None:
    """A client cancel and an idle timeout each close the upstream connection, whatever the transport."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=100), http_client=http_client, idle_timeout=1.0) as h:
            bound = await at_once(h)
            call = h.stub.StreamMessage(stream_request(body("[[sim:tokens 2000]] long", max_tokens=4000)), timeout=30)
            await call.read()
            loop = asyncio.get_running_loop()
            cancelled_at = loop.time()
            call.cancel()
            assert await h.sim.requests[-1].wait_closed(timeout=30) - cancelled_at < bound
            h.sim.enqueue(Stall(after_events=3))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await h.sim.requests[-1].wait_closed(timeout=bound)
            await until(lambda: h.gateway.admission.active == 0)

    run(go)


@pytest.mark.parametrize("http_client", TRANSPORTS)
def test_the_body_is_read_below_the_sdk_adapter_on_aiohttp(http_client: str) -> None:
    """On aiohttp the gateway posts on its own session and reads the body with aiohttp's readany; on
    httpx it goes through the SDK's post and reads httpx2's raw iterator. Both read the same bytes."""

    async def go() -> None:
        async with gateway(http_client=http_client) as h:
            upstream = h.gateway.upstream
            async with upstream.stream(body(), (), 10.0) as response:
                fast = isinstance(getattr(response.read, "__self__", None), aiohttp.StreamReader)
                assert fast == (http_client == "aiohttp")
                data = b""
                while chunk := await response.read():
                    data += chunk
            assert response.request_id is not None
            assert data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')

    run(go)


# Headers that differ between two requests of the same client, or that the HTTP library sets for itself.
_PER_REQUEST = {
    "x-stainless-retry-count",
    "x-stainless-timeout",
    "x-stainless-read-timeout",
    "content-length",
    "connection",
}


def test_the_gateway_s_own_session_sends_what_the_sdk_sends() -> None:
    """The aiohttp path's request carries the SDK's auth, version, user agent and platform headers, and
    the body the SDK's post would send, with identity encoding and the caller's betas."""

    async def go() -> None:
        sent = {}
        for http_client in TRANSPORTS:
            async with gateway(http_client=http_client) as h:
                request = body(metadata={"user_id": "u-1"})
                call = h.stub.StreamMessage(stream_request(request, ["files-api-2025-04-14"]), timeout=10)
                assert [r async for r in call][-1].events[-1].HasField("message_stop")
                (seen,) = h.sim.requests
                sent[http_client] = (
                    {k: v for k, v in seen.headers.items() if k not in _PER_REQUEST and k != "host"},
                    seen.body,
                )
        headers, json_body = sent["aiohttp"]
        assert (headers, json_body) == sent["httpx"]
        assert headers["authorization"].startswith("Bearer ")
        assert headers["accept-encoding"] == "identity"
        assert headers["anthropic-beta"] == "files-api-2025-04-14"
        assert json_body["stream"] is True

    run(go)


def test_a_finished_stream_leaves_its_connection_to_the_next_call() -> None:
    """Calls that end at message_stop reuse one upstream connection even when the body's end comes
    later (here 50 ms after the last event); a cancelled call's connection is dropped at
    once and the next call opens another."""

    async def go() -> None:
        reply = (OWN / "own_text_with_ping.sse").read_bytes()
        async with gateway() as h:
            for _ in range(3):
                h.sim.enqueue(Replay(reply, end_delay=0.05))
                assert (await h.events(body()))[-1]["type"] == "message_stop"
                await until(lambda: not h.gateway.upstream.finishing)  # the connection is back in the pool
            assert h.sim.accepted == 1
            call = h.stub.StreamMessage(
                stream_request(body("[[sim:tokens 500]] [[sim:tps 50]] long", max_tokens=1000)), timeout=10
            )
            await call.read()
            call.cancel()
            await h.sim.requests[-1].wait_closed(timeout=5)  # before the 10 s stream would end
            assert (await h.events(body("[[sim:tokens 3]] hi")))[-1]["type"] == "message_stop"
            assert h.sim.accepted == 2

    run(go)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificate")
@pytest.mark.parametrize("http_client", TRANSPORTS)
def test_an_https_upstream_is_verified_on_both_transports(
    http_client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS a certificate the gateway trusts (here by SSL_CERT_FILE, as the SDK's clients read it)
    streams as over HTTP; one it does not trust fails the call as unreachable, before any event."""
    cert, key = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def call(trusted: bool) -> list[dict[str, object]]:
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        else:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async with Simulator(tls=tls, api_key=API_KEY) as sim:
            config = Settings(listen="127.0.0.1:0", http_client=http_client, max_attempts=1)
            gw = await build_server(config, sdk_client(config, base_url=sim.base_url, api_key=API_KEY))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    return [
                        codec.to_json(e)
                        async for r in stub.StreamMessage(stream_request(body()), timeout=10)
                        for e in r.events
                    ]
            finally:
                await gw.close()

    async def go() -> None:
        assert Simulator(tls=tls).base_url.startswith("https://")
        assert (await call(trusted=True))[-1]["type"] == "message_stop"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(trusted=False)
        status = status_of(caught.value)
        assert status.error_info is not None
        assert (status.code, status.error_info.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNREACHABLE")

    run(go)
