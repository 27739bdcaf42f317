"""Per-caller quotas: refusals with QuotaFailure and RetryInfo, token charges, and Redis shared by replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import struct
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis
from claude_gateway import codec
from claude_gateway.client import create_request
from claude_gateway.usage import from_metadata
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import build_server, sdk_client
from server.call.admission import charged
from server.config import Settings
from server.errors import GatewayError
from server.limits.policy import Limits
from server.limits.quota import WINDOW, MemoryQuotas, SpendWindows, wait_for
from server.limits.redis_quotas import keys
from server.reporting.usage import Usage
from simulator import Pace, Simulator
from tests.harness import API_KEY, Status, body, clean_env, gateway, process, run, status_of, stream_request, until
from tests.store import RedisServer, free_port, redis_server

TOKENS = {f"tok-{name}": name for name in ("alpha", "beta", "gamma")}


def callers_file(tmp_path: Path) -> Path:
    """A callers file for the tokens of TOKENS (hashes only)."""
    from server.limits.identity import token_hash

    path = tmp_path / "callers"
    path.write_text("".join(f"{token_hash(t)} {name}\n" for t, name in TOKENS.items()))
    return path


def as_caller(name: str) -> tuple[tuple[str, str], ...]:
    """The metadata of a call from caller ``name``."""
    token = next(t for t, n in TOKENS.items() if n == name)
    return (("authorization", f"Bearer {token}"),)


def policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


async def refused(stub: chat_pb2_grpc.ChatServiceStub, request_body: dict[str, Any], caller: str) -> Status:
    """The status of a call that must fail before its first event."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StreamMessage(stream_request(request_body), timeout=10, metadata=as_caller(caller)).read()
    return status_of(caught.value)


async def first_event(stub: chat_pb2_grpc.ChatServiceStub, caller: str, prompt: str) -> grpc.aio.UnaryStreamCall:
    """A StreamMessage call of ``caller`` that has delivered its first response; the caller cancels it."""
    call = stub.StreamMessage(stream_request(body(prompt)), timeout=30, metadata=as_caller(caller))
    await call.read()
    return call


async def scrape(port: int) -> str:
    """The gateway's Prometheus page."""
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Call ``probe`` until it returns True: for state shared through another process, with no event to await."""
    async with asyncio.timeout(timeout):
        while not await probe():  # noqa: ASYNC110 -- polls a store in another process that has no event to await
            await asyncio.sleep(0.05)


# ---- the sliding minute, as a table ----


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed", "limit", "cost", "expected"),
    [
        (0, 0, 0.0, 10, 1, None),  # nothing counted: fits
        (0, 9, 30.0, 10, 1, None),  # reaches the limit exactly: fits
        (10, 0, 30.0, 10, 1, None),  # half the previous minute still counts: 5 + 1
        (20, 0, 30.0, 10, 1, 3.0),  # the previous minute's share must fall from 10 to 9
        (0, 10, 30.0, 10, 1, 36.0),  # this minute is full: 30 s to the next, then its share must fall to 9
        (0, 0, 0.0, 10, 11, math.inf),  # larger than the limit: never
    ],
)
def test_sliding_minute_says_when_a_cost_fits(
    prev: int, cur: int, elapsed: float, limit: int, cost: int, expected: float | None
) -> None:
    """wait_for is None when the cost fits now, else the seconds until it does (inf: never)."""
    got = wait_for(prev, cur, elapsed, limit, cost)
    assert got == (expected if expected is None or math.isinf(expected) else pytest.approx(expected))
    if got is not None and elapsed + got < WINDOW:  # then, and not before, the count plus the cost is the limit
        assert prev * (1 - (elapsed + got) / WINDOW) + cur + cost == pytest.approx(limit)


def test_a_call_is_charged_input_cache_writes_and_cumulative_output_but_not_cache_reads() -> None:
    """charged() takes message_start's input and cache writes and message_delta's cumulative output."""
    usage = Usage()
    start = {"input_tokens": 30, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}
    usage.observe("message_start", {"message": {"usage": start}})
    assert charged(usage) == 36
    usage.observe("message_delta", {"usage": {"output_tokens": 7}})
    usage.observe("message_delta", {"usage": {"output_tokens": 9}})
    assert charged(usage) == 44
    usage.observe("message_delta", {"usage": {"input_tokens": None, "output_tokens": 12}})
    assert charged(usage) == 47
    assert charged(Usage()) == 0


def test_memory_quotas_refuse_over_each_limit_and_free_slots_on_release() -> None:
    """The in-memory store refuses a fourth stream of three, and admits again once one is released."""

    async def go() -> None:
        store = MemoryQuotas()
        limits = Limits(concurrent_streams=3)
        leases = [await store.acquire("a", limits, 0) for _ in range(3)]
        with pytest.raises(GatewayError) as caught:
            await store.acquire("a", limits, 0)
        assert caught.value.failure.reason == "QUOTA_EXCEEDED"
        assert await store.acquire("b", limits, 0) is not None  # another caller is not affected
        lease = leases[0]
        assert lease is not None
        store.release(lease, 0)
        assert await store.acquire("a", limits, 0) is not None

    run(go)


# ---- one gateway ----


def test_stream_limit_refuses_with_quota_failure_and_retry_info(tmp_path: Path) -> None:
    """A caller at its concurrent_streams limit gets RESOURCE_EXHAUSTED, QuotaFailure and RetryInfo, and the
    upstream never hears of the refused call; a slot frees when a stream ends."""
    text = "callers:\n  alpha:\n    concurrent_streams: 2\n"

    async def go() -> None:
        async with gateway(
            Pace(ttft=10),
            caller_identity="token",
            callers_file=str(callers_file(tmp_path)),
            policy_file=policy(tmp_path, text),
        ) as h:
            calls = [await first_event(h.stub, "alpha", f"hold {i}") for i in range(2)]
            status = await refused(h.stub, body(), "alpha")
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status.error_info is not None
            assert status.error_info.reason == "QUOTA_EXCEEDED"
            assert status.quota_failure is not None
            (violation,) = status.quota_failure.violations
            assert (violation.subject, violation.quota_metric, violation.quota_value) == (
                "caller:alpha",
                "concurrent_streams",
                2,
            )
            assert dict(violation.quota_dimensions) == {"caller": "alpha"}
            assert status.retry_info is not None
            assert status.retry_info.retry_delay.ToNanoseconds() > 0
            assert len(h.sim.requests) == 2
            calls[0].cancel()
            await until(lambda: h.gateway.admission.active == 1)
            calls.append(await first_event(h.stub, "alpha", "after a slot freed"))
            for call in calls:
                call.cancel()

    run(go)


def test_request_rate_refusal_says_when_to_retry(tmp_path: Path) -> None:
    """Past requests_per_minute the refusal names the limit and a RetryInfo within the minute."""
    text = "callers:\n  alpha:\n    requests_per_minute: 3\n"

    async def go() -> None:
        async with gateway(
            caller_identity="token", callers_file=str(callers_file(tmp_path)), policy_file=policy(tmp_path, text)
        ) as h:
            for _ in range(3):
                call = h.stub.StreamMessage(stream_request(body()), timeout=10, metadata=as_caller("alpha"))
                assert [r async for r in call]
            status = await refused(h.stub, body(), "alpha")
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status.quota_failure is not None
            assert [v.quota_metric for v in status.quota_failure.violations] == ["requests_per_minute"]
            assert status.retry_info is not None
            assert 0 < status.retry_info.retry_delay.ToNanoseconds() <= 120e9
            assert len(h.sim.requests) == 3

    run(go)


def test_max_tokens_over_the_cap_is_refused_with_quota_failure_and_no_retry(tmp_path: Path) -> None:
    """max_tokens over the caller's cap: RESOURCE_EXHAUSTED with QuotaFailure, no RetryInfo, nothing upstream."""
    text = "callers:\n  alpha:\n    max_tokens: 100\n"

    async def go() -> None:
        async with gateway(
            caller_identity="token", callers_file=str(callers_file(tmp_path)), policy_file=policy(tmp_path, text)
        ) as h:
            status = await refused(h.stub, body(max_tokens=101), "alpha")
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status.error_info is not None
            assert status.error_info.reason == "MAX_TOKENS_OVER_LIMIT"
            assert status.quota_failure is not None
            assert [(v.quota_metric, v.quota_value) for v in status.quota_failure.violations] == [("max_tokens", 100)]
            assert status.retry_info is None
            assert h.sim.requests == []
            assert len(await h_events(h, body(max_tokens=100), "alpha")) > 0

    run(go)


def capped_request(rpc: str, **extra: Any) -> Any:
    """A request within alpha's cap of 100 whose ``params.extra`` says otherwise."""
    request = (stream_request if rpc == "StreamMessage" else create_request)(body(max_tokens=50))
    request.params.extra.update(extra)
    return request


async def connect_json(url: str, rpc: str, request: Any, caller: str) -> tuple[int, dict[str, Any]]:
    """One Connect JSON call on the HTTP port: its HTTP status and JSON (a unary reply or error, or a
    stream's end-of-stream message)."""
    data = json_format.MessageToJson(request).encode()
    headers = {"authorization": as_caller(caller)[0][1]}
    if rpc == "StreamMessage":
        headers["connect-protocol-version"] = "1"
        data = struct.pack(">BI", 0, len(data)) + data
    kind = "application/json" if rpc == "CreateMessage" else "application/connect+json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/claude_gateway.v1.ChatService/{rpc}", data=data, headers={"content-type": kind, **headers}
        ) as response,
    ):
        raw = await response.read()
    if rpc == "CreateMessage":
        return response.status, json.loads(raw)
    end: dict[str, Any] = {}
    while raw:  # the last envelope is the end-of-stream message
        size = struct.unpack(">I", raw[1:5])[0]
        end, raw = json.loads(raw[5 : 5 + size]), raw[5 + size :]
    return response.status, end.get("error", end)


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_tokens": 64000}, "params.extra.max_tokens"),
        ({"model": "claude-opus-4-1"}, "params.extra.model"),
        ({"max_tokens": None}, "params.extra.max_tokens"),  # a field always written: never in extra
        ({"metadata": {"user_id": "x"}}, "params.extra.metadata"),
    ],
    ids=["max_tokens", "model", "max_tokens-null", "metadata"],
)
def test_extra_cannot_override_a_modeled_field_past_the_policy_on_either_port(
    tmp_path: Path, rpc: str, extra: dict[str, Any], field: str
) -> None:
    """A caller capped at max_tokens 100 (and one model) sends 50 with ``params.extra`` naming a modeled field:
    INVALID_ARGUMENT naming it, on gRPC and on the HTTP port (Connect JSON), and nothing goes upstream."""
    text = "callers:\n  alpha:\n    max_tokens: 100\n    models: [claude-sonnet-4-6]\n"

    async def go() -> None:
        async with gateway(
            caller_identity="token",
            callers_file=str(callers_file(tmp_path)),
            policy_file=policy(tmp_path, text),
            http_listen="127.0.0.1:0",
        ) as h:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                call = getattr(h.stub, rpc)(capped_request(rpc, **extra), timeout=10, metadata=as_caller("alpha"))
                await (call.read() if rpc == "StreamMessage" else call)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
            assert status.bad_request is not None
            assert [v.field for v in status.bad_request.field_violations] == [field]
            url = f"http://127.0.0.1:{h.gateway.http_port}"
            code, error = await connect_json(url, rpc, capped_request(rpc, **extra), "alpha")
            assert error["code"] == "invalid_argument", (code, error)
            assert field in error["message"]
            assert h.sim.requests == []

    run(go)


@pytest.mark.parametrize("rpc", ["StreamMessage", "CreateMessage"])
def test_extra_keeps_unknown_keys_and_the_codecs_nulls_and_empty_lists_on_either_port(tmp_path: Path, rpc: str) -> None:
    """Keys the proto does not name, and a null or empty list of a field left unset (what the codec puts in
    extra), go upstream as sent, within the policy, on both ports."""
    text = "callers:\n  alpha:\n    max_tokens: 100\n"
    extra: dict[str, Any] = {"brand_new": {"a": 1}, "tools": [], "metadata": None}

    async def go() -> None:
        async with gateway(
            caller_identity="token",
            callers_file=str(callers_file(tmp_path)),
            policy_file=policy(tmp_path, text),
            http_listen="127.0.0.1:0",
        ) as h:
            call = getattr(h.stub, rpc)(capped_request(rpc, **extra), timeout=10, metadata=as_caller("alpha"))
            if rpc == "StreamMessage":
                assert [r async for r in call]
            else:
                await call
            url = f"http://127.0.0.1:{h.gateway.http_port}"
            code, reply = await connect_json(url, rpc, capped_request(rpc, **extra), "alpha")
            assert code == 200, reply
            assert "code" not in reply, reply
            for sent in h.sim.requests:
                assert sent.body["max_tokens"] == 50
                assert {k: sent.body[k] for k in extra} == extra

    run(go)


async def h_events(h: Any, request_body: dict[str, Any], caller: str) -> list[dict[str, Any]]:
    """Every event of one StreamMessage call of ``caller``, as Messages API JSON."""
    call = h.stub.StreamMessage(stream_request(request_body), timeout=10, metadata=as_caller(caller))
    return [codec.to_json(e) async for r in call for e in r.events]


def usage_of(events: list[dict[str, Any]]) -> int:
    """Input + cache writes + output tokens, as the events of a stream report them."""
    start = events[0]["message"]["usage"]
    total = start["input_tokens"] + (start.get("cache_creation_input_tokens") or 0) + start["output_tokens"]
    for event in events:
        if event["type"] == "message_delta":
            total += event["usage"]["output_tokens"] - start["output_tokens"]
            start = {**start, "output_tokens": event["usage"]["output_tokens"]}
    return int(total)


def tokens_in_redis(url: str, caller: str) -> int:
    """The tokens Redis counts for ``caller`` over its two minutes."""
    client = redis.Redis.from_url(url)
    try:
        counts = client.hgetall(keys(caller)[1])
        return sum(int(counts.get(k, 0)) for k in (b"pt", b"ct"))
    finally:
        client.close()


def test_token_quota_moves_by_exactly_the_usage_of_a_stream_and_of_a_cancelled_one(tmp_path: Path) -> None:
    """The tokens counted in Redis grow by exactly the usage a stream's events report, its estimate given
    back; a call cancelled mid-stream is charged with the usage it had reached."""
    text = "callers:\n  alpha:\n    tokens_per_minute: 1000000\n"

    async def go() -> None:
        with redis_server() as store:
            async with gateway(
                caller_identity="token",
                callers_file=str(callers_file(tmp_path)),
                policy_file=policy(tmp_path, text),
                redis_url=store.url,
            ) as h:
                assert tokens_in_redis(store.url, "alpha") == 0
                events = await h_events(h, body("count my tokens please " * 20), "alpha")
                spent = usage_of(events)
                assert spent > 0
                await until(lambda: tokens_in_redis(store.url, "alpha") == spent)

                call = h.stub.StreamMessage(
                    stream_request(body("[[sim:ttft 30]] cancelled " * 5)), timeout=30, metadata=as_caller("alpha")
                )
                first = await call.read()
                start = codec.to_json(first.events[0])
                assert start["type"] == "message_start"
                call.cancel()
                usage = start["message"]["usage"]
                partial = usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["output_tokens"]
                await until(lambda: h.gateway.admission.active == 0)
                await until(lambda: tokens_in_redis(store.url, "alpha") == spent + partial)

    run(go)


def test_in_memory_token_quota_moves_by_exactly_the_usage_of_a_stream(tmp_path: Path) -> None:
    """Without Redis the same holds: the caller's tokens grow by the usage the stream's events report."""
    text = "callers:\n  alpha:\n    tokens_per_minute: 1000000\n    requests_per_minute: 100\n"

    async def go() -> None:
        async with gateway(
            caller_identity="token", callers_file=str(callers_file(tmp_path)), policy_file=policy(tmp_path, text)
        ) as h:
            store = h.gateway.admission.quotas
            assert isinstance(store, MemoryQuotas)
            events = await h_events(h, body("count my tokens please " * 20), "alpha")
            assert store.usage("alpha") == (0, 1, usage_of(events))
            assert store.usage("beta") == (0, 0, 0)

    run(go)


def test_one_callers_limits_and_counts_never_touch_another(tmp_path: Path) -> None:
    """Caller alpha at its limits leaves beta's calls admitted, and no refusal names another caller."""
    text = (
        "callers:\n  alpha:\n    concurrent_streams: 1\n    requests_per_minute: 2\n"
        "  beta:\n    concurrent_streams: 1\n    requests_per_minute: 2\n"
    )

    async def go() -> None:
        with redis_server() as store:
            async with gateway(
                Pace(ttft=10),
                caller_identity="token",
                callers_file=str(callers_file(tmp_path)),
                policy_file=policy(tmp_path, text),
                redis_url=store.url,
            ) as h:
                held = await first_event(h.stub, "alpha", "alpha holds its one stream")
                status = await refused(h.stub, body(), "alpha")
                assert status.quota_failure is not None
                assert {v.subject for v in status.quota_failure.violations} == {"caller:alpha"}
                other = await first_event(h.stub, "beta", "beta is not alpha")
                status = await refused(h.stub, body(), "beta")
                assert status.quota_failure is not None
                assert {v.subject for v in status.quota_failure.violations} == {"caller:beta"}
                assert "alpha" not in status.message
                assert "alpha" not in repr(status.error_info)
                held.cancel()
                other.cancel()

    run(go)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_redis_fails_open_or_closed_as_set_and_health_keeps_serving(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis down, `open` admits calls and `closed` refuses them with UNAVAILABLE and RetryInfo; health
    stays SERVING, the log says the store is down, and says so again when it is back."""
    text = "callers:\n  alpha:\n    concurrent_streams: 5\n"
    store = RedisServer(free_port())  # not started yet: nothing listens on its port

    async def go() -> None:
        async with gateway(
            caller_identity="token",
            callers_file=str(callers_file(tmp_path)),
            policy_file=policy(tmp_path, text),
            redis_url=store.url,
            redis_unreachable=mode,
            metrics_listen="127.0.0.1:0",
        ) as h:
            assert h.gateway.metrics is not None
            port = h.gateway.metrics.port
            if mode == "open":
                assert await h_events(h, body(), "alpha")
            else:
                status = await refused(h.stub, body(), "alpha")
                assert status.code == grpc.StatusCode.UNAVAILABLE
                assert status.error_info is not None
                assert status.error_info.reason == "QUOTA_STORE_UNAVAILABLE"
                assert status.retry_info is not None
                assert h.sim.requests == []
            reply = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert "quota store unreachable" in caplog.text
            assert "gateway_quota_store_up 0.0" in await scrape(port)
            store.start()

            async def admitted_and_logged() -> bool:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    return bool(await h_events(h, body(), "alpha")) and "quota store reachable again" in caplog.text
                return False

            # The gateway tries a failed store again once a second: call until a call finds it back.
            await eventually(admitted_and_logged)
            assert "gateway_quota_store_up 1.0" in await scrape(port)

    try:
        run(go)
    finally:
        store.stop()


# ---- replicas sharing one Redis ----


@contextlib.contextmanager
def replicas(
    count: int, tmp_path: Path, policy_text: str, **env: str
) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """A simulator process and ``count`` gateway processes aimed at it, sharing the Redis in ``env``."""
    base = clean_env()
    with contextlib.ExitStack() as stack:
        _, base_url = stack.enter_context(
            process(["-m", "simulator", "--port", "0", "--api-key", API_KEY], base, "simulator listening on ")
        )
        settings = {
            **base,
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": base_url,
            "GATEWAY_LISTEN": "127.0.0.1:0",
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_CALLER_IDENTITY": "token",
            "GATEWAY_CALLERS_FILE": str(callers_file(tmp_path)),
            "GATEWAY_POLICY_FILE": policy(tmp_path, policy_text),
            **env,
        }
        yield [
            stack.enter_context(process(["-m", "server"], settings, "gateway listening on ", stderr=subprocess.DEVNULL))
            for _ in range(count)
        ]


def test_three_replicas_behind_one_redis_hold_ten_streams_under_a_burst_of_a_hundred(tmp_path: Path) -> None:
    """100 calls of one caller at once, spread over three gateway processes sharing one Redis: exactly 10
    are admitted, the other 90 get QUOTA_EXCEEDED with their details."""
    text = "callers:\n  alpha:\n    concurrent_streams: 10\n"

    async def go(targets: list[str]) -> None:
        channels = [grpc.aio.insecure_channel(t) for t in targets]
        stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
        for channel in channels:
            await channel.channel_ready()
        # Streams that stay open for the whole burst: the first token comes after 20 s.
        calls = [
            stubs[i % 3].StreamMessage(
                stream_request(body(f"[[sim:ttft 20]] burst {i}")), timeout=30, metadata=as_caller("alpha")
            )
            for i in range(100)
        ]

        async def outcome(call: grpc.aio.UnaryStreamCall) -> str:
            try:
                await call.read()  # message_start comes at once for an admitted call
                return "admitted"
            except grpc.aio.AioRpcError as exc:
                status = status_of(exc)
                assert status.error_info is not None
                assert status.quota_failure is not None
                assert status.retry_info is not None
                return str(status.error_info.reason)

        outcomes = await asyncio.gather(*(outcome(c) for c in calls))
        assert outcomes.count("admitted") == 10
        assert outcomes.count("QUOTA_EXCEEDED") == 90
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()

    with redis_server() as store, replicas(3, tmp_path, text, GATEWAY_REDIS_URL=store.url) as gateways:
        run(lambda: go([target for _, target in gateways]))


def test_two_replicas_share_one_limit_and_a_killed_replicas_slots_come_back(tmp_path: Path) -> None:
    """Two gateway processes on one Redis enforce one stream limit between them; when the one holding the
    streams is killed (SIGKILL, no clean-up), its slots free within the lease and the other admits again."""
    text = "callers:\n  alpha:\n    concurrent_streams: 2\n"

    async def go(first: str, second: str, kill: Any) -> None:
        async with grpc.aio.insecure_channel(first) as a, grpc.aio.insecure_channel(second) as b:
            stub_a, stub_b = chat_pb2_grpc.ChatServiceStub(a), chat_pb2_grpc.ChatServiceStub(b)
            held = [await first_event(stub_a, "alpha", f"[[sim:ttft 30]] hold {i}") for i in range(2)]
            status = await refused(stub_b, body(), "alpha")
            assert status.error_info is not None
            assert status.error_info.reason == "QUOTA_EXCEEDED"
            # Longer than the 2 s lease: the slots still hold because the live replica renews them (every
            # 0.67 s: a lease that a busy machine's stalls of a second do not let lapse).
            await asyncio.sleep(3)
            status = await refused(stub_b, body(), "alpha")
            assert status.error_info is not None
            assert status.error_info.reason == "QUOTA_EXCEEDED"
            kill()
            for call in held:
                call.cancel()

            async def admitted() -> bool:
                call = stub_b.StreamMessage(stream_request(body()), timeout=10, metadata=as_caller("alpha"))
                try:
                    return bool([r async for r in call])
                except grpc.aio.AioRpcError as exc:
                    refusals.append(status_of(exc))
                    return False

            refusals: list[Status] = []
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await eventually(admitted, timeout=30)
            assert loop.time() - killed_at < 10  # the 2 s lease and calls that find it lapsed: not never
            assert {s.error_info.reason for s in refusals if s.error_info} <= {"QUOTA_EXCEEDED"}

    with (
        redis_server() as store,
        replicas(2, tmp_path, text, GATEWAY_REDIS_URL=store.url, GATEWAY_LEASE_SECONDS="2") as gateways,
    ):
        (proc_a, target_a), (_, target_b) = gateways
        run(lambda: go(target_a, target_b, lambda: proc_a.send_signal(signal.SIGKILL)))


# ---- spend budgets (USD per day and per month) ----

MIDNIGHT = 1_796_601_600.0  # 2026-12-07T00:00:00Z: the test's clock starts an hour before it
BUDGET = "callers:\n  alpha:\n    usd_per_day: 0.05\n  beta: {}\n"
EXPENSIVE = "claude-opus-4-6"  # $25 per million output tokens: 1000 of them cost $0.025


def spent_in_redis(url: str, caller: str, day: str) -> int:
    """Millionths of a dollar Redis counts for ``caller`` on the UTC ``day``."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.get(keys(caller, day, day[:7])[2]) or 0)
    finally:
        client.close()


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_a_daily_budget_refuses_a_caller_once_its_spend_passes_it_on_every_replica_until_the_day_ends(
    tmp_path: Path, store: str
) -> None:
    """`usd_per_day: 0.05`: two calls of $0.025 and a little input, one on each replica sharing a redis-server
    (or on one gateway counting in memory), are admitted and charged their real cost (the trailer's, to the
    millionth); their sum passes the budget, so the next call is refused on either replica with
    RESOURCE_EXHAUSTED, a QuotaFailure naming usd_per_day and a RetryInfo of the time left in the UTC day,
    and the upstream never hears of it; another caller is untouched; once the clock passes midnight the
    caller is admitted again."""
    now = [MIDNIGHT - 3600.0]

    async def go(redis_url: str) -> None:
        replicas = 2 if redis_url else 1
        async with Simulator(Pace(), api_key=API_KEY) as sim:
            settings = Settings(
                listen="127.0.0.1:0",
                caller_identity="token",
                callers_file=str(callers_file(tmp_path)),
                policy_file=policy(tmp_path, BUDGET),
                redis_url=redis_url,
            )
            gateways = [
                await build_server(
                    settings, sdk_client(settings, base_url=sim.base_url, api_key=API_KEY), clock=lambda: now[0]
                )
                for _ in range(replicas)
            ]
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.port}") for g in gateways]
            stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
            try:
                costs = []
                for i in range(2):
                    call = stubs[i % replicas].StreamMessage(
                        stream_request(body("[[sim:tokens 1000]] spend", model=EXPENSIVE, max_tokens=2000)),
                        timeout=30,
                        metadata=as_caller("alpha"),
                    )
                    assert [r async for r in call]
                    usage = from_metadata(await call.trailing_metadata())
                    assert usage is not None
                    assert usage.cost_usd is not None
                    costs.append(usage.cost_usd)
                assert 0.025 < costs[0] < 0.05 < sum(costs)
                charged_micro = sum(math.ceil(c * 1e6 - 1e-6) for c in costs)
                if redis_url:
                    await until(lambda: spent_in_redis(redis_url, "alpha", "2026-12-06") == charged_micro)
                else:
                    quotas = gateways[0].admission.quotas
                    assert isinstance(quotas, MemoryQuotas)
                    await until(lambda: quotas.spent("alpha").get("day:2026-12-06") == charged_micro)
                for stub in stubs:
                    status = await refused(stub, body(model=EXPENSIVE), "alpha")
                    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert status.error_info is not None
                    assert status.error_info.reason == "QUOTA_EXCEEDED"
                    assert status.quota_failure is not None
                    (violation,) = status.quota_failure.violations
                    assert (violation.quota_metric, violation.quota_value) == ("usd_per_day", 50_000)
                    assert "$0.05" in violation.description
                    assert status.retry_info is not None
                    assert status.retry_info.retry_delay.ToNanoseconds() / 1e9 == pytest.approx(3600, abs=1)
                assert len(sim.requests) == 2
                assert await h_events_on(stubs[-1], body(model=EXPENSIVE), "beta")  # another caller: no budget
                now[0] = MIDNIGHT + 1  # the next UTC day
                for stub in stubs:
                    assert await h_events_on(stub, body(model=EXPENSIVE), "alpha")
            finally:
                for channel in channels:
                    await channel.close()
                for g in gateways:
                    await g.close()

    if store == "redis":
        with redis_server() as server:
            run(lambda: go(server.url))
    else:
        run(lambda: go(""))


async def h_events_on(stub: chat_pb2_grpc.ChatServiceStub, request_body: dict[str, Any], caller: str) -> list[Any]:
    """Every response of one StreamMessage call of ``caller`` on ``stub``."""
    call = stub.StreamMessage(stream_request(request_body), timeout=30, metadata=as_caller(caller))
    return [r async for r in call]


def test_spend_windows_are_the_utc_day_and_calendar_month_with_the_time_left_in_each() -> None:
    """SpendWindows names the UTC day and month of a moment and the seconds until each ends (December's end
    rolls into the next year)."""
    windows = SpendWindows.at(MIDNIGHT - 3600.0)
    assert (windows.day, windows.month, windows.day_left) == ("2026-12-06", "2026-12", 3600.0)
    assert windows.month_left == 25 * 86400 + 3600.0  # to 2027-01-01T00:00:00Z
