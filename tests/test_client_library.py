"""The Python client library (``claude_gateway.Gateway`` / ``AsyncGateway``) against a real gateway on the simulator.

Where the anthropic SDK can do the same against the simulator directly, it is the reference: the
library must give what the SDK gives.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import grpc
import pytest
from anthropic.lib.streaming import MessageStreamEvent
from claude_gateway import AsyncGateway, Gateway, GatewayError

from simulator import Pace, Simulator
from tests.harness import API_KEY, PROCESS_TIMEOUT, Harness, gateway, run, until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "client" / "examples"
MODEL = "claude-sonnet-4-6"
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello"}]
SLOW = Pace(tokens_per_second=20)


def in_thread(h: Harness, test: Callable[[Gateway], Any], **options: Any) -> Any:
    """Run ``test`` with a sync Gateway aimed at ``h`` in a worker thread, so the gateway keeps serving."""

    def go() -> Any:
        with Gateway(h.target, **options) as client:
            return test(client)

    return asyncio.to_thread(go)


def sdk_example(text: str) -> str:
    """An example with the anthropic SDK's client in place of the gateway's (the model call unchanged)."""
    for ours, sdk in (("from claude_gateway import AsyncGateway", "from anthropic import AsyncAnthropic"),
                      ("from claude_gateway import Gateway", "from anthropic import Anthropic"),
                      ("AsyncGateway()", "AsyncAnthropic()"), ("Gateway()", "Anthropic()")):  # fmt: skip
        text = text.replace(ours, sdk)
    assert "claude_gateway" not in text
    assert "Gateway" not in text.split('"""', 2)[-1]
    return text


async def python(*argv: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("name", ["stream.py", "stream_async.py"])
def test_readme_examples_print_what_the_sdk_prints_against_the_simulator(name: str) -> None:
    """The Python examples (README, docs/clients.md) print via the gateway exactly what their SDK versions print from
    the simulator."""
    example = EXAMPLES / name

    async def go() -> tuple[str, str]:
        async with gateway() as h:
            ours = await python(str(example), env={"GATEWAY_TARGET": h.target})
        async with Simulator(api_key=API_KEY) as sim:  # fresh, so that its message id counter matches
            env = {"ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": API_KEY}
            sdk = await python("-c", sdk_example(example.read_text()), env=env)
        return ours, sdk

    ours, sdk = run(go)
    assert ours.startswith("Hello the simulator")
    assert '"stop_reason":"end_turn"' in ours
    assert ours == sdk


def test_events_are_the_sdks_own_objects_in_the_sdks_order() -> None:
    """Iterating a stream yields the SDK's event classes, raw and derived, with the content of the SDK's own stream."""

    async def go() -> None:
        async with gateway() as h:
            async with h.sdk.messages.stream(model=MODEL, max_tokens=12, messages=HELLO) as direct:
                want = [event async for event in direct]
            got: list[MessageStreamEvent] = await in_thread(
                h, lambda c: list(c.messages.stream(model=MODEL, max_tokens=12, messages=HELLO).__enter__())
            )
        assert [type(e) for e in got] == [type(e) for e in want]
        assert "text" in [e.type for e in got]
        texts = [e.delta.text for e in got if e.type == "content_block_delta" and e.delta.type == "text_delta"]
        assert texts == [e.text for e in want if e.type == "text"]
        for e, w in zip(got, want, strict=True):
            if e.type not in ("message_start", "message_stop"):  # these carry the message id, which differs
                assert e.to_dict() == w.to_dict()

    run(go)


def test_breaking_out_of_the_loop_then_get_final_message_reads_the_rest() -> None:
    """Inside the with block, get_final_message after a break reads the rest of the reply, as the SDK does."""

    def test(client: Gateway) -> tuple[str, str, anthropic.types.Message]:
        with client.messages.stream(model=MODEL, max_tokens=10, messages=HELLO) as stream:
            first = next(iter(stream.text_stream))
            message = stream.get_final_message()
            return first, stream.get_final_text(), message

    async def go() -> None:
        async with gateway(SLOW) as h:
            first, text, message = await in_thread(h, test)
        assert first == "Hello"
        assert message.usage.output_tokens == 10
        assert message.stop_reason == "max_tokens"
        assert text.startswith("Hello the simulator")
        assert len(text.split()) == 10

    run(go)


def test_leaving_the_block_cancels_the_call_and_its_upstream_request() -> None:
    """Leaving the with block mid-reply cancels the call and its upstream connection; the stream says CANCELLED."""

    def test(client: Gateway) -> GatewayError:
        with client.messages.stream(model=MODEL, max_tokens=500, messages=HELLO) as stream:
            next(iter(stream.text_stream))
        with pytest.raises(GatewayError) as failed:
            stream.get_final_message()
        return failed.value

    async def go() -> None:
        async with gateway(SLOW) as h:
            error = await in_thread(h, test)
            await until(lambda: h.sim.open_connections == 0)
            assert len(h.sim.requests) == 1
        assert error.code == grpc.StatusCode.CANCELLED
        assert "closed before it ended" in error.details

    run(go)


def test_async_client_streams_breaks_and_cancels() -> None:
    """AsyncGateway: async iteration, text_stream, get_final_message after a break, and cancellation on leaving."""

    async def go() -> None:
        async with gateway(SLOW) as h, AsyncGateway(h.target) as client:
            async with client.messages.stream(model=MODEL, max_tokens=10, messages=HELLO) as stream:
                async for event in stream:
                    if event.type == "text":
                        break
                message = await stream.get_final_message()
                assert stream.request_id is not None
                assert stream.request_id.startswith("req_")
            assert message.usage.output_tokens == 10
            assert await stream.get_final_text() == message.content[0].text  # type: ignore[union-attr]
            async with client.messages.stream(model=MODEL, max_tokens=500, messages=HELLO) as stream:
                async for _ in stream.text_stream:
                    break
            with pytest.raises(GatewayError) as failed:
                await stream.until_done()
            assert failed.value.code == grpc.StatusCode.CANCELLED
            await until(lambda: h.sim.open_connections == 0)

    run(go)


def test_failures_raise_gateway_error_with_status_details() -> None:
    """A refused request and an upstream 429 raise GatewayError with BadRequest, ErrorInfo and RetryInfo decoded."""

    def sync(client: Gateway) -> GatewayError:
        with pytest.raises(GatewayError) as failed, client.messages.stream(model=MODEL, max_tokens=0, messages=HELLO):
            pass
        return failed.value

    async def go() -> None:
        async with gateway(max_attempts=1) as h, AsyncGateway(h.target) as client:
            bad = await in_thread(h, sync)
            prompt: list[anthropic.types.MessageParam] = [
                {"role": "user", "content": "hi [[sim:http_error 429 rate_limit_error 3]]"}
            ]
            with pytest.raises(GatewayError) as limited:
                async with client.messages.stream(model=MODEL, max_tokens=5, messages=prompt):
                    pass
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.violations == [("params.max_tokens", "must be at least 1, got 0")]
        assert bad.error_info is not None
        assert bad.error_info.reason == "INVALID_REQUEST"
        error = limited.value
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.error_type == "rate_limit_error"
        assert error.retry_delay == 3
        assert "retry after: 3s" in error.describe()

    run(go)


def test_deadline_ends_a_stalled_reply_with_deadline_exceeded() -> None:
    """A per-call timeout is the gRPC deadline: a stalled reply ends with DEADLINE_EXCEEDED."""
    stalled: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi [[sim:stall 3]]"}]

    async def go() -> None:
        async with gateway() as h, AsyncGateway(h.target) as client:
            with pytest.raises(GatewayError) as failed:
                async with client.messages.stream(model=MODEL, max_tokens=5, messages=stalled, timeout=0.5) as stream:
                    await stream.until_done()
        assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    run(go)


def test_create_returns_the_sdks_message() -> None:
    """messages.create gives an anthropic Message equal to the stream's final message."""

    def test(client: Gateway) -> tuple[anthropic.types.Message, anthropic.types.Message]:
        created = client.messages.create(model=MODEL, max_tokens=7, messages=HELLO)
        with client.messages.stream(model=MODEL, max_tokens=7, messages=HELLO) as stream:
            return created, stream.get_final_message()

    async def go() -> None:
        async with gateway() as h:
            created, streamed = await in_thread(h, test)
        assert isinstance(created, anthropic.types.Message)
        assert created.model_dump(exclude={"id"}) == streamed.model_dump(exclude={"id", "parsed_output"})

    run(go)


def test_sdk_objects_echoed_back_reach_upstream_as_the_sdk_sends_them() -> None:
    """A reply's content blocks passed back in the next turn arrive upstream as the SDK itself would send them."""

    async def go() -> None:
        async with gateway() as h, AsyncGateway(h.target) as client:
            first = await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO, metadata={"user_id": "u1"})
            turns: list[anthropic.types.MessageParam] = [
                *HELLO,
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": "Again"},
            ]
            await client.messages.create(model=MODEL, max_tokens=5, messages=turns, system="be brief")
            await h.sdk.messages.create(model=MODEL, max_tokens=5, messages=turns, system="be brief")
            through_gateway, direct = h.sim.requests[-2].body, h.sim.requests[-1].body
            assert h.sim.requests[0].body["metadata"] == {"user_id": "u1"}
        assert {**through_gateway, "stream": None} == {**direct, "stream": None}

    run(go)


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs openssl")
def test_tls_and_token_reach_a_guarded_gateway(tmp_path: Path) -> None:
    """root_certificates and token reach a TLS gateway that wants a token; without the token: UNAUTHENTICATED."""
    from tests.test_security import TOKEN, self_signed

    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with gateway(tls_cert=str(cert), tls_key=str(key), auth_token=TOKEN) as h:
            pem = cert.read_bytes()
            async with (
                AsyncGateway(h.target, root_certificates=pem, token=TOKEN) as client,
                client.messages.stream(model=MODEL, max_tokens=3, messages=HELLO) as stream,
            ):
                assert (await stream.get_final_text()).startswith("Hello")
            async with AsyncGateway(h.target, root_certificates=pem, token="") as client:
                with pytest.raises(GatewayError) as failed:
                    await client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
        assert failed.value.code == grpc.StatusCode.UNAUTHENTICATED

    run(go)


def test_trailing_metadata_is_known_once_the_stream_ended() -> None:
    """trailing_metadata is None while the reply streams and a dict once it ended; an absent trailer reads as None."""

    async def go() -> None:
        async with (
            gateway() as h,
            AsyncGateway(h.target) as client,
            client.messages.stream(model=MODEL, max_tokens=3, messages=HELLO) as stream,
        ):
            assert stream.trailing_metadata is None
            await stream.until_done()
        assert isinstance(stream.trailing_metadata, dict)
        assert stream.trailer_json("no-such-trailer") is None

    run(go)


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=PROCESS_TIMEOUT,
    )


def test_cli_help_says_what_each_flag_does() -> None:
    """--help names every flag with what it does and its default or allowed values, and --version prints the version."""
    result = cli("--help")
    assert result.returncode == 0
    for flag in ("--target", "--model", "--max-tokens", "--system", "--deadline", "--request", "--beta", "--token",
                 "--ca-cert", "--json", "--unary", "--version"):  # fmt: skip
        assert flag in result.stdout
    assert "positive number" in result.stdout
    assert "Exit status" in result.stdout
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.split() == ["python", "-m", "client", "0.2.0"]


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["--no-such-flag"], None, "unrecognized arguments: --no-such-flag"),
        (["--max-tokens", "many"], None, "argument --max-tokens: invalid int value: 'many'"),
        (["--deadline", "-1"], None, "argument --deadline: must be a positive number of seconds, got '-1'"),
        (["--request", "/no/such/file.json"], None, "--request /no/such/file.json: No such file or directory"),
        (["--request", "-"], "{not json", "--request -: not JSON: "),
        (["--request", "-"], "[1, 2]", "--request -: must hold a JSON object, got list"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(args: list[str], stdin: str | None, says: str) -> None:
    """A bad flag or an unreadable request file prints one line naming the problem, no traceback, and exits 2."""
    result = cli("--target", "127.0.0.1:1", *args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("python -m client: error: ")
    assert says in result.stderr
