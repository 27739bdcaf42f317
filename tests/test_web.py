"""The HTTP port: ChatService over Connect and gRPC-Web on a real gateway, through the same call path as gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import signal
import socket
import struct
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from server.config import Settings
from server.ports.http.connect import CODES, timeout_seconds
from simulator import Pace
from tests.harness import (
    PROCESS_TIMEOUT,
    ROOT,
    UNPACED,
    Harness,
    body,
    deployed_http,
    gateway,
    run,
    stream_request,
    until,
)

SERVICE = "/claude_gateway.v1.ChatService"
PACED = Pace(ttft=0.02, tokens_per_second=50)


@asynccontextmanager
async def http_gateway(pace: Pace = UNPACED, **settings: Any) -> AsyncIterator[tuple[Harness, str]]:
    """A gateway with its HTTP port on, and that port's base URL."""
    async with gateway(pace, http_listen="127.0.0.1:0", **settings) as h:
        yield h, f"http://127.0.0.1:{h.gateway.http_port}"


def request_json(prompt: str, **params: Any) -> dict[str, Any]:
    """A StreamMessage/CreateMessage request in the canonical protobuf JSON."""
    return json_format.MessageToDict(stream_request(body(prompt, **params)))


def envelope(data: bytes, flags: int = 0) -> bytes:
    """One enveloped message of the Connect streaming and gRPC-Web protocols."""
    return struct.pack(">BI", flags, len(data)) + data


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (flags, payload) of every envelope in a response body."""
    found = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        found.append((flags, data[5 : 5 + size]))
        data = data[5 + size :]
    return found


async def read_frame(content: aiohttp.StreamReader) -> bytes:
    """The payload of the next envelope of a response being received."""
    _, size = struct.unpack(">BI", await content.readexactly(5))
    return await content.readexactly(size)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def post(url: str, content_type: str, data: bytes, **headers: str) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"content-type": content_type, **headers}) as response,
    ):
        return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read())


def texts(responses: list[dict[str, Any]]) -> str:
    """The reply text carried by a list of StreamMessageResponse JSON objects."""
    return "".join(
        e["contentBlockDelta"]["delta"].get("textDelta", {}).get("text", "")
        for r in responses
        for e in r.get("events", [])
        if "contentBlockDelta" in e
    )


def usage_of(end: dict[str, Any]) -> dict[str, Any]:
    """The usage report in a Connect end-of-stream message that carries no error."""
    assert "error" not in end, end
    report: dict[str, Any] = json.loads(end["metadata"]["claude-gateway-usage"][0])
    return report


def details_of(error: dict[str, Any]) -> dict[str, Any]:
    """Connect error JSON details, decoded by type name."""
    types = {"google.rpc.ErrorInfo": error_details_pb2.ErrorInfo, "google.rpc.BadRequest": error_details_pb2.BadRequest}
    decoded = {}
    for detail in error.get("details", []):
        cls = types.get(detail["type"])
        if cls is not None:
            decoded[detail["type"]] = cls.FromString(base64.b64decode(detail["value"] + "=="))
    return decoded


def test_connect_json_stream_relays_the_reply_in_many_messages_then_ends_ok() -> None:
    """application/connect+json: one JSON message per batch, the same text as over gRPC, an empty end message."""

    async def go() -> None:
        async with http_gateway(PACED) as (h, url):
            data = json.dumps(request_json("Hello [[sim:tokens 12]]")).encode()
            reply = await post(f"{url}{SERVICE}/StreamMessage", "application/connect+json", envelope(data))
            assert reply.status == 200
            assert reply.headers["content-type"] == "application/connect+json"
            assert reply.headers["anthropic-request-id"].startswith("req_sim")
            *messages, (end_flags, end) = frames(reply.body)
            assert end_flags == 2
            assert usage_of(json.loads(end))["usage"]["output_tokens"] == 12  # an OK end: no error, the usage
            responses = [json.loads(m) for _, m in messages]
            assert len(responses) > 3
            over_grpc = await h.events(body("Hello [[sim:tokens 12]]"))
            grpc_text = "".join(e["delta"].get("text", "") for e in over_grpc if e["type"] == "content_block_delta")
            assert texts(responses) == grpc_text

    run(go)


def test_connect_binary_stream_carries_protobuf_messages() -> None:
    """application/connect+proto: each message parses as StreamMessageResponse."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            request = stream_request(body("Hi [[sim:tokens 5]]"))
            reply = await post(
                f"{url}{SERVICE}/StreamMessage", "application/connect+proto", envelope(request.SerializeToString())
            )
            *messages, (end_flags, _) = frames(reply.body)
            assert end_flags == 2
            kinds = [e.WhichOneof("type") for _, m in messages for e in pb.StreamMessageResponse.FromString(m).events]
            assert kinds[0] == "message_start"
            assert kinds[-1] == "message_stop"

    run(go)


def test_connect_unary_json_returns_the_whole_message() -> None:
    """CreateMessage as a plain JSON POST returns the accumulated message with its usage."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            data = json.dumps(request_json("Hello there [[sim:tokens 6]]")).encode()
            reply = await post(f"{url}{SERVICE}/CreateMessage", "application/json", data)
            assert reply.status == 200, reply.body
            message = json.loads(reply.body)["message"]
            assert message["stopReason"] == "end_turn"
            assert message["usage"]["outputTokens"] == 6
            assert json.loads(reply.headers["trailer-claude-gateway-usage"])["usage"]["output_tokens"] == 6
            assert message["content"][0]["text"]["text"].startswith("Hello there")

    run(go)


def test_invalid_request_is_connect_error_json_with_field_details() -> None:
    """A request without messages: HTTP 400, code invalid_argument, ErrorInfo and BadRequest details."""

    async def go() -> None:
        async with http_gateway() as (h, url):
            data = json.dumps({"params": {"model": "claude-sonnet-4-6", "maxTokens": 10}}).encode()
            reply = await post(f"{url}{SERVICE}/CreateMessage", "application/json", data)
            assert reply.status == 400
            error = json.loads(reply.body)
            assert error["code"] == "invalid_argument"
            details = details_of(error)
            assert details["google.rpc.ErrorInfo"].reason == "INVALID_REQUEST"
            assert details["google.rpc.BadRequest"].field_violations[0].field == "params.messages"
            assert not h.sim.requests  # refused before anything went upstream

    run(go)


def test_undecodable_json_is_invalid_argument_from_admission() -> None:
    """Unknown fields, bad JSON or bytes that are not UTF-8 get invalid_argument naming the problem from
    admission, like bad bytes on gRPC (not from connectrpc, which answered invalid UTF-8 with no log line)."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            for data in (b'{"params": {"bogus": 1}}', b"{not json", b'{"params": {"model": "\xff"}}'):
                reply = await post(f"{url}{SERVICE}/CreateMessage", "application/json", data)
                error = json.loads(reply.body)
                assert error["code"] == "invalid_argument", error
                assert error["message"].startswith("request: not a valid protobuf message")

    run(go)


def test_midstream_failure_ends_the_connect_stream_with_the_gateways_status() -> None:
    """An upstream cut after some events: the end message carries unavailable and the events delivered."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            data = json.dumps(request_json("cut [[sim:cut 5]]")).encode()
            reply = await post(f"{url}{SERVICE}/StreamMessage", "application/connect+json", envelope(data))
            *messages, (end_flags, end) = frames(reply.body)
            assert messages
            assert end_flags == 2
            error = json.loads(end)["error"]
            assert error["code"] == "unavailable"
            info = details_of(error)["google.rpc.ErrorInfo"]
            assert info.reason == "UPSTREAM_CONNECTION_LOST"
            assert int(info.metadata["events_delivered"]) > 0

    run(go)


def test_grpc_web_stream_ends_with_a_trailer_frame() -> None:
    """application/grpc-web+proto: messages, then a trailer frame with grpc-status 0."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            request = stream_request(body("Hi [[sim:tokens 4]]"))
            reply = await post(
                f"{url}{SERVICE}/StreamMessage", "application/grpc-web+proto", envelope(request.SerializeToString())
            )
            *messages, (trailer_flags, trailer) = frames(reply.body)
            assert trailer_flags == 0x80
            assert "grpc-status: 0" in trailer.decode().lower()
            assert "claude-gateway-usage: " in trailer.decode().lower()
            assert all(pb.StreamMessageResponse.FromString(m).events for _, m in messages)

    run(go)


def test_grpc_web_failure_carries_status_and_rich_details() -> None:
    """A refused gRPC-Web call: grpc-status 16 and google.rpc.Status details, as on native gRPC."""

    async def go() -> None:
        async with http_gateway(auth_token="s3cret") as (_, url):
            request = stream_request(body("Hi"))
            reply = await post(
                f"{url}{SERVICE}/StreamMessage", "application/grpc-web+proto", envelope(request.SerializeToString())
            )
            fields = dict(reply.headers)
            for _, trailer in frames(reply.body):  # trailers in the body, unless in the headers (trailers-only)
                for line in trailer.decode().strip().split("\r\n"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            assert fields["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
            status = status_pb2.Status.FromString(base64.b64decode(fields["grpc-status-details-bin"] + "=="))
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            assert info.reason == "CALLER_UNAUTHENTICATED"

    run(go)


def test_bearer_token_reaches_admission_through_the_http_headers() -> None:
    """With auth_token set, an HTTP call without the token is unauthenticated and with it succeeds."""

    async def go() -> None:
        async with http_gateway(auth_token="s3cret") as (_, url):
            data = json.dumps(request_json("Hi [[sim:tokens 3]]")).encode()
            refused = await post(f"{url}{SERVICE}/CreateMessage", "application/json", data)
            assert json.loads(refused.body)["code"] == "unauthenticated"
            served = await post(
                f"{url}{SERVICE}/CreateMessage", "application/json", data, authorization="Bearer s3cret"
            )
            assert served.status == 200

    run(go)


def test_connect_timeout_header_is_the_calls_deadline_kept_by_the_gateway() -> None:
    """connect-timeout-ms shorter than the reply: deadline_exceeded with the gateway's reason."""

    async def go() -> None:
        async with http_gateway() as (h, url):
            data = json.dumps(request_json("slow [[sim:ttft 5]]")).encode()
            reply = await post(
                f"{url}{SERVICE}/StreamMessage",
                "application/connect+json",
                envelope(data),
                **{"connect-timeout-ms": "300"},
            )
            error = json.loads(frames(reply.body)[-1][1])["error"]
            assert error["code"] == "deadline_exceeded"
            assert details_of(error)["google.rpc.ErrorInfo"].reason == "DEADLINE_EXCEEDED"
            await h.sim.requests[-1].wait_closed(timeout=5)  # the upstream request was closed

    run(go)


def test_timeout_headers_parse_as_their_protocols_define() -> None:
    """connect-timeout-ms is milliseconds; grpc-timeout has a unit; malformed values give None."""
    assert timeout_seconds(b"connect-timeout-ms", b"1500") == 1.5
    assert timeout_seconds(b"grpc-timeout", b"2S") == 2.0
    assert timeout_seconds(b"grpc-timeout", b"250m") == 0.25
    assert timeout_seconds(b"grpc-timeout", b"1H") == 3600.0
    assert timeout_seconds(b"connect-timeout-ms", b"-1") is None
    assert timeout_seconds(b"grpc-timeout", b"5x") is None
    assert timeout_seconds(b"grpc-timeout", b"123456789S") is None


def test_every_grpc_code_has_its_connect_code() -> None:
    """The code table covers every non-OK gRPC code, CANCELLED spelled canceled."""
    assert len(CODES) == len(grpc.StatusCode) - 1
    assert CODES[grpc.StatusCode.CANCELLED].value == "canceled"
    assert CODES[grpc.StatusCode.RESOURCE_EXHAUSTED].value == "resource_exhausted"


def test_client_going_away_cancels_the_call_and_closes_the_upstream_request() -> None:
    """Closing the HTTP connection mid-stream ends the call and the simulator sees its connection close."""

    async def go() -> None:
        async with http_gateway(PACED) as (h, url):
            data = json.dumps(request_json("leave early [[sim:tokens 2000]]")).encode()
            async with aiohttp.ClientSession() as session:
                response = await session.post(
                    f"{url}{SERVICE}/StreamMessage",
                    data=envelope(data),
                    headers={"content-type": "application/connect+json"},
                )
                await read_frame(response.content)  # the first message arrived
                assert h.gateway.admission.active == 1
                response.close()  # drops the connection
            closed_at = await h.sim.requests[-1].wait_closed(timeout=5)
            assert closed_at - h.sim.requests[-1].received_at < 2000 / PACED.tokens_per_second
            await until(lambda: h.gateway.admission.active == 0)

    run(go)


def test_drain_refuses_new_http_calls_lets_open_ones_finish_then_closes_the_port() -> None:
    """During a drain a new HTTP call gets unavailable, the open stream completes, then the port closes."""

    async def go() -> None:
        async with http_gateway(PACED, drain_grace=20) as (h, url):
            data = json.dumps(request_json("drain me [[sim:tokens 40]]")).encode()
            async with aiohttp.ClientSession() as session:
                response = await session.post(
                    f"{url}{SERVICE}/StreamMessage",
                    data=envelope(data),
                    headers={"content-type": "application/connect+json"},
                )
                await read_frame(response.content)
                drain = asyncio.ensure_future(h.gateway.drain())
                await until(lambda: h.gateway.admission.draining)
                short = json.dumps(request_json("late [[sim:tokens 2]]")).encode()
                refused = await post(f"{url}{SERVICE}/CreateMessage", "application/json", short)
                assert json.loads(refused.body)["code"] == "unavailable"
                rest = await response.read()
                assert "error" not in json.loads(frames(rest)[-1][1])  # the open stream ended OK
            await drain
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(f"{url}{SERVICE}/CreateMessage", "application/json", short)

    run(go)


def test_cors_is_off_by_default_and_answers_only_allowed_origins() -> None:
    """No CORS headers without cors_origins; with it, preflight and responses name the allowed origin only."""

    async def go() -> None:
        preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
        async with (
            http_gateway() as (_, url),
            aiohttp.ClientSession() as session,
            session.options(f"{url}{SERVICE}/StreamMessage", headers=preflight) as response,
        ):
            assert response.status == 403
            assert "access-control-allow-origin" not in response.headers
        async with http_gateway(cors_origins="http://app.example") as (_, url), aiohttp.ClientSession() as session:
            async with session.options(f"{url}{SERVICE}/StreamMessage", headers=preflight) as response:
                assert response.status == 204
                assert response.headers["access-control-allow-origin"] == "http://app.example"
                assert "connect-protocol-version" in response.headers["access-control-allow-headers"]
            other = {**preflight, "origin": "http://evil.example"}
            async with session.options(f"{url}{SERVICE}/StreamMessage", headers=other) as response:
                assert response.status == 403
            data = json.dumps(request_json("Hi [[sim:tokens 2]]")).encode()
            reply = await post(f"{url}{SERVICE}/CreateMessage", "application/json", data, origin="http://app.example")
            assert reply.headers["access-control-allow-origin"] == "http://app.example"
            assert "grpc-status-details-bin" in reply.headers["access-control-expose-headers"]

    run(go)


def test_native_grpc_on_the_http_port_is_refused_with_415() -> None:
    """application/grpc belongs on the gRPC port: the HTTP port says so instead of failing obscurely."""

    async def go() -> None:
        async with http_gateway() as (_, url):
            reply = await post(f"{url}{SERVICE}/StreamMessage", "application/grpc", envelope(b""))
            assert reply.status == 415
            assert b"gRPC port" in reply.body

    run(go)


def test_chat_page_is_served_only_when_enabled() -> None:
    """GET / is the chat page with GATEWAY_CHAT_PAGE on, 404 otherwise; the bundle is served beside it."""

    async def go() -> None:
        async with (
            http_gateway() as (_, url),
            aiohttp.ClientSession() as session,
            session.get(f"{url}/") as response,
        ):
            assert response.status == 404
        async with http_gateway(chat_page=True) as (_, url), aiohttp.ClientSession() as session:
            async with session.get(f"{url}/") as response:
                assert response.status == 200
                assert '<script type="module" src="/chat.js">' in await response.text()
            async with session.get(f"{url}/chat.js") as response:
                assert response.status == 200
                assert response.headers["content-type"] == "text/javascript"

    run(go)


def test_chat_page_links_a_favicon_the_gateway_serves() -> None:
    """The page names its icon (so browsers do not ask for a missing /favicon.ico), and the gateway serves it."""

    async def go() -> None:
        async with http_gateway(chat_page=True) as (_, url), aiohttp.ClientSession() as session:
            async with session.get(f"{url}/") as response:
                icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', await response.text())
            assert icon is not None
            async with session.get(f"{url}{icon.group(1)}") as response:
                assert response.status == 200
                assert response.headers["content-type"] == "image/svg+xml"
                assert (await response.text()).startswith("<svg ")

    run(go)


def test_http_port_is_off_by_default() -> None:
    """Without http_listen the gateway opens no HTTP port."""

    async def go() -> None:
        async with gateway() as h:
            assert h.gateway.http_port is None

    run(go)


def test_chat_page_needs_the_http_port_and_booleans_parse_as_words() -> None:
    """GATEWAY_CHAT_PAGE without GATEWAY_HTTP_LISTEN is refused; true/false/1/0/yes/no are booleans."""
    with pytest.raises(ValueError, match="GATEWAY_HTTP_LISTEN"):
        Settings.from_env({"GATEWAY_CHAT_PAGE": "true"})
    for word, value in (("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("off", False)):
        env = {"GATEWAY_CHAT_PAGE": word, "GATEWAY_HTTP_LISTEN": "127.0.0.1:0"}
        assert Settings.from_env(env).chat_page is value
    with pytest.raises(ValueError, match="GATEWAY_CHAT_PAGE"):
        Settings.from_env({"GATEWAY_CHAT_PAGE": "maybe", "GATEWAY_HTTP_LISTEN": "127.0.0.1:0"})


def marked_shell_block(page: Path, marker: str) -> str:
    """The shell block that follows ``<!-- marker -->`` on ``page``."""
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)```", page.read_text(), re.S)
    assert match, f"{page.name} lost its {marker} example"
    return match.group(1)


def readme_curl_stream() -> str:
    """docs/clients.md's curl command that streams a reply (the shell block after its marker)."""
    return marked_shell_block(ROOT / "docs" / "clients.md", "curl-stream")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_unary_curl_command_prints_the_whole_message() -> None:
    """The README's exact curl command (Connect unary CreateMessage) prints the reply message as JSON."""

    async def go() -> None:
        async with http_gateway() as (h, url):
            script = marked_shell_block(ROOT / "README.md", "curl-unary").replace("http://127.0.0.1:8080", url)
            proc = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            message = json.loads(out)["message"]
            assert message["role"] == "assistant"
            assert message["stopReason"] == "end_turn"
            assert message["content"][0]["text"]["text"].startswith("Hello the simulator")
            assert len(h.sim.requests) == 1

    run(go)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_command_streams_json_lines_while_the_call_runs() -> None:
    """docs/clients.md's exact curl command prints one JSON message per line, the first while the call still runs."""

    async def go() -> None:
        async with http_gateway(Pace(ttft=0.02, tokens_per_second=10)) as (h, url):
            script = readme_curl_stream().replace("http://127.0.0.1:8080", url)
            proc = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE)
            assert proc.stdout is not None
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert "messageStart" in first["events"][0]
            assert h.gateway.admission.active == 1  # the reply is still streaming
            rest = [json.loads(line) for line in (await proc.stdout.read()).decode().splitlines()]
            assert await proc.wait() == 0
            assert usage_of(rest[-1])["partial"] is False  # the end-of-stream message: OK, with the usage
            assert len(texts([first, *rest[:-1]]).split()) > 5

    run(go)


def test_deployed_gateway_serves_the_http_port_and_drains_it_on_sigterm() -> None:
    """``python -m server`` with GATEWAY_HTTP_LISTEN answers Connect calls there and exits 0 on SIGTERM."""
    with deployed_http() as (proc, _, port):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{SERVICE}/CreateMessage",
            data=json.dumps(request_json("Hi [[sim:tokens 4]]")).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["message"]["usage"]["outputTokens"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PROCESS_TIMEOUT) == 0
    with socket.socket() as again:  # nothing listens there any more (closed connections may linger in TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
