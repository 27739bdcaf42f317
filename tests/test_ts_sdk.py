"""The official TypeScript SDK (@anthropic-ai/sdk, in the TypeScript client's dependencies) through the
gateway's /v1/messages, against the same SDK reading the simulator directly.

``tests/node/anthropic_sdk.mjs`` makes the calls (both ways, in order) and prints what the SDK gave;
this file starts the gateway and the simulator, queues the corpus bodies, and compares.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from simulator import Replay
from tests.harness import API_KEY, run
from tests.test_messages_api import ALPHA, GATEWAY_STATUS, TOKEN, api_gateway, comparable, corpus, policy_files
from tests.test_sdk_corpus import BETA, relayable
from tests.test_ts_client import NODE, ROOT, node

SCRIPT = ROOT / "tests" / "node" / "anthropic_sdk.mjs"
NO_MESSAGE = "stream ended without producing a Message"  # the TypeScript SDK's words when it read none

pytestmark = pytest.mark.skipif(
    NODE is None or not (ROOT / "node_modules" / "@anthropic-ai" / "sdk").is_dir(),
    reason="node or @anthropic-ai/sdk is missing: run `make node` (npm ci) first",
)


def plan(tmp_path: Path, h: Any, url: str, token: str, items: list[dict[str, Any]]) -> str:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "gateway": url,
                "token": token,
                "sim": h.sim.base_url,
                "simKey": API_KEY,
                "corpus": items,
                "alpha": ALPHA,
                "beta": BETA,
            }
        )
    )
    return str(path)


def without_unsent_nulls(got: Any, want: Any) -> Any:
    """``got`` without the keys it names as null where ``want`` has no such key: the gateway's created message
    is the Python SDK's accumulation, which names stop_details and a compaction block's encrypted_content
    (null) where the TypeScript stream helper leaves them out; a JavaScript reader sees null for undefined."""
    if isinstance(got, dict) and isinstance(want, dict):
        return {k: without_unsent_nulls(v, want.get(k)) for k, v in got.items() if not (v is None and k not in want)}
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [without_unsent_nulls(g, w) for g, w in zip(got, want, strict=True)]
    return got


def test_typescript_sdk_streams_and_creates_every_corpus_body_through_the_gateway_as_direct(tmp_path: Path) -> None:
    """stream().on('text') and finalMessage() through the gateway equal the SDK reading each corpus body
    direct, and messages.create through the gateway gives that final message; the same error type where
    the body ends in one; the gateway's api_error where it just stops."""
    items = corpus()

    async def go() -> list[dict[str, Any]]:
        async with api_gateway(max_attempts=1) as (h, url):
            for path, _ in items:
                raw = path.read_bytes()
                h.sim.enqueue(Replay(raw), Replay(raw), Replay(raw))
            listed = [{"name": path.name, "beta": beta} for path, beta in items]
            code, out, err = await node(str(SCRIPT), "corpus", plan(tmp_path, h, url, TOKEN, listed), env={})
            assert code == 0, err
            results: list[dict[str, Any]] = json.loads(out)
            return results

    results = run(go)
    assert [r["name"] for r in results] == [p.name for p, _ in items]
    complete = 0
    for (path, _), result in zip(items, results, strict=True):
        got, want, whole = result["through"], result["direct"], result["created"]
        events, end = relayable(path.read_bytes())
        assert got["text"] == want["text"], path.name
        if end == "complete":
            complete += 1
            assert got == want, path.name
            assert whole["error"] is None, (path.name, whole["error"])
            # finalMessage() adds parsed_output (null: no output format asked for), which a created message has not
            final = {k: v for k, v in want["message"].items() if k != "parsed_output"}
            assert without_unsent_nulls(whole["message"], final) == final, path.name
        elif end.startswith("error:"):
            assert got["error"]["type"] == want["error"]["type"] == whole["error"]["type"] == end.split(":")[1]
            assert whole["error"]["status"] == GATEWAY_STATUS[whole["error"]["type"]], path.name
            if events:
                assert (got["error"]["class"], got["error"]["status"]) == (want["error"]["class"], None), path.name
            else:
                assert got["error"]["status"] == GATEWAY_STATUS[got["error"]["type"]], path.name
        elif want["error"] is not None and not want["error"]["message"].startswith(NO_MESSAGE):
            assert got == want, path.name  # the SDK itself refused what it read before the end
        else:  # the SDK raises no API error for a stream that stops: the gateway's error event says so
            assert want["error"] is None or want["error"]["class"] == "AnthropicError", path.name
            assert got["error"]["type"] == "api_error", path.name
            assert (whole["error"]["status"], whole["error"]["type"]) == (502, "api_error"), path.name
    assert complete >= 50


def test_typescript_sdk_creates_counts_lists_and_is_refused_as_by_the_api(tmp_path: Path) -> None:
    """messages.create, messages.countTokens, models.list and models.retrieve give through the gateway what
    they give direct; each refusal (auth, permission, bad request, rate limit, unknown model) is the class,
    status and type the SDK gives for the API's own."""
    policy = """
models:
  chat: claude-sonnet-4-6
  big: claude-opus-4-6
callers:
  alpha:
    models: [chat]
    requests_per_minute: 3
  default: {}
"""
    settings = {**policy_files(tmp_path, policy), "auth_token": TOKEN}

    async def go() -> dict[str, Any]:
        async with api_gateway(**settings) as (h, url):
            code, out, err = await node(str(SCRIPT), "calls", plan(tmp_path, h, url, TOKEN, []), env={})
            assert code == 0, err
            result: dict[str, Any] = json.loads(out)
            return result

    result = run(go)
    for got, want in result["create"]:
        if got.get("stop_details") is None:  # the stream's accumulation names it (null); the SDK leaves it out
            got.pop("stop_details", None)
        assert comparable(got) == comparable(want)
        assert got["content"]
    for got, want in result["count"]:
        assert got == want
        assert got["input_tokens"] > 0
    got_list, want_list = result["models"]["list"]
    aliases = [(m["id"], m["alias_for"]) for m in got_list[:2]]
    assert aliases == [("chat", "claude-sonnet-4-6"), ("big", "claude-opus-4-6")]
    assert got_list[2:] == want_list  # after the policy's aliases, the upstream's own list
    assert len(want_list) >= 2
    assert result["models"]["retrieve"][0] == result["models"]["retrieve"][1]
    assert [(m["id"], m.get("alias_for")) for m in result["models"]["alpha"]] == [
        ("chat", "claude-sonnet-4-6"),
        ("claude-sonnet-4-6", None),
    ]
    classes = {
        "auth": "AuthenticationError",
        "permission": "PermissionDeniedError",
        "badRequest": "BadRequestError",
        "rateLimit": "RateLimitError",
        "notFound": "NotFoundError",
    }
    for case, cls in classes.items():
        got, want = (r["error"] for r in result["refusals"][case])
        assert (got["class"], got["status"], got["type"]) == (want["class"], want["status"], want["type"]), case
        assert got["class"] == cls, case
        assert got["requestId"].startswith("req_"), case
    assert float(result["refusals"]["rateLimit"][0]["error"]["retryAfter"]) > 0
    assert result["refusals"]["streamRateLimit"]["error"]["class"] == "RateLimitError"
    assert shutil.which("node") is not None
