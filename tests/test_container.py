"""The container image, built from the root Dockerfile and run the way the Kubernetes manifests run it.

The engine, base image and wheels are arranged by tests/container.py. These tests need root and Debian's
docker.io and mmdebstrap (.ci/run installs them): elsewhere they skip, and in CI a missing engine fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import SERVICE
from grpc_health.v1 import health_pb2, health_pb2_grpc

from simulator import Simulator
from tests import container
from tests.harness import API_KEY, body, call_log, run, stream_request
from tests.test_k8s import gateway_container, gateway_settings, pod_spec, workers
from tests.test_security import self_signed

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The manifests' Secret, as the user creates it (docs/deploy.md), with the simulator's key.
SECRETS = {"anthropic-api-key": {"api-key": API_KEY}}


@pytest.fixture(scope="module")
def engine() -> Iterator[container.Engine]:
    """A private Docker engine with the image built, for this module's tests."""
    reason = container.missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI builds and runs the image, but {reason}")
        pytest.skip(reason)
    with container.engine() as docker:
        started = time.monotonic()
        container.build_image(docker)
        print(f"image built in {time.monotonic() - started:.0f} s with {docker.storage_driver}")
        yield docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (each worker serves metrics on the next one)."""
    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for offset in range(count):
                    held.enter_context(socket.create_server(("127.0.0.1", first + offset)))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def metrics_page(url: str) -> bool:
    """Whether ``url`` serves a Prometheus page with the gateway's metrics."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200 and b"gateway_active_streams" in reply.read()
    except OSError:
        return False


async def until_serving(url: str) -> None:
    """Return once ``url`` serves the gateway's metrics (a worker may still be starting)."""
    while not await asyncio.to_thread(metrics_page, url):  # noqa: ASYNC110 -- another process's state, no event
        await asyncio.sleep(0.1)


def test_image_is_slim_non_root_and_labelled(engine: container.Engine) -> None:
    """The image runs `python -m server` as a numeric non-root user, carries OCI labels, and holds no pip, no
    compiler, no wheels, no source and no pip cache."""
    (image,) = engine.inspect("image", "inspect", container.IMAGE)
    config = image["Config"]
    assert isinstance(config, dict)
    assert config["Entrypoint"] == ["python", "-m", "server"]
    uid, gid = (int(part) for part in config["User"].split(":"))
    assert uid != 0
    assert gid != 0
    labels = config["Labels"]
    for key in ("title", "description", "version", "revision", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"no org.opencontainers.image.{key} label"
    assert labels["org.opencontainers.image.revision"] == container.revision()
    probe = "; ".join(
        [
            "import importlib.util, os, shutil, sys",
            "left = [m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)]",
            "left += [p for p in ('/wheels', '/src', '/root/.cache/pip') if os.path.exists(p)]",
            "left += [c for c in ('gcc', 'cc', 'c++') if shutil.which(c)]",
            "print(left)",
            "sys.exit(bool(left))",
        ]
    )
    # The virtualenv's python (first on PATH), as root so that nothing is hidden from the probe.
    args = ["run", "--rm", "--network=none", "--user=0", "--entrypoint=python", container.IMAGE, "-c", probe]
    done = engine.docker(*args, check=False)
    assert done.returncode == 0, f"the final image carries build leftovers: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("overlay", ["sidecar", "shared"])
def test_image_run_as_each_manifest_runs_it_serves_streams_and_drains_on_docker_stop(
    engine: container.Engine, overlay: str, tmp_path: Path
) -> None:
    """Run as an overlay runs it (its user, read-only root, no capabilities, the key and TLS files from mounted
    Secrets, its settings from env; for shared, TLS with health on its own plaintext port, two workers and their
    metrics pages), the image turns SERVING, streams a reply from the simulator, and on `docker stop` turns
    NOT_SERVING, lets the stream in flight finish and exits 0 within the pod's grace period."""
    spec = pod_spec(overlay)
    gateway = gateway_container(spec)
    settings = gateway_settings(gateway)
    grace = spec["terminationGracePeriodSeconds"]
    chat = health = f"127.0.0.1:{free_port()}"
    secrets = dict(SECRETS)
    credentials = None
    env = {
        # The kubelet resolves GATEWAY_WORKERS from the CPU request; the pod's IP is loopback here.
        "GATEWAY_WORKERS": str(workers(gateway)),
        "GATEWAY_LISTEN": chat,
    }
    if settings.tls_cert:
        cert, key = self_signed(tmp_path)
        secrets["claude-gateway-tls"] = {"tls.crt": cert.read_text(), "tls.key": key.read_text()}
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    if settings.health_listen:
        health = env["GATEWAY_HEALTH_LISTEN"] = f"127.0.0.1:{free_port()}"
    scrape = []
    if settings.metrics_listen:
        first = free_port_run(settings.workers)
        env["GATEWAY_METRICS_LISTEN"] = f"127.0.0.1:{first}"
        scrape = [f"http://127.0.0.1:{first + number}/metrics" for number in range(settings.workers)]
    logs = ""

    async def go() -> None:
        nonlocal logs
        async with Simulator(api_key=API_KEY) as sim:
            (tmp_path / "secrets").mkdir()
            mounted = container.secret_files(tmp_path / "secrets", secrets)
            args = container.run_args(spec, gateway, mounted, env | {"ANTHROPIC_BASE_URL": sim.base_url})
            name = (await asyncio.to_thread(engine.docker, *args)).stdout.strip()
            try:
                if credentials is None:
                    channel = grpc.aio.insecure_channel(chat)
                else:
                    channel = grpc.aio.secure_channel(chat, credentials)
                async with channel, grpc.aio.insecure_channel(health) as probe:
                    await serve_and_drain(engine, name, channel, probe, grace, scrape)
                assert len(sim.requests) == 1
            finally:
                logs = (await asyncio.to_thread(engine.docker, "logs", name, check=False)).stderr
                await asyncio.to_thread(engine.docker, "rm", "--force", name, check=False)

    try:
        run(go)
    except BaseException as exc:
        exc.add_note(f"container log:\n{logs}")
        raise
    assert API_KEY not in logs
    (call,) = call_log(logs)
    assert (call["method"], call["status"]) == ("StreamMessage", "OK")


async def serve_and_drain(
    engine: container.Engine,
    name: str,
    channel: grpc.aio.Channel,
    probe: grpc.aio.Channel,
    grace: int,
    scrape: list[str],
) -> None:
    """Wait for SERVING on the probe's channel (and every worker's metrics page), start a stream on the chat
    channel, `docker stop`, and check the drain: NOT_SERVING, the stream completes, exit code 0 within ``grace``."""
    watch = health_pb2_grpc.HealthStub(probe).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), wait_for_ready=True, timeout=grace + 120
    )
    async with asyncio.timeout(60):  # start-up: the manifests' startupProbe allows 30 s
        while (await watch.read()).status != SERVING:
            pass
        for url in scrape:  # each worker serves its own page once it has started
            await until_serving(url)
    # About 2 s of reply: still streaming when `docker stop` sends SIGTERM.
    prompt = "[[sim:tokens 40]] [[sim:tps 20]] Hello from the container test"
    call = chat_pb2_grpc.ChatServiceStub(channel).StreamMessage(
        stream_request(body(prompt)), timeout=60, wait_for_ready=True
    )
    events = [codec.to_json(e) for e in (await call.read()).events]
    stopped_at = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(engine.docker, "stop", f"--time={grace}", name))
    assert (await watch.read()).status == NOT_SERVING
    before_drain = len(events)
    while (response := await call.read()) is not grpc.aio.EOF:
        events += [codec.to_json(e) for e in response.events]
    assert await call.code() == grpc.StatusCode.OK
    assert events[-1]["type"] == "message_stop"
    assert len(events) > before_drain, "the stream was over before the drain began"
    await stopping
    elapsed = time.monotonic() - stopped_at
    state = json.loads(engine.docker("container", "inspect", "--format={{json .State}}", name).stdout)
    assert state["ExitCode"] == 0, json.dumps(state)
    assert not state["OOMKilled"]
    assert elapsed < grace, f"the drain took {elapsed:.1f} s of a {grace} s grace"
