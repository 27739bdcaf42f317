"""Non-Python callers: the Node.js sample client and `buf curl`, against a real gateway on the simulator.

Each test starts the gateway with ``build_server`` in its own event loop (``asyncio.run``) and runs
the tool as a subprocess with ``asyncio.create_subprocess_exec``, so the gateway keeps serving while
the test waits for the tool to finish. Node and buf come from ``make node`` (``npm ci``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from claude_gateway.v1 import chat_pb2, chat_pb2_grpc

from tests.harness import gateway

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
NODE_CLIENT = ROOT / "client" / "node" / "index.mjs"
BUF = ROOT / "node_modules" / ".bin" / "buf"
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
MODEL = "claude-sonnet-4-6"
NON_SPACE = re.compile(r"\S")
TOOL_TIMEOUT = 60.0  # seconds a tool may run before the test fails; never reached when things work

needs_node = pytest.mark.skipif(
    NODE is None or not (ROOT / "client" / "ts" / "dist" / "node.js").is_file(),
    reason="node or the Node client's deps are missing: run `make node` (npm ci) first",
)
needs_buf = pytest.mark.skipif(
    not BUF.exists(), reason="node_modules/.bin/buf is missing: run `make node` (npm ci) first"
)

needs_grpcurl = pytest.mark.skipif(GRPCURL is None, reason="grpcurl is missing: run `make setup`")

T = TypeVar("T")


@dataclass(frozen=True)
class Completed:
    """A finished subprocess."""

    returncode: int
    stdout: str
    stderr: str


def with_gateway(test: Callable[[int], Awaitable[T]]) -> T:
    """Run ``test(port)`` in a fresh event loop while a simulator-backed gateway serves on ``port``."""

    async def main() -> T:
        async with gateway() as h:
            return await test(h.gateway.port)

    return asyncio.run(main())


async def run_tool(*argv: str) -> Completed:
    """Run ``argv`` from the repository root and wait for it to exit, without blocking the gateway."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(TOOL_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def node_client(port: int, *args: str) -> Completed:
    """The Node sample client aimed at the gateway on ``port``."""
    assert NODE is not None
    return await run_tool(NODE, str(NODE_CLIENT), "--target", f"127.0.0.1:{port}", *args)


async def buf_curl(port: int, *args: str) -> Completed:
    """``buf curl`` over plaintext HTTP/2 gRPC to the gateway on ``port`` (schema by reflection)."""
    return await run_tool(str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args)


async def reference_reply(port: int, prompt: str, max_tokens: int) -> chat_pb2.Message:
    """The reply to ``prompt`` by the Python stubs' CreateMessage: what every client must show."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.CreateMessageRequest(
            params=chat_pb2.MessageCreateParams(
                model=MODEL,
                max_tokens=max_tokens,
                messages=[chat_pb2.MessageParam(role="user", content_text=prompt)],
            )
        )
        response: chat_pb2.CreateMessageResponse = await stub.CreateMessage(request, timeout=TOOL_TIMEOUT)
    return response.message


def text_of(message: chat_pb2.Message) -> str:
    """The text of ``message``'s text blocks, joined."""
    return "".join(block.text.text for block in message.content if block.HasField("text"))


def json_documents(text: str) -> list[Any]:
    """The concatenated JSON documents that `buf curl` prints, one per response message."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while (start := NON_SPACE.search(text, pos)) is not None:
        doc, pos = decoder.raw_decode(text, start.start())
        docs.append(doc)
    return docs


@needs_node
def test_node_client_streams_reply() -> None:
    """The Node client prints the streamed reply text, then usage on stderr, and exits 0."""
    prompt = "hello polyglot world"

    async def test(port: int) -> tuple[Completed, chat_pb2.Message]:
        result = await node_client(port, "--deadline", "30", "--model", MODEL, "--max-tokens", "8", prompt)
        return result, await reference_reply(port, prompt, 8)

    result, expected = with_gateway(test)
    assert result.returncode == 0, result.stderr
    assert text_of(expected).startswith(prompt)  # the simulator echoes the prompt, then filler words
    assert result.stdout == text_of(expected) + "\n"
    usage = expected.usage
    assert expected.stop_reason == "max_tokens"
    assert usage.output_tokens == 8
    assert f"[stop_reason=max_tokens input_tokens={usage.input_tokens} output_tokens=8]" in result.stderr


@needs_node
def test_node_client_reports_bad_request() -> None:
    """A request the gateway rejects makes the Node client print INVALID_ARGUMENT with the bad field and exit 1."""
    result = with_gateway(lambda port: node_client(port, "--deadline", "30", "--max-tokens", "0", "hi"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "INVALID_ARGUMENT: params.max_tokens: must be at least 1, got 0" in result.stderr
    assert "reason: INVALID_REQUEST (claude-gateway)" in result.stderr  # ErrorInfo
    assert "bad field params.max_tokens: must be at least 1, got 0" in result.stderr  # BadRequest


@needs_node
def test_node_client_decodes_retry_info() -> None:
    """An upstream 429 reaches the Node client as RESOURCE_EXHAUSTED with decoded ErrorInfo and RetryInfo."""
    # retry-after 2.5 s exceeds the 2 s deadline, so the gateway fails at once instead of retrying.
    prompt = "hi [[sim:http_error 429 rate_limit_error 2.5]]"
    result = with_gateway(lambda port: node_client(port, "--deadline", "2", prompt))
    assert result.returncode == 1
    assert "RESOURCE_EXHAUSTED: " in result.stderr
    assert "reason: RATE_LIMIT_ERROR (claude-gateway)" in result.stderr
    assert "error_type=rate_limit_error" in result.stderr
    assert "retry after: 2.5s" in result.stderr


@needs_node
def test_node_client_honours_deadline() -> None:
    """A reply that stalls past --deadline ends the Node client with DEADLINE_EXCEEDED and exit 1."""
    started = time.monotonic()
    result = with_gateway(lambda port: node_client(port, "--deadline", "0.5", "hi [[sim:stall 3]]"))
    assert result.returncode == 1
    assert "DEADLINE_EXCEEDED" in result.stderr
    assert time.monotonic() - started < TOOL_TIMEOUT / 2  # ended by the deadline, not by the test's limit


@needs_buf
def test_buf_curl_lists_services() -> None:
    """`buf curl --list-services` finds the chat and health services by server reflection."""
    result = with_gateway(lambda port: buf_curl(port, "--list-services", f"http://127.0.0.1:{port}"))
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "claude_gateway.v1.ChatService" in services
    assert "grpc.health.v1.Health" in services


@needs_buf
def test_buf_curl_health_check() -> None:
    """`buf curl` of grpc.health.v1.Health/Check reports SERVING, overall and for ChatService."""

    async def test(port: int) -> tuple[Completed, Completed]:
        url = f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
        overall = await buf_curl(port, "--timeout", "10s", url)
        chat = await buf_curl(port, "--timeout", "10s", "-d", '{"service": "claude_gateway.v1.ChatService"}', url)
        return overall, chat

    for result in with_gateway(test):
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": "SERVING"}


@needs_buf
def test_buf_curl_streams_reply() -> None:
    """`buf curl` of StreamMessage streams events whose text deltas join into the reply."""
    prompt = "hello from buf curl"
    body = {"params": {"model": MODEL, "max_tokens": 6, "messages": [{"role": "user", "content_text": prompt}]}}

    async def test(port: int) -> tuple[Completed, str]:
        url = f"http://127.0.0.1:{port}/claude_gateway.v1.ChatService/StreamMessage"
        result = await buf_curl(port, "--timeout", "30s", "-d", json.dumps(body), url)
        return result, text_of(await reference_reply(port, prompt, 6))

    result, expected = with_gateway(test)
    assert result.returncode == 0, result.stderr
    # buf curl prints protobuf JSON: lowerCamelCase names, one document per response message.
    events = [event for response in json_documents(result.stdout) for event in response["events"]]
    assert next(iter(events[0])) == "messageStart"
    assert next(iter(events[-1])) == "messageStop"
    text = "".join(
        event["contentBlockDelta"]["delta"]["textDelta"]["text"]
        for event in events
        if "textDelta" in event.get("contentBlockDelta", {}).get("delta", {})
    )
    assert text == expected
    assert text.startswith(prompt)


@needs_grpcurl
def test_grpcurl_lists_describes_checks_health_and_streams() -> None:
    """The grpcurl commands of the README and docs/debugging.md work as written: list, describe, Health/Check and
    a streamed reply."""
    body = {"params": {"model": MODEL, "max_tokens": 6, "messages": [{"role": "user", "content_text": "hi grpcurl"}]}}

    async def test(port: int) -> tuple[Completed, ...]:
        assert GRPCURL is not None
        grpcurl, address = (GRPCURL, "-plaintext"), f"127.0.0.1:{port}"
        chat = "claude_gateway.v1.ChatService"
        return (
            await run_tool(*grpcurl, address, "list"),
            await run_tool(*grpcurl, address, "describe", chat),
            await run_tool(*grpcurl, "-max-time", "10", address, "grpc.health.v1.Health/Check"),
            await run_tool(*grpcurl, "-max-time", "30", "-d", json.dumps(body), address, f"{chat}/StreamMessage"),
            await run_tool(
                *grpcurl, "-max-time", "10", "-d", '{"params": {"model": "m"}}', address, f"{chat}/CreateMessage"
            ),
        )

    listed, described, health, streamed, invalid = with_gateway(test)
    assert listed.returncode == 0, listed.stderr
    assert {"claude_gateway.v1.ChatService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    assert "rpc StreamMessage" in described.stdout
    assert json.loads(health.stdout) == {"status": "SERVING"}
    assert streamed.returncode == 0, streamed.stderr
    # grpcurl prints the proto's own field names (buf curl prints lowerCamelCase).
    events = [event for response in json_documents(streamed.stdout) for event in response["events"]]
    assert next(iter(events[0])) == "message_start"
    assert next(iter(events[-1])) == "message_stop"
    assert invalid.returncode != 0
    assert "InvalidArgument" in invalid.stderr
    assert "params.max_tokens" in invalid.stderr
