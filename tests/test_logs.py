"""GATEWAY_LOG_FORMAT=json, as a log collector reads it: every line of a real run is one JSON object; refused
calls are logged and counted with their caller and their model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from claude_gateway.v1 import chat_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import API_KEY, ROOT, body, clean_env, process, run, status_of, stream_request
from tests.store import free_port
from tests.test_quotas import as_caller, callers_file

POLICY = """\
models:
  chat: claude-sonnet-4-6
  bulk: claude-haiku-4-5
callers:
  alpha:
    models: [chat, bulk]
    max_tokens: 1000
"""


async def outcome(stub: chat_pb2_grpc.ChatServiceStub, request: dict[str, Any], metadata: Any) -> str:
    """The ErrorInfo reason of one StreamMessage call, or OK."""
    try:
        async for _ in stub.StreamMessage(stream_request(request), timeout=30, metadata=metadata):
            pass
    except grpc.aio.AioRpcError as exc:
        status = status_of(exc)
        assert status.error_info is not None
        if status.error_info.reason == "MODEL_NOT_ALLOWED":  # callers are told the names they may use
            assert "allowed: bulk (claude-haiku-4-5), chat (claude-sonnet-4-6)" in status.message
        return str(status.error_info.reason)
    return "OK"


def calls_total(metrics_port: int) -> dict[tuple[str, str, str], float]:
    """gateway_calls_total by (caller, model, reason)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_calls_total":
                key = (sample.labels["caller"], sample.labels["model"], sample.labels["reason"])
                out[key] = out.get(key, 0) + sample.value
    return out


def test_in_json_every_line_of_a_real_run_is_one_json_object_and_refusals_name_caller_and_model(
    tmp_path: Path,
) -> None:
    """A `python -m server` run with GATEWAY_LOG_FORMAT=json at DEBUG, through OK, refused, retried and
    unauthenticated calls and a drain: every line on stdout and stderr parses with json.loads and has time,
    level and logger; the call lines carry their fields at the top level, refused ones their caller and the
    model id their alias stands for; gateway_calls_total counts them by caller."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    metrics_port = free_port()
    base = clean_env()
    with process(["-m", "simulator", "--port", "0", "--api-key", API_KEY], base, "simulator listening on ") as (
        _,
        base_url,
    ):
        env = {
            **base,
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": base_url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_CALLER_IDENTITY": "token",
            "GATEWAY_CALLERS_FILE": str(callers_file(tmp_path)),
            "GATEWAY_POLICY_FILE": str(policy),
            "GATEWAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "GATEWAY_MAX_ATTEMPTS": "2",
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "server", "--listen", "127.0.0.1:0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert gateway.stdout is not None
            ready = json.loads(gateway.stdout.readline())
            assert ready["message"].startswith("gateway listening on ")
            target = ready["listen"]

            async def go() -> list[str]:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = chat_pb2_grpc.ChatServiceStub(channel)
                    alpha = as_caller("alpha")
                    return [
                        await outcome(stub, body(model="chat"), alpha),
                        await outcome(stub, body(model="claude-opus-4-6"), alpha),
                        await outcome(stub, body(model="bulk", max_tokens=2000), alpha),
                        await outcome(stub, body("[[sim:http_error 529]]", model="chat"), alpha),
                        await outcome(stub, body(model="chat"), (("authorization", "Bearer wrong"),)),
                    ]

            reasons = run(go)
            counted = calls_total(metrics_port)
        finally:
            gateway.send_signal(signal.SIGTERM)
            out, err = gateway.communicate(timeout=30)
    assert gateway.returncode == 0
    assert reasons == ["OK", "MODEL_NOT_ALLOWED", "MAX_TOKENS_OVER_LIMIT", "OVERLOADED_ERROR", "CALLER_UNAUTHENTICATED"]
    lines = [json.loads(line) for line in (out + err).splitlines()]  # every line, or the test fails here
    assert len(lines) > len(reasons)
    for line in lines:
        assert isinstance(line, dict)
        assert {"time", "level", "logger"} <= set(line), line
    calls = [line for line in lines if line["logger"] == "server.call"]
    assert [(c["caller"], c["model"], c["reason"]) for c in calls] == [
        ("alpha", "claude-sonnet-4-6", ""),
        ("alpha", "claude-opus-4-6", "MODEL_NOT_ALLOWED"),
        ("alpha", "claude-haiku-4-5", "MAX_TOKENS_OVER_LIMIT"),
        ("alpha", "claude-sonnet-4-6", "OVERLOADED_ERROR"),
        ("", "", "CALLER_UNAUTHENTICATED"),  # refused on its metadata: its body is never read
    ]
    assert all(c["event"] == "call" and c["level"] == "INFO" and "message" not in c for c in calls)
    assert any("upstream attempt 1 failed" in line.get("message", "") for line in lines)
    assert any(line.get("message") == "draining: NOT_SERVING, grace 30s" for line in lines)
    for caller, model, reason in [(c["caller"], c["model"], c["reason"]) for c in calls]:
        assert counted[(caller, model or "unknown", reason)] == 1
    assert API_KEY not in out + err


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_bad_setting_is_one_line_in_the_log_format_asked_for(log_format: str) -> None:
    """Even the error that stops start-up is a JSON line when json is asked for (by variable or flag)."""
    done = subprocess.run(
        [sys.executable, "-m", "server", "--log-format", log_format, "--listen", "localhost"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    message = json.loads(line)["message"] if log_format == "json" else line
    assert (
        message
        == "python -m server: error: GATEWAY_LISTEN='localhost' has no port: give host:port (port 0 picks a free one)"
    )
