"""The sample client, `python -m client`, against a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from claude_gateway.cli import parser

from tests.harness import Harness, body, gateway, run

ROOT = Path(__file__).resolve().parents[1]


async def cli(h: Harness, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "--target", h.target, "--deadline", "20", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_cli_streams_the_reply_and_prints_usage() -> None:
    """The reply text goes to stdout, usage and stop reason to stderr, exit 0."""

    async def go() -> None:
        async with gateway() as h:
            code, out, err = await cli(h, "Hello", "from", "the", "CLI")
            want = await h.events(body("Hello from the CLI", max_tokens=1024))
            text = "".join(e["delta"]["text"] for e in want if e["type"] == "content_block_delta")
            assert code == 0, err
            assert out.strip() == text.strip()
            assert "stop_reason=end_turn" in err
            assert "input_tokens=" in err

    run(go)


def test_cli_json_prints_every_event_as_anthropic_json() -> None:
    """--json prints one Messages API event object per line, pings included."""

    async def go() -> None:
        async with gateway() as h:
            code, out, _ = await cli(h, "--json", "Hi")
            events = [json.loads(line) for line in out.splitlines() if line.strip()]
            assert code == 0
            assert events[0]["type"] == "message_start"
            assert events[-1] == {"type": "message_stop"}
            assert "ping" in [e["type"] for e in events]

    run(go)


def test_cli_sends_a_request_file_unchanged(tmp_path: Path) -> None:
    """--request sends an Anthropic-shaped JSON body, which reaches the upstream as written."""
    request = body("From a file", system="be brief", stop_sequences=["zzz"], metadata={"user_id": "u"})
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))

    async def go() -> None:
        async with gateway() as h:
            code, _, err = await cli(h, "--request", str(path))
            assert code == 0, err
            assert h.sim.requests[-1].body == {**request, "stream": True}

    run(go)


def test_cli_unary_prints_the_whole_message() -> None:
    """--unary calls CreateMessage and prints the final message."""

    async def go() -> None:
        async with gateway() as h:
            code, out, _ = await cli(h, "--unary", "Hi")
            message = json.loads(out)
            assert code == 0
            assert message["type"] == "message"
            assert message["stop_reason"] == "end_turn"

    run(go)


def test_cli_failure_prints_status_and_details_and_exits_nonzero() -> None:
    """A failed call prints the gRPC status, its reason and retry delay, and exits 1."""

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            code, _, err = await cli(h, "[[sim:http_error 429 rate_limit_error 3]] hi")
            assert code == 1
            assert "RESOURCE_EXHAUSTED" in err
            assert "reason: RATE_LIMIT_ERROR" in err
            assert "retry after: 3s" in err

    run(go)


def test_cli_bad_request_names_the_field() -> None:
    """A request the gateway rejects prints INVALID_ARGUMENT and the offending field."""

    async def go() -> None:
        async with gateway() as h:
            code, _, err = await cli(h, "--max-tokens", "0", "hi")
            assert code == 1
            assert "INVALID_ARGUMENT" in err
            assert "bad field params.max_tokens" in err

    run(go)


@pytest.mark.parametrize(("flags", "reader"), [(("--json",), "head -1"), ((), "head -c 100")])
def test_cli_ends_quietly_when_its_reader_goes_away(flags: tuple[str, ...], reader: str) -> None:
    """`python -m client --json ... | head -1`: the client stops at the closed pipe, with no traceback.

    The reply (20,000 tokens: over 100 KB of text, megabytes as JSON events) is larger than a pipe's
    buffer (64 KiB), so the client is still writing when `head` exits: a later write meets the closed pipe.
    """
    script = (
        f'"$0" -m client --target "$1" --deadline 60 --max-tokens 20000 {" ".join(flags)} '
        f'"[[sim:tokens 20000]] flood" | {reader}; echo "client exit ${{PIPESTATUS[0]}}" >&2'
    )

    async def go() -> tuple[int, str, str]:
        async with gateway() as h:
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", script, sys.executable, h.target,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

    code, out, err = run(go)
    assert code == 0, err
    if flags:
        assert json.loads(out)["type"] == "message_start"  # head's one line, a whole event
    else:
        assert out.startswith("flood")
    assert err == "client exit 141\n"  # no traceback, no "Exception ignored", the status of a SIGPIPE


def test_cli_token_help_names_the_client_and_gateway_variables() -> None:
    """--token's help names the variable the client reads and the gateway settings that call for a token."""
    entry = " ".join(parser().format_help().split("--token TOKEN", 2)[2].split("--ca-cert")[0].split())
    assert "env GATEWAY_TOKEN" in entry
    assert "GATEWAY_AUTH_TOKEN" in entry
    assert "GATEWAY_CALLERS_FILE" in entry


def test_cli_sends_the_token_from_gateway_token() -> None:
    """With no --token, the client sends GATEWAY_TOKEN's value, which a gateway with GATEWAY_AUTH_TOKEN accepts."""

    async def go() -> None:
        async with gateway(auth_token="tok-from-env") as h:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "client", "--target", h.target, "--deadline", "20", "--max-tokens", "3", "hi",
                cwd=ROOT, env={**os.environ, "GATEWAY_TOKEN": "tok-from-env"},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert "stop_reason=max_tokens" in err.decode()

    run(go)
