"""The chat page in a real browser: Debian's chromium, driven by playwright-core, on a gateway on the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from claude_gateway.usage import from_metadata

from simulator import Pace
from tests.harness import ROOT, Harness, body, gateway, run, stream_request, until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")
DRIVER = ROOT / "tests" / "browser" / "chat.mjs"
ARTIFACTS = ROOT / "test-artifacts"
PACE = Pace(ttft=0.05, tokens_per_second=25)
STOP_TOKENS = 2000  # the reply Stop cuts short: 80 s at PACE


def missing() -> str | None:
    """Why the browser test cannot run here, None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if NODE is None:
        return "node is not installed"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules has no playwright-core (make node)"
    return None


@pytest.fixture
def browser_present() -> None:
    """Skip without chromium, node or playwright-core, except in CI, where they are required."""
    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)


async def drive(url: str) -> dict[str, Any]:
    """Run the page driver against ``url``; what it saw."""
    assert NODE is not None
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(DRIVER),
            url,
            str(ARTIFACTS),
            profile,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


def streamed_in_pieces(pieces: list[dict[str, Any]]) -> int:
    """How many distinct non-empty lengths the reply had while the page was still streaming."""
    return len({p["length"] for p in pieces if p["state"] == "streaming" and p["length"] > 0})


def test_chat_page_explains_every_failure_status() -> None:
    """The page's advice table has a sentence for every gRPC status a call can end with."""
    source = (ROOT / "client" / "web" / "src" / "chat.ts").read_text()
    table = source[source.index("export const ADVICE") : source.index("};", source.index("export const ADVICE"))]
    advised = set(re.findall(r"^  ([A-Z_]+): \"", table, re.M))
    assert advised == {code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


async def trailer_cost(h: Harness, request: dict[str, Any]) -> float | None:
    """The cost the gateway's usage trailer reports for ``request``, made again over gRPC (the simulator is
    deterministic: the same request has the same usage)."""
    call = h.stub.StreamMessage(stream_request(request), timeout=30)
    async for _ in call:
        pass
    report = from_metadata(await call.trailing_metadata())
    assert report is not None
    return report.cost_usd


@pytest.mark.usefixtures("browser_present")
def test_chat_page_converses_stops_and_shows_failures_in_chromium() -> None:
    """In chromium the page streams a reply in pieces with usage and cost, sends a second turn with the first
    exchange and its own max tokens, adds up the cost, starts anew, Stop closes the upstream, a 529 shows
    UNAVAILABLE; it loads nothing that is missing (its favicon included)."""

    async def go() -> None:
        async with gateway(PACE, http_listen="127.0.0.1:0", chat_page=True, max_attempts=1) as h:
            seen = await drive(f"http://127.0.0.1:{h.gateway.http_port}/")
            assert not [line for line in seen["console"] if line.startswith("pageerror")], seen["console"]
            assert seen["failedResponses"] == []  # no 404, the icon included
            assert seen["icon"] == {"status": 200, "type": "image/svg+xml"}

            streamed = seen["streamed"]
            assert streamed_in_pieces(streamed["pieces"]) > 1, streamed["pieces"]
            first_prompt = "Tell me how streaming works [[sim:tokens 40]]"
            assert streamed["reply"].startswith("Tell me how streaming works")
            assert "output tokens" in streamed["usage"]
            assert "end_turn" in streamed["usage"]
            (asked, first), total = streamed["turns"], streamed["total"]
            assert (asked["role"], asked["text"]) == ("user", first_prompt)
            assert (first["role"], first["state"], first["text"]) == ("assistant", "done", streamed["reply"])
            cost = await trailer_cost(h, body(first_prompt, max_tokens=1024))
            assert cost is not None
            assert cost > 0
            assert first["costUsd"] == cost  # the gateway's usage trailer, shown as it came
            assert f"cost ${cost:.6f}" in first["meta"]
            assert first["meta"] == streamed["usage"]
            assert total == {"text": f"Conversation: ${cost:.6f} over 1 call", "costUsd": cost}

            second = seen["second"]
            request = next(r for r in h.sim.requests if "And a second turn" in json.dumps(r.body)).body
            assert request["max_tokens"] == 7
            assert request["messages"] == [
                {"role": "user", "content": first_prompt},
                {"role": "assistant", "content": streamed["reply"]},
                {"role": "user", "content": "And a second turn"},
            ]
            assert [(t["role"], t["state"]) for t in second["turns"]] == [
                ("user", None), ("assistant", "done"), ("user", None), ("assistant", "done"),
            ]  # fmt: skip
            assert "7 output tokens" in second["usage"]
            assert "max_tokens" in second["usage"]
            second_cost = second["turns"][3]["costUsd"]
            assert second_cost > 0
            assert second["total"]["costUsd"] == pytest.approx(cost + second_cost)
            assert second["total"]["text"] == f"Conversation: ${cost + second_cost:.6f} over 2 calls"
            assert seen["fresh"] == {"turns": [], "total": {"text": "", "costUsd": None}}

            stopped = seen["stopped"]
            assert stopped["status"].startswith("Stopped")
            assert stopped["sendEnabled"]
            stop_request = next(r for r in h.sim.requests if "stop me" in json.dumps(r.body))
            assert len(stop_request.body["messages"]) == 1  # a new conversation
            closed_at = await stop_request.wait_closed(timeout=10)
            # The upstream connection closed long before the reply would have ended.
            assert closed_at - stop_request.received_at < STOP_TOKENS / PACE.tokens_per_second / 4
            assert len(stopped["reply"].split()) < STOP_TOKENS / 4

            failed = seen["failed"]
            assert failed["status"].startswith("UNAVAILABLE: upstream overloaded_error")
            assert "try again shortly" in failed["status"]
            assert failed["role"] == "alert"

            over_grpc_web = seen["grpcWeb"]
            assert over_grpc_web["reply"].startswith("Now over gRPC-Web")
            assert streamed_in_pieces(over_grpc_web["pieces"]) > 1
            assert "output tokens" in over_grpc_web["usage"]

            await until(lambda: h.gateway.admission.active == 0)
            assert (ARTIFACTS / "chat-streamed.png").stat().st_size > 0
            assert (ARTIFACTS / "chat-failed.png").stat().st_size > 0
            assert (ARTIFACTS / "chat-stopped.png").stat().st_size > 0
            assert (ARTIFACTS / "chat-second-turn.png").stat().st_size > 0

    run(go)


RESUMER = ROOT / "tests" / "browser" / "resume.mjs"


def test_chat_page_cut_mid_reply_reconnects_and_shows_the_whole_answer_once_in_chromium(browser_present: None) -> None:
    """The page's connection is cut while a reply streams in: it says it is reconnecting, resumes the stream
    (the page asks for resumable streams) and ends with the whole answer, once, from one upstream request."""
    prompt = "Cut me off [[sim:tokens 60]]"

    async def go() -> None:
        async with gateway(PACE, http_listen="127.0.0.1:0", chat_page=True) as h:
            want = "".join(
                e["delta"]["text"]
                for e in await h.events(body(prompt, max_tokens=1024))
                if e["type"] == "content_block_delta"
            )
            requests = len(h.sim.requests)
            assert NODE is not None
            with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
                proc = await asyncio.create_subprocess_exec(
                    NODE, str(RESUMER), f"127.0.0.1:{h.gateway.http_port}", str(ARTIFACTS), profile, prompt,
                    cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), 180)
            assert proc.returncode == 0, err.decode()[-3000:]
            seen = json.loads(out)
            assert not [line for line in seen["console"] if line.startswith("pageerror")], seen["console"]
            assert seen["cuts"] == 1
            assert want.startswith(seen["before"])
            assert len(seen["before"]) < len(want)
            assert seen["reply"] == want  # the whole answer, each piece once
            assert any(s.startswith("Reconnecting") for s in seen["statuses"]), seen["statuses"]
            assert seen["statuses"][-1] == "Done."
            assert len(h.sim.requests) == requests + 1

    run(go)
