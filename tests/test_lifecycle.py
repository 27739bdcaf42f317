"""Stream lifecycle under faults: deadlines, cancellation, retries, backpressure, admission."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from claude_gateway import codec
from claude_gateway.client import create_request
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from simulator import Cut, ErrorEvent, HttpError, Pace, Stall
from tests.harness import (
    Harness,
    at_once,
    body,
    gateway,
    run,
    status_of,
    stream_request,
    unread_from,
    until,
)

SERVICE_CONFIG = Path(__file__).resolve().parents[1] / "client" / "service_config.json"


async def read_events(call: Any, count: int) -> list[pb.MessageStreamEvent]:
    """Read responses until at least ``count`` events have arrived."""
    got: list[pb.MessageStreamEvent] = []
    while len(got) < count:
        response = await call.read()
        assert response is not grpc.aio.EOF
        got.extend(response.events)
    return got


def taken_from_upstream(h: Harness) -> int:
    """Bytes of the last upstream response the gateway has read: what the simulator wrote less what still
    waits in the kernel's socket queues (on loopback those take megabytes, which the gateway never saw)."""
    return h.sim.requests[-1].bytes_sent - unread_from(h.sim.port)


async def peak_once_settled(taken: Callable[[], int], ceiling: int) -> int:
    """The most ``taken`` reaches: polled until it stops growing, or until it passes ``ceiling``.

    Stopped growing means no new peak over 25 polls and over as long as the growth before it lasted (half
    a second at least): a slow machine, on which the gateway reads slowly, is waited for longer."""
    loop = asyncio.get_running_loop()
    started = grown_at = loop.time()
    peak, still = taken(), 0
    while peak <= ceiling:
        await asyncio.sleep(0.02)
        now, value = loop.time(), taken()
        if value > peak:
            peak, grown_at, still = value, now, 0
        else:
            still += 1
            if still >= 25 and now - grown_at >= max(0.5, grown_at - started):
                break
    return peak


async def assert_upstream_closed_soon_after_cancel(h: Harness, cancel: Callable[[], object], bound: float) -> None:
    loop = asyncio.get_running_loop()
    record = h.sim.requests[-1]
    cancelled_at = loop.time()
    cancel()
    closed_at = await record.wait_closed(timeout=30)
    assert closed_at - cancelled_at < bound
    await until(lambda: h.gateway.admission.active == 0)


def test_cancel_while_waiting_for_response_headers_closes_the_upstream_connection() -> None:
    """A client cancel before the upstream answered closes the upstream connection at once."""

    async def go() -> None:
        async with gateway() as h:
            bound = await at_once(h)
            h.sim.enqueue(Stall(after_events=-1))
            call = h.stub.StreamMessage(stream_request(body()), timeout=30)
            await until(lambda: len(h.sim.requests) == 1)
            await assert_upstream_closed_soon_after_cancel(h, call.cancel, bound)
            assert h.sim.requests[-1].status is None

    run(go)


def test_cancel_mid_stream_closes_the_upstream_connection() -> None:
    """A client cancel while events flow closes the upstream connection at once."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=100)) as h:
            bound = await at_once(h)
            call = h.stub.StreamMessage(stream_request(body("[[sim:tokens 5000]] long answer")), timeout=30)
            await read_events(call, 5)
            await assert_upstream_closed_soon_after_cancel(h, call.cancel, bound)
            assert h.sim.requests[-1].events_sent < 100

    run(go)


def test_cancel_of_a_unary_call_closes_the_upstream_connection() -> None:
    """Cancelling CreateMessage mid-way closes its upstream connection at once."""

    async def go() -> None:
        async with gateway() as h:
            bound = await at_once(h)
            h.sim.enqueue(Stall(after_events=4))
            call = h.stub.CreateMessage(pb.CreateMessageRequest(params=stream_request(body()).params), timeout=30)
            await until(lambda: bool(h.sim.requests) and h.sim.requests[-1].events_sent >= 4)
            await assert_upstream_closed_soon_after_cancel(h, call.cancel, bound)
            with pytest.raises(asyncio.CancelledError):
                await call

    run(go)


def test_cancel_during_retry_backoff_sends_no_further_attempt() -> None:
    """A cancel while the gateway waits to retry ends the call at once, well inside the wait (a call that
    sat out its backoff first would not), and no new upstream request follows."""

    async def go() -> None:
        async with gateway(max_attempts=3) as h:
            h.sim.enqueue(HttpError(529, "overloaded_error", retry_after=2.0))
            call = h.stub.StreamMessage(stream_request(body()), timeout=30)
            await until(lambda: len(h.sim.requests) == 1 and h.sim.requests[0].status == 529)
            loop = asyncio.get_running_loop()
            answered_at = loop.time()
            call.cancel()
            await until(lambda: h.gateway.admission.active == 0, timeout=1.0)  # half the wait
            await asyncio.sleep(answered_at + 2.5 - loop.time())  # past the retry-after: a retry would be here
            assert len(h.sim.requests) == 1

    run(go)


def test_client_deadline_mid_stream_closes_upstream_and_reports_deadline_exceeded() -> None:
    """When the client's deadline passes mid-stream, it gets DEADLINE_EXCEEDED and the upstream is closed."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50)) as h:
            bound = await at_once(h)
            call = h.stub.StreamMessage(stream_request(body("[[sim:tokens 5000]] slow")), timeout=0.5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await h.sim.requests[-1].wait_closed(timeout=2 * bound)  # not 100 s on, at the stream's end
            await until(lambda: h.gateway.admission.active == 0)

    run(go)


@pytest.mark.parametrize(
    ("fault", "settings", "reason"),
    [
        (Stall(after_events=-1), {"first_event_timeout": 0.3}, "FIRST_EVENT_TIMEOUT"),
        (Stall(after_events=4), {"idle_timeout": 0.3}, "UPSTREAM_IDLE_TIMEOUT"),
        (None, {"max_stream_seconds": 0.4}, "MAX_STREAM_DURATION"),
    ],
    ids=["first-event", "idle", "total"],
)
def test_each_time_bound_ends_with_deadline_exceeded_naming_itself(
    fault: Any, settings: dict[str, Any], reason: str
) -> None:
    """First-event, idle and total bounds each end the call with DEADLINE_EXCEEDED and their reason."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=20), **settings) as h:
            if fault is not None:
                h.sim.enqueue(fault)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body("[[sim:tokens 1000]] bounded"), timeout=10)
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert status.error_info is not None
            assert status.error_info.reason == reason
            await h.sim.requests[-1].wait_closed(timeout=1)

    run(go)


def test_pings_keep_a_long_quiet_stream_alive() -> None:
    """Upstream pings count as life: a first token later than idle_timeout still arrives. (A ping every
    0.1 s: an idle_timeout ten times that is not reached by a busy machine's stalls between two pings.)"""

    async def go() -> None:
        async with gateway(Pace(ttft=2.0, ping_interval=0.1), idle_timeout=1.0) as h:
            events = await h.events(body())
            assert events[-1]["type"] == "message_stop"
            assert [e["type"] for e in events].count("ping") >= 5

    run(go)


@pytest.mark.parametrize(
    "faults",
    [
        [HttpError(529, "overloaded_error", retry_after_ms=20)],
        [HttpError(429, "rate_limit_error", retry_after=0.02), HttpError(500, "api_error", retry_after=0.02)],
        [Cut(after_events=0)],
        [ErrorEvent(after_events=0, error_type="overloaded_error")],
    ],
    ids=["529", "429-then-500", "cut-before-first-event", "error-event-before-first-event"],
)
def test_failures_before_the_first_event_are_retried(faults: list[Any]) -> None:
    """Retryable failures before any event reaches the client are retried; the client sees one clean stream."""

    async def go() -> None:
        async with gateway(max_attempts=3) as h:
            h.sim.enqueue(*faults)
            events = await h.events(body())
            assert events[0]["type"] == "message_start"
            assert events[-1]["type"] == "message_stop"
            assert len(h.sim.requests) == len(faults) + 1

    run(go)


def test_retry_waits_as_long_as_retry_after_says() -> None:
    """The gateway waits at least the upstream's retry-after-ms before its next attempt."""

    async def go() -> None:
        async with gateway(max_attempts=2) as h:
            h.sim.enqueue(HttpError(529, "overloaded_error", retry_after_ms=150))
            await h.events(body())
            first, second = h.sim.requests
            assert second.received_at - first.received_at >= 0.15

    run(go)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (HttpError(400, "invalid_request_error"), grpc.StatusCode.INVALID_ARGUMENT),
        (HttpError(529, "overloaded_error", should_retry=False), grpc.StatusCode.UNAVAILABLE),
    ],
    ids=["400", "x-should-retry-false"],
)
def test_non_retryable_failures_are_not_retried(fault: Any, code: grpc.StatusCode) -> None:
    """A 400, or any status the upstream marks x-should-retry: false, fails after one attempt."""

    async def go() -> None:
        async with gateway(max_attempts=3) as h:
            h.sim.enqueue(fault)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body())
            assert caught.value.code() == code
            assert len(h.sim.requests) == 1

    run(go)


def test_retry_never_outlives_the_deadline() -> None:
    """A retry-after longer than the time left fails at once with the upstream status and RetryInfo."""

    async def go() -> None:
        async with gateway(max_attempts=3) as h:
            h.sim.enqueue(HttpError(429, "rate_limit_error", retry_after=30))
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body(), timeout=30)
            assert loop.time() - started < 15  # at once, not at the deadline
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status.retry_info is not None
            assert status.retry_info.retry_delay.seconds == 30
            assert len(h.sim.requests) == 1

    run(go)


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (Cut(after_events=5), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_CONNECTION_LOST"),
        (ErrorEvent(after_events=5), grpc.StatusCode.UNAVAILABLE, "OVERLOADED_ERROR"),
    ],
    ids=["reset", "error-event"],
)
def test_failures_after_the_first_event_are_never_replayed(fault: Any, code: grpc.StatusCode, reason: str) -> None:
    """After content reached the client the gateway does not retry; ErrorInfo says how much was delivered."""

    async def go() -> None:
        async with gateway(max_attempts=3) as h:
            h.sim.enqueue(fault)
            call = h.stub.StreamMessage(stream_request(body()), timeout=10)
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for response in call:
                    got.extend(response.events)
            status = status_of(caught.value)
            assert (status.code, status.error_info and status.error_info.reason) == (code, reason)
            assert status.error_info is not None
            assert status.error_info.metadata["events_delivered"] == str(len(got)) == "5"
            assert status.retry_info is None
            assert len(h.sim.requests) == 1

    run(go)


def test_admission_limit_refuses_extra_streams_while_health_answers() -> None:
    """Past max_concurrent_streams new calls get RESOURCE_EXHAUSTED at once; health keeps SERVING."""

    async def go() -> None:
        async with gateway(max_concurrent_streams=2) as h:
            h.sim.enqueue(Stall(after_events=2), Stall(after_events=2))
            held = [h.stub.StreamMessage(stream_request(body()), timeout=30) for _ in range(2)]
            for call in held:
                await read_events(call, 2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.events(body())
            status = status_of(caught.value)
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status.error_info is not None
            assert status.error_info.reason == "TOO_MANY_STREAMS"
            assert len(h.sim.requests) == 2
            reply = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            for call in held:
                call.cancel()
            await until(lambda: h.gateway.admission.active == 0)
            assert (await h.events(body()))[-1]["type"] == "message_stop"

    run(go)


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
def test_slow_reader_slows_the_upstream_instead_of_growing_a_buffer(http_client: str) -> None:
    """A client that stops reading stops the gateway's upstream reads too: of a 10 MB stream the gateway
    takes a few buffers' worth and leaves the rest in the upstream's socket until the client reads on.
    Catches a gateway that reads ahead of its client into memory (a queue, a write that does not wait):
    it would take the whole stream.

    The client keeps grpc's default 64 KB flow-control window (no BDP growth), so what it does not read
    holds up the gateway's writes, which hold up its upstream reads. What the gateway took is measured
    (``taken_from_upstream``), not guessed from how fast the simulator writes: a busy machine slows both.
    """
    total = 80_000  # tokens: about 10 MB of SSE
    # What the gateway may hold while its client does not read: grpc's send buffer and the client's window
    # (as protos, a third the size of their SSE), one HTTP read. Measured: 1.7 MB with aiohttp, 0.9 with httpx.
    ceiling = 4 << 20

    async def go() -> None:
        async with gateway(http_client=http_client) as h:
            request = body(f"[[sim:tokens {total}]] flood", max_tokens=total + 100)
            options = [("grpc.http2.bdp_probe", 0)]
            async with grpc.aio.insecure_channel(h.target, options=options) as channel:
                call = chat_pb2_grpc.ChatServiceStub(channel).StreamMessage(stream_request(request), timeout=600)
                received = len(await read_events(call, 1))
                taken = await peak_once_settled(lambda: taken_from_upstream(h), ceiling)
                assert taken <= ceiling, f"the gateway read {taken} bytes ahead of a client that did not read"
                while (response := await call.read()) is not grpc.aio.EOF:
                    received += len(response.events)
                assert received >= total
                assert h.sim.requests[-1].bytes_sent > 2 * ceiling  # a read-ahead would have shown

    run(go)


def test_stock_grpc_client_with_the_shipped_service_config_rides_through_a_transient_failure() -> None:
    """A plain grpc channel using client/service_config.json retries UNAVAILABLE before the first message."""

    async def go() -> None:
        async with gateway(max_attempts=1) as h:  # no gateway-side retry: the client's policy must do it
            h.sim.enqueue(HttpError(529, "overloaded_error"))
            config = json.loads(SERVICE_CONFIG.read_text())
            options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
            async with grpc.aio.insecure_channel(h.target, options=options) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                events = [codec.to_json(e) async for r in stub.StreamMessage(stream_request(body())) for e in r.events]
            assert events[-1]["type"] == "message_stop"
            assert [r.status for r in h.sim.requests] == [529, 200]

    run(go)


def test_stock_grpc_client_with_the_shipped_service_config_fails_fast_on_a_wrong_port() -> None:
    """With client/service_config.json, a call to a port where nothing listens ends UNAVAILABLE, not at its deadline.

    The port is bound and never listened on, so every connection attempt is refused. The config's
    waitForReady is false: a call on a channel whose connection attempt failed fails at once (and
    is retried by the retryPolicy, which fails again); with waitForReady true it would wait out the
    deadline and end DEADLINE_EXCEEDED.
    """

    async def go() -> grpc.StatusCode:
        config = json.loads(SERVICE_CONFIG.read_text())
        options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            target = f"127.0.0.1:{closed.getsockname()[1]}"
            async with grpc.aio.insecure_channel(target, options=options) as channel:
                call = chat_pb2_grpc.ChatServiceStub(channel).CreateMessage(create_request(body()), timeout=30)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call
                return failed.value.code()

    assert run(go) == grpc.StatusCode.UNAVAILABLE


def test_connection_age_never_cuts_a_stream_inside_its_allowed_life() -> None:
    """A stream that outlives max_connection_age on its connection still completes."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=40), max_connection_age=0.2, max_stream_seconds=30) as h:
            events = await h.events(body("[[sim:tokens 40]] long-lived"), timeout=20)
            assert events[-1]["type"] == "message_stop"

    run(go)


def test_time_blocked_on_a_slow_client_is_not_upstream_silence() -> None:
    """A client that stops reading for longer than idle_timeout still gets its whole stream. Catches a
    watchdog that counts the time the gateway waits to write to its client as upstream silence.

    The client resumes only once the gateway has read nothing for two idle timeouts while the upstream
    had bytes waiting for it: time it spent blocked on its writes, however slowly the machine got it there.
    idle_timeout is long enough that a busy machine's stalls, which delay reads, do not pass for silence.
    """
    total = 30_000  # tokens, about 4 MB: more than the gateway's buffers take (see the test above)
    idle = 2.0

    async def go() -> None:
        async with gateway(idle_timeout=idle) as h:
            request = body(f"[[sim:tokens {total}]] pause", max_tokens=total + 100)
            options = [("grpc.http2.bdp_probe", 0)]  # a small window, so the gateway's writes block
            async with grpc.aio.insecure_channel(h.target, options=options) as channel:
                call = chat_pb2_grpc.ChatServiceStub(channel).StreamMessage(stream_request(request), timeout=600)
                received = len(await read_events(call, 1))
                loop = asyncio.get_running_loop()
                peak, since = taken_from_upstream(h), loop.time()
                while loop.time() - since < 2 * idle:  # the pause under test
                    assert h.gateway.admission.active == 1, "the call ended while its client was not reading"
                    await asyncio.sleep(0.02)
                    taken = taken_from_upstream(h)
                    if taken > peak or not unread_from(h.sim.port):
                        peak, since = max(peak, taken), loop.time()
                while (response := await call.read()) is not grpc.aio.EOF:
                    received += len(response.events)
                assert await call.code() == grpc.StatusCode.OK
                assert received == total + 6

    run(go)
