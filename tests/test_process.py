"""The gateway as it is deployed: a process configured by the environment, pointed at an upstream URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from claude_gateway.v1 import chat_pb2_grpc

from tests.harness import PROCESS_TIMEOUT, body, call_log, run, stream_request

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-ant-api03-PROCESS-TEST-SECRET"


def start(args: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(ready), line
    return proc, line.split()[-1]


def test_real_api_configuration_is_only_the_key_and_base_url_and_no_secret_is_logged() -> None:
    """ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL alone aim the gateway at an upstream; DEBUG logs never show the key."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    sim, sim_url = start(["-m", "simulator", "--port", "0", "--api-key", KEY], clean, "simulator listening on ")
    env = {**clean, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": sim_url}
    env |= {"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_MAX_ATTEMPTS": "1"}
    gateway, target = start(["-m", "server"], env, "gateway listening on ")
    try:

        async def go() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                events = [e async for r in stub.StreamMessage(stream_request(body()), timeout=10) for e in r.events]
                assert events[-1].WhichOneof("type") == "message_stop"
                for fault in ("[[sim:http_error 401]]", "[[sim:error_event 2]]", "[[sim:cut 3]]"):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        async for _ in stub.StreamMessage(stream_request(body(fault)), timeout=10):
                            pass
                    assert KEY not in (caught.value.details() or "")

        run(go)
    finally:
        for proc in (gateway, sim):
            proc.send_signal(signal.SIGTERM)
        out, err = gateway.communicate(timeout=PROCESS_TIMEOUT)
        sim.communicate(timeout=PROCESS_TIMEOUT)
    assert gateway.returncode == 0
    calls = call_log(err)
    assert (calls[0]["method"], calls[0]["status"]) == ("StreamMessage", "OK")
    assert all(c["request_id"].startswith("req_") for c in calls)
    assert [c["reason"] for c in calls[1:]] == ["AUTHENTICATION_ERROR", "OVERLOADED_ERROR", "UPSTREAM_CONNECTION_LOST"]
    assert KEY not in out + err


def test_api_key_file_is_read_at_start_up_and_never_logged(tmp_path: Path) -> None:
    """ANTHROPIC_API_KEY_FILE alone authenticates to the upstream; neither the key nor a DEBUG log line shows it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n", encoding="utf-8")  # as `kubectl create secret --from-file` often stores it
    sim, sim_url = start(["-m", "simulator", "--port", "0", "--api-key", KEY], clean, "simulator listening on ")
    env = {**clean, "ANTHROPIC_API_KEY_FILE": str(key_file), "ANTHROPIC_BASE_URL": sim_url}
    env |= {"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_LOG_LEVEL": "DEBUG"}
    gateway, target = start(["-m", "server"], env, "gateway listening on ")
    try:
        key_file.unlink()  # read once at start-up: the file is not needed again

        async def go() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                events = [e async for r in stub.StreamMessage(stream_request(body()), timeout=10) for e in r.events]
                assert events[-1].WhichOneof("type") == "message_stop"

        run(go)
    finally:
        for proc in (gateway, sim):
            proc.send_signal(signal.SIGTERM)
        out, err = gateway.communicate(timeout=PROCESS_TIMEOUT)
        sim.communicate(timeout=PROCESS_TIMEOUT)
    assert gateway.returncode == 0
    (call,) = call_log(err)
    assert (call["method"], call["status"]) == ("StreamMessage", "OK")
    assert "with an API key from ANTHROPIC_API_KEY_FILE" in err
    assert KEY not in out + err


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_or_empty_key_file_stops_start_up_naming_the_file(tmp_path: Path, content: str | None) -> None:
    """A key file that is absent or empty ends start-up with exit 1 and a message that names the file."""
    key_file = tmp_path / "api-key"
    if content is not None:
        key_file.write_text(content, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    env = {**clean, "ANTHROPIC_API_KEY_FILE": str(key_file), "ANTHROPIC_API_KEY": KEY, "GATEWAY_LISTEN": "127.0.0.1:0"}
    done = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert f"ANTHROPIC_API_KEY_FILE={key_file}" in done.stderr
    assert "gateway listening" not in done.stdout
    assert KEY not in done.stdout + done.stderr
