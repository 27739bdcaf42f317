"""Resumable streams: every event numbered, every stream named; detached streams, ResumeStream, CancelStream,
in memory and on Redis, across replicas (docs/api.md, "Resumable streams")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from claude_gateway import codec
from claude_gateway.client import AsyncGateway
from claude_gateway.client import Gateway as Client
from claude_gateway.errors import GatewayError as ClientError
from claude_gateway.resumption import RESUME_ATTEMPTS
from claude_gateway.streaming import MessageStream
from claude_gateway.usage import from_metadata
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import REQUEST_ID_KEY, STREAM_ID_KEY, USAGE_KEY
from google.protobuf import json_format
from grpc_status import rpc_status
from redis.exceptions import RedisError, ResponseError

from server.app import Gateway, build_server, sdk_client
from server.config import Settings
from server.streams.ids import new_id, well_formed
from server.streams.redis_store import Writer
from simulator import Pace, Simulator, Stall
from tests.harness import API_KEY, ROOT, Status, body, clean_env, gateway, run, status_of, stream_request, until
from tests.proxy import Proxy
from tests.store import free_port, redis_server
from tests.test_quotas import as_caller, callers_file, eventually, policy, refused, scrape
from tests.test_web import SERVICE, envelope, frames, http_gateway, post, request_json

PACED = Pace(ttft=0.02, tokens_per_second=200)


def numbered(responses: list[pb.StreamMessageResponse] | list[pb.ResumeStreamResponse]) -> list[int]:
    """The sequence number of every event the responses carry, in order."""
    return [response.sequence + i for response in responses for i in range(len(response.events))]


def test_every_event_of_a_plain_stream_is_numbered_from_one_and_the_stream_is_named_before_it() -> None:
    """Each response carries its first event's number, 1, 2, 3... without a gap over the whole stream, however the
    events were batched; the stream id comes in the initial metadata beside the request id, one id per stream."""

    async def go() -> None:
        async with gateway() as h:
            ids = []
            for prompt in ("Hello [[sim:tokens 30]]", "Again [[sim:tokens 3]]"):
                call = h.stub.StreamMessage(stream_request(body(prompt)), timeout=10)
                metadata = dict(await call.initial_metadata())
                responses = [r async for r in call]
                assert any(len(r.events) > 1 for r in responses) or prompt.startswith("Again")
                count = sum(len(r.events) for r in responses)
                assert numbered(responses) == list(range(1, count + 1))
                assert str(metadata[REQUEST_ID_KEY]).startswith("req_")
                ids.append(str(metadata[STREAM_ID_KEY]))
            assert all(well_formed(i) for i in ids)
            assert ids[0] != ids[1]

    run(go)


def test_a_connect_stream_is_named_in_a_response_header_and_numbered_in_each_message() -> None:
    """Over Connect JSON the stream id is a response header and each message's `sequence` numbers its first event."""

    async def go() -> None:
        async with http_gateway(PACED) as (_, url):
            data = json.dumps(request_json("Hello [[sim:tokens 12]]")).encode()
            reply = await post(f"{url}{SERVICE}/StreamMessage", "application/connect+json", envelope(data))
            assert well_formed(reply.headers[STREAM_ID_KEY])
            *messages, _ = frames(reply.body)
            responses = [json.loads(m) for _, m in messages]
            firsts = [int(r["sequence"]) for r in responses]
            counts = [len(r["events"]) for r in responses]
            assert firsts == [1 + sum(counts[:i]) for i in range(len(counts))]

    run(go)


# ---- resumable streams in one gateway (events in memory) ----

GRACE = 30


def resumable(prompt: str, grace: int = GRACE, **params: Any) -> pb.StreamMessageRequest:
    """A StreamMessage request for a resumable stream."""
    request = stream_request(body(prompt, **params))
    request.detach_grace_seconds = grace
    return request


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without what differs between two replies to the same prompt (the message id)."""
    out = []
    for event in events:
        if event["type"] == "message_start":
            event = {**event, "message": {k: v for k, v in event["message"].items() if k != "id"}}
        out.append(event)
    return out


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")


@dataclass
class Read:
    """What a caller got from one StreamMessage or ResumeStream call."""

    metadata: dict[str, Any]
    numbers: list[int]
    events: list[dict[str, Any]]
    trailer: dict[str, Any] | None = None
    error: Status | None = None


async def read(call: Any, responses: int | None = None) -> Read:
    """Read ``call`` (to its end, or ``responses`` non-empty responses); an error ends the read, kept as its status."""
    got = Read(dict(await call.initial_metadata()), [], [])
    try:
        while responses is None or len(got.numbers) < responses or not got.numbers:
            response = await call.read()
            if response is grpc.aio.EOF:
                got.trailer = dict(await call.trailing_metadata())
                break
            got.numbers.extend(numbered([response]))
            got.events.extend(codec.to_json(e) for e in response.events)
            if responses is not None and len(got.numbers) >= responses:
                break
    except grpc.aio.AioRpcError as error:
        got.error = status_of(error)
        got.trailer = dict(error.trailing_metadata() or ())
    return got


async def resume(stub: chat_pb2_grpc.ChatServiceStub, stream_id: str, after: int, **kwargs: Any) -> Read:
    """One whole ResumeStream call (once the channel is connected again, if a cut dropped it). A call the network
    failed before its first response is made again, as the client library's resume does: right after a cut, the
    channel can still send it on the reset connection ("Stream removed (sendmsg: Broken pipe)")."""
    request = pb.ResumeStreamRequest(stream_id=stream_id, after_seq=after)
    for _ in range(RESUME_ATTEMPTS - 1):
        call = stub.ResumeStream(request, timeout=30, wait_for_ready=True, **kwargs)
        if await call.initial_metadata() or not await network_failed(call):
            return await read(call)
    return await read(stub.ResumeStream(request, timeout=30, wait_for_ready=True, **kwargs))


async def network_failed(call: Any) -> bool:
    """Whether a call that ended before its initial metadata was failed by the network: UNAVAILABLE, and no status
    details, which every status the gateway gives carries."""
    return bool(await call.code() == grpc.StatusCode.UNAVAILABLE and await rpc_status.aio.from_call(call) is None)


def usage(got: Read) -> dict[str, Any]:
    """The usage report a read ended with (it must have one)."""
    assert got.trailer is not None, got
    assert USAGE_KEY in got.trailer, got
    report: dict[str, Any] = json.loads(got.trailer[USAGE_KEY])
    return report


def reason(got: Read) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason a read ended with (it must have failed)."""
    assert got.error is not None, got
    assert got.error.error_info is not None, got
    return got.error.code, got.error.error_info.reason


def test_a_caller_that_leaves_a_resumable_stream_resumes_it_and_gets_every_event_exactly_once() -> None:
    """The caller hangs up mid-stream: the gateway reads on (the upstream is not cancelled); ResumeStream from the
    last event the caller had gives the rest, numbered on, ending with the usage report of the whole call; the two
    reads together are exactly what an uninterrupted stream gives, from one upstream request."""

    async def go() -> None:
        async with gateway(PACED) as h:
            prompt = "Tell me [[sim:tokens 60]]"
            whole = await h.events(body(prompt))
            requests = len(h.sim.requests)
            call = h.stub.StreamMessage(resumable(prompt), timeout=30)
            first = await read(call, responses=8)
            stream_id = str(first.metadata[STREAM_ID_KEY])
            call.cancel()
            record = h.sim.requests[-1]
            await until(lambda: record.events_sent > 30)  # the gateway reads on without its caller
            assert record.closed_at is None or record.events_sent >= len(whole)
            rest = await resume(h.stub, stream_id, first.numbers[-1])
            assert rest.error is None
            assert rest.metadata[STREAM_ID_KEY] == stream_id
            assert str(rest.metadata[REQUEST_ID_KEY]) == record.request_id
            assert first.numbers + rest.numbers == list(range(1, len(whole) + 1))
            assert comparable(first.events + rest.events) == comparable(whole)
            assert usage(rest)["usage"]["output_tokens"] == 60
            assert usage(rest)["partial"] is False
            assert len(h.sim.requests) == requests + 1

    run(go)


def test_the_stream_id_comes_before_the_upstream_answers_so_a_drop_before_the_first_event_resumes() -> None:
    """A resumable stream's initial metadata (its id) goes out at once, even while the upstream has not answered;
    a caller cut before its first event resumes from 0 and gets the whole reply; the request id then comes in
    the trailers."""

    async def go() -> None:
        async with gateway(PACED) as h:
            h.sim.enqueue(Stall(after_events=-1))  # this one's upstream never answers
            stalled = h.stub.StreamMessage(resumable("Stalled"), timeout=30)
            metadata = dict(await stalled.initial_metadata())
            assert REQUEST_ID_KEY not in metadata
            await until(lambda: len(h.sim.requests) == 1)
            assert h.sim.requests[-1].status is None  # the upstream has the request, and sent nothing back
            await h.stub.CancelStream(pb.CancelStreamRequest(stream_id=str(metadata[STREAM_ID_KEY])), timeout=10)
            assert reason(await read(stalled)) == (grpc.StatusCode.CANCELLED, "STREAM_CANCELLED")

            call = h.stub.StreamMessage(resumable("Slow [[sim:tokens 10]]"), timeout=30)
            metadata = dict(await call.initial_metadata())
            call.cancel()  # before reading any event
            got = await resume(h.stub, str(metadata[STREAM_ID_KEY]), 0)
            assert got.numbers == list(range(1, len(got.events) + 1))
            assert got.events[0]["type"] == "message_start"
            assert got.events[-1]["type"] == "message_stop"
            assert text_of(got.events).strip().startswith("Slow the simulator")
            assert got.trailer is not None
            assert str(got.trailer[REQUEST_ID_KEY]).startswith("req_")
            assert len(h.sim.requests) == 2

    run(go)


def test_a_stream_resumes_after_its_end_within_retention_with_the_same_numbers_and_trailers() -> None:
    """After a resumable stream ended, ResumeStream replays it (from 0, or from any event) with the same numbers
    and the same usage report; past the last event it is INVALID_ARGUMENT."""

    async def go() -> None:
        async with gateway() as h:
            call = h.stub.StreamMessage(resumable("Done [[sim:tokens 12]]"), timeout=30)
            whole = await read(call)
            stream_id = str(whole.metadata[STREAM_ID_KEY])
            again = await resume(h.stub, stream_id, 0)
            assert (again.numbers, again.events) == (whole.numbers, whole.events)
            assert usage(again) == usage(whole)
            tail = await resume(h.stub, stream_id, 5)
            assert tail.numbers == whole.numbers[5:]
            assert tail.events == whole.events[5:]
            assert reason(await resume(h.stub, stream_id, len(whole.numbers) + 1)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_REQUEST",
            )
            assert len(h.sim.requests) == 1

    run(go)


def test_unknown_malformed_and_plain_stream_ids_are_refused_with_their_own_statuses() -> None:
    """An id never seen is NOT_FOUND (STREAM_NOT_FOUND), as is a plain stream's (never kept); a malformed one is
    INVALID_ARGUMENT naming stream_id; CancelStream says the same."""

    async def go() -> None:
        async with gateway() as h:
            plain = await read(h.stub.StreamMessage(stream_request(body("Plain [[sim:tokens 3]]")), timeout=10))
            for stream_id in (new_id(), str(plain.metadata[STREAM_ID_KEY])):
                assert reason(await resume(h.stub, stream_id, 0)) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await h.stub.CancelStream(pb.CancelStreamRequest(stream_id=stream_id), timeout=10)
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            bad = await resume(h.stub, "not an id {}", 0)
            assert reason(bad) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
            assert bad.error is not None
            assert bad.error.bad_request is not None
            assert [v.field for v in bad.error.bad_request.field_violations] == ["stream_id"]

    run(go)


def test_a_stream_past_its_retention_or_evicted_resumes_as_expired_not_unknown() -> None:
    """Past GATEWAY_RESUME_RETENTION a stream's replay is OUT_OF_RANGE (STREAM_EXPIRED); so is one evicted from
    memory by the store's bound, and a resume from before the oldest events a long stream still keeps, while a
    resume from what it keeps replays the rest."""

    async def go() -> None:
        async with gateway(resume_retention=3, resume_memory_bytes=65536) as h:
            short = await read(h.stub.StreamMessage(resumable("Short [[sim:tokens 3]]"), timeout=10))
            short_id = str(short.metadata[STREAM_ID_KEY])
            assert (await resume(h.stub, short_id, 0)).error is None  # kept just after its end
            long = await read(h.stub.StreamMessage(resumable("Long [[sim:tokens 9000]]", max_tokens=10000), timeout=30))
            assert long.error is None
            long_id = str(long.metadata[STREAM_ID_KEY])
            # The long stream's 9000 events (about 140 KB) do not fit 64 KiB: its oldest were dropped, and the short
            # one evicted.
            assert reason(await resume(h.stub, short_id, 0)) == (grpc.StatusCode.OUT_OF_RANGE, "STREAM_EXPIRED")
            assert reason(await resume(h.stub, long_id, 0)) == (grpc.StatusCode.OUT_OF_RANGE, "STREAM_EXPIRED")
            tail = await resume(h.stub, long_id, len(long.numbers) - 20)
            assert tail.events == long.events[-20:]

            async def expired() -> bool:
                got = await resume(h.stub, long_id, len(long.numbers) - 20)
                return got.error is not None and reason(got) == (grpc.StatusCode.OUT_OF_RANGE, "STREAM_EXPIRED")

            await eventually(expired)

    run(go)


def test_only_the_caller_that_started_a_stream_may_resume_or_cancel_it(tmp_path: Path) -> None:
    """Another caller's ResumeStream and CancelStream are PERMISSION_DENIED (STREAM_OF_ANOTHER_CALLER), and leave
    the stream as it was; its own caller resumes it."""

    async def go() -> None:
        async with gateway(PACED, caller_identity="token", callers_file=str(callers_file(tmp_path))) as h:
            call = h.stub.StreamMessage(resumable("Mine [[sim:tokens 40]]"), timeout=30, metadata=as_caller("alpha"))
            first = await read(call, responses=2)
            stream_id = str(first.metadata[STREAM_ID_KEY])
            call.cancel()
            theirs = await resume(h.stub, stream_id, 0, metadata=as_caller("beta"))
            assert reason(theirs) == (grpc.StatusCode.PERMISSION_DENIED, "STREAM_OF_ANOTHER_CALLER")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.stub.CancelStream(
                    pb.CancelStreamRequest(stream_id=stream_id), timeout=10, metadata=as_caller("beta")
                )
            assert status_of(caught.value).code == grpc.StatusCode.PERMISSION_DENIED
            nobody = await resume(h.stub, stream_id, 0)
            assert reason(nobody) == (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED")
            mine = await resume(h.stub, stream_id, 0, metadata=as_caller("alpha"))
            assert mine.error is None
            assert text_of(mine.events).strip().startswith("Mine the simulator")

    run(go)


def test_cancel_stream_ends_a_detached_stream_at_once_and_its_resume_says_so() -> None:
    """CancelStream closes the upstream request of a stream nobody follows at once; a resume then replays what
    was read and ends CANCELLED (STREAM_CANCELLED); a second CancelStream is a no-op."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50)) as h:
            call = h.stub.StreamMessage(resumable("Long [[sim:tokens 5000]]", max_tokens=8000), timeout=30)
            first = await read(call, responses=3)
            stream_id = str(first.metadata[STREAM_ID_KEY])
            call.cancel()
            record = h.sim.requests[-1]
            await until(lambda: record.events_sent > 10)
            cancelled_at = asyncio.get_running_loop().time()
            await h.stub.CancelStream(pb.CancelStreamRequest(stream_id=stream_id), timeout=10)
            assert await record.wait_closed(timeout=2) - cancelled_at < 0.5
            await h.stub.CancelStream(pb.CancelStreamRequest(stream_id=stream_id), timeout=10)
            rest = await resume(h.stub, stream_id, first.numbers[-1])
            assert reason(rest) == (grpc.StatusCode.CANCELLED, "STREAM_CANCELLED")
            assert first.numbers + rest.numbers == list(range(1, len(first.numbers) + len(rest.numbers) + 1))
            assert usage(rest)["partial"] is True
            assert h.gateway.admission.active == 0

    run(go)


def test_a_stream_nobody_resumes_within_its_grace_is_cancelled_upstream() -> None:
    """With nobody following for its detach grace, the gateway cancels the stream's upstream request; a resume
    after that replays what was read and ends CANCELLED (STREAM_ABANDONED). A follower within the grace keeps it."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50)) as h:
            call = h.stub.StreamMessage(resumable("Long [[sim:tokens 5000]]", max_tokens=8000, grace=1), timeout=30)
            first = await read(call, responses=2)
            stream_id = str(first.metadata[STREAM_ID_KEY])
            call.cancel()
            record = h.sim.requests[-1]
            follower = h.stub.ResumeStream(pb.ResumeStreamRequest(stream_id=stream_id, after_seq=0), timeout=30)
            kept = await read(follower, responses=40)  # about 0.8 s of events: within the grace
            assert record.closed_at is None
            follower.cancel()
            await record.wait_closed(timeout=5)
            assert kept.numbers[0] == 1
            rest = await resume(h.stub, stream_id, 0)
            assert reason(rest) == (grpc.StatusCode.CANCELLED, "STREAM_ABANDONED")
            assert rest.numbers[: len(kept.numbers)] == kept.numbers

    run(go)


def test_a_detached_stream_stays_counted_in_its_callers_quota_and_the_gauge_until_it_ends(tmp_path: Path) -> None:
    """A caller with one stream allowed, whose resumable stream runs on without it, is refused a second stream
    (QUOTA_EXCEEDED) until that one ends; gateway_active_streams counts it meanwhile."""
    text = "callers:\n  alpha:\n    concurrent_streams: 1\n"

    async def go() -> None:
        async with gateway(
            Pace(tokens_per_second=50),
            caller_identity="token",
            callers_file=str(callers_file(tmp_path)),
            policy_file=policy(tmp_path, text),
        ) as h:
            call = h.stub.StreamMessage(
                resumable("Long [[sim:tokens 5000]]", max_tokens=8000), timeout=30, metadata=as_caller("alpha")
            )
            first = await read(call, responses=2)
            call.cancel()
            stream = h.gateway.store.find(str(first.metadata[STREAM_ID_KEY]), "alpha")  # type: ignore[union-attr]
            assert stream is not None
            await until(lambda: stream.followers == 0)  # the hang-up reached the gateway
            assert h.gateway.admission.active == 1
            assert (await refused(h.stub, body(), "alpha")).error_info.reason == "QUOTA_EXCEEDED"  # type: ignore[union-attr]
            await h.stub.CancelStream(
                pb.CancelStreamRequest(stream_id=str(first.metadata[STREAM_ID_KEY])),
                timeout=10,
                metadata=as_caller("alpha"),
            )
            await until(lambda: h.gateway.admission.active == 0)
            again = await read(
                h.stub.StreamMessage(
                    stream_request(body("Now [[sim:tokens 2]]")), timeout=10, metadata=as_caller("alpha")
                )
            )
            assert again.error is None

    run(go)


def test_a_resumable_stream_over_connect_sends_its_id_at_once_and_resumes_over_connect() -> None:
    """Over Connect a resumable stream's first message carries no events, only the headers with the stream id;
    ResumeStream over Connect replays the events after after_seq."""

    async def go() -> None:
        async with http_gateway(PACED) as (_, url):
            request = json_format.MessageToDict(resumable("Hello [[sim:tokens 12]]"))
            reply = await post(
                f"{url}{SERVICE}/StreamMessage", "application/connect+json", envelope(json.dumps(request).encode())
            )
            stream_id = reply.headers[STREAM_ID_KEY]
            (_, empty), *messages, _ = frames(reply.body)
            assert json.loads(empty) == {}
            streamed = [json.loads(m) for _, m in messages]
            again = await post(
                f"{url}{SERVICE}/ResumeStream",
                "application/connect+json",
                envelope(json.dumps({"streamId": stream_id, "afterSeq": "3"}).encode()),
            )
            assert again.headers[STREAM_ID_KEY] == stream_id
            (_, empty), *replayed, (_, end) = frames(again.body)
            assert next(json.loads(m) for _, m in replayed)["sequence"] == "4"
            events = [e for m in streamed for e in m["events"]]
            assert [e for _, m in replayed for e in json.loads(m)["events"]] == events[3:]
            assert "claude-gateway-usage" in json.loads(end)["metadata"]

    run(go)


# ---- across replicas, with the events in Redis ----


@contextlib.asynccontextmanager
async def replicas(count: int, pace: Pace = PACED, **settings: Any) -> AsyncIterator[tuple[Simulator, list[Gateway]]]:
    """``count`` gateways on one simulator (each with its own settings from ``settings``), torn down in order."""
    async with Simulator(pace, api_key=API_KEY) as sim, replicas_on(sim, count, **settings) as gateways:
        yield sim, gateways


@contextlib.asynccontextmanager
async def replicas_on(sim: Simulator, count: int, **settings: Any) -> AsyncIterator[list[Gateway]]:
    """``count`` gateways on ``sim``, closed on the way out."""
    gateways: list[Gateway] = []
    try:
        for _ in range(count):
            config = Settings(listen="127.0.0.1:0", **settings)
            gateways.append(await build_server(config, sdk_client(config, base_url=sim.base_url, api_key=API_KEY)))
        yield gateways
    finally:
        for gw in gateways:
            await gw.close()


def stub_of(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel)


async def dropped(call: Any) -> grpc.StatusCode:
    """Read ``call`` until its connection fails; the code the client library gives the drop."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    return caught.value.code()


def test_a_stream_cut_mid_way_resumes_on_a_second_replica_identical_from_one_upstream_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A proxy between the caller and replica A is cut mid-stream and sends the caller to replica B: ResumeStream
    there replays from Redis what the caller lacks and follows A's stream to its end. The text is byte-identical
    to an uninterrupted stream's, the simulator saw one request for it, and the usage report came once."""
    with redis_server() as redis:

        async def go() -> None:
            async with replicas(2, redis_url=redis.url) as (sim, (a, b)), Proxy(a.port) as proxy:
                prompt = "Across replicas [[sim:tokens 80]]"
                async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as direct:
                    whole = await read(stub_of(direct).StreamMessage(stream_request(body(prompt)), timeout=30))
                requests = len(sim.requests)
                async with grpc.aio.insecure_channel(proxy.address) as channel:
                    call = stub_of(channel).StreamMessage(resumable(prompt), timeout=30)
                    first = await read(call, responses=10)
                    stream_id = str(first.metadata[STREAM_ID_KEY])
                    proxy.cut(to=b.port)
                    assert await dropped(call) == grpc.StatusCode.UNAVAILABLE
                    assert a.store is not None
                    assert b.store is not None
                    assert a.store.find(stream_id, "anonymous") is not None  # A produces it...
                    rest = await resume(stub_of(channel), stream_id, first.numbers[-1])
                    assert b.store.find(stream_id, "anonymous") is None  # ...and B followed it from Redis
            assert rest.error is None
            assert first.numbers + rest.numbers == whole.numbers
            assert text_of(first.events + rest.events) == text_of(whole.events)
            assert comparable(first.events + rest.events) == comparable(whole.events)
            assert len(sim.requests) == requests + 1
            assert first.trailer is None  # the cut call had none: the usage report came once, at the end
            assert usage(rest)["usage"] == usage(whole)["usage"]
            assert rest.metadata[REQUEST_ID_KEY] == sim.requests[-1].request_id
            assert not [r for r in caplog.records if r.name == "server.streams" and r.levelname == "WARNING"]

        run(go)


def test_on_a_second_replica_a_stream_resumes_before_its_first_event_and_after_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From Redis: a stream whose caller was cut before the upstream answered resumes from 0 on replica B and is
    followed live there; after its end it replays whole on B, with the same numbers, trailers and usage."""
    with redis_server() as redis:

        async def go() -> None:
            async with (
                replicas(2, redis_url=redis.url) as (sim, (a, b)),
                Proxy(a.port) as proxy,
                grpc.aio.insecure_channel(proxy.address) as channel,
            ):
                call = stub_of(channel).StreamMessage(resumable("Wait [[sim:tokens 20]]"), timeout=30)
                metadata = dict(await call.initial_metadata())
                proxy.cut(to=b.port)  # before the caller read any event
                assert await dropped(call) == grpc.StatusCode.UNAVAILABLE
                live = await resume(stub_of(channel), str(metadata[STREAM_ID_KEY]), 0)
                again = await resume(stub_of(channel), str(metadata[STREAM_ID_KEY]), 0)
                tail = await resume(stub_of(channel), str(metadata[STREAM_ID_KEY]), 7)
            assert live.error is None
            assert live.numbers == list(range(1, len(live.events) + 1))
            assert text_of(live.events).strip().startswith("Wait the simulator")
            assert (again.numbers, again.events, usage(again)) == (live.numbers, live.events, usage(live))
            assert tail.events == live.events[7:]
            assert again.trailer is not None
            assert again.trailer[REQUEST_ID_KEY] == sim.requests[-1].request_id
            assert len(sim.requests) == 1
            assert not [r for r in caplog.records if r.name == "server.streams" and r.levelname == "WARNING"]

        run(go)


def test_on_a_second_replica_unknown_expired_and_other_callers_streams_are_refused(tmp_path: Path) -> None:
    """B knows A's streams from Redis: an id never seen is NOT_FOUND, one past its retention OUT_OF_RANGE
    (STREAM_EXPIRED), another caller's PERMISSION_DENIED; its own caller resumes it."""
    with redis_server() as redis:

        async def go() -> None:
            settings: dict[str, Any] = {"caller_identity": "token", "callers_file": str(callers_file(tmp_path))}
            async with (
                replicas(2, redis_url=redis.url, resume_retention=2, **settings) as (_, (a, b)),
                grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
                grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
            ):
                mine = await read(
                    stub_of(to_a).StreamMessage(
                        resumable("Mine [[sim:tokens 5]]"), timeout=30, metadata=as_caller("alpha")
                    )
                )
                stream_id = str(mine.metadata[STREAM_ID_KEY])
                on_b = stub_of(to_b)
                theirs = await resume(on_b, stream_id, 0, metadata=as_caller("beta"))
                assert reason(theirs) == (grpc.StatusCode.PERMISSION_DENIED, "STREAM_OF_ANOTHER_CALLER")
                unknown = await resume(on_b, new_id(), 0, metadata=as_caller("alpha"))
                assert reason(unknown) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
                again = await resume(on_b, stream_id, 0, metadata=as_caller("alpha"))
                assert again.events == mine.events

                async def expired() -> bool:
                    got = await resume(on_b, stream_id, 0, metadata=as_caller("alpha"))
                    return got.error is not None and reason(got) == (grpc.StatusCode.OUT_OF_RANGE, "STREAM_EXPIRED")

                await eventually(expired)

        run(go)


def test_cancel_stream_on_another_replica_ends_the_stream_where_it_is_produced() -> None:
    """CancelStream on B for a stream A produces reaches A (its Pub/Sub channel): A closes the upstream request at
    once, and a follower on B ends CANCELLED (STREAM_CANCELLED)."""
    with redis_server() as redis:

        async def go() -> None:
            async with (
                replicas(2, Pace(tokens_per_second=50), redis_url=redis.url) as (sim, (a, b)),
                grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
                grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
            ):
                call = stub_of(to_a).StreamMessage(resumable("Long [[sim:tokens 5000]]", max_tokens=8000), timeout=30)
                first = await read(call, responses=3)
                stream_id = str(first.metadata[STREAM_ID_KEY])
                call.cancel()
                follower = stub_of(to_b).ResumeStream(pb.ResumeStreamRequest(stream_id=stream_id), timeout=30)
                assert (await read(follower, responses=3)).numbers[0] == 1
                record = sim.requests[-1]
                await stub_of(to_b).CancelStream(pb.CancelStreamRequest(stream_id=stream_id), timeout=10)
                await record.wait_closed(timeout=2)
                rest = await read(follower)
                assert reason(rest) == (grpc.StatusCode.CANCELLED, "STREAM_CANCELLED")
                assert a.admission.active == 0

        run(go)


def test_redis_killed_mid_stream_leaves_the_stream_going_but_not_resumable(caplog: pytest.LogCaptureFixture) -> None:
    """Redis dies while a resumable stream runs: its caller gets the whole stream, OK, from replica A; A warns once
    and counts it (gateway_streams_unresumable); a resume on A then says FAILED_PRECONDITION (STREAM_NOT_RESUMABLE),
    on B UNAVAILABLE (STREAM_STORE_UNAVAILABLE) while Redis is down and NOT_FOUND once an empty Redis is back."""
    with redis_server() as redis:

        async def go() -> None:
            async with (
                replicas(2, Pace(tokens_per_second=50), redis_url=redis.url, metrics_listen="127.0.0.1:0") as (
                    _,
                    (a, b),
                ),
                grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
                grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
            ):
                call = stub_of(to_a).StreamMessage(resumable("Going [[sim:tokens 100]]"), timeout=60)
                first = await read(call, responses=5)
                stream_id = str(first.metadata[STREAM_ID_KEY])
                await asyncio.to_thread(redis.stop)
                assert a.store is not None
                stream = a.store.find(stream_id, "anonymous")
                assert stream is not None
                await until(lambda: not stream.resumable)
                here = await resume(stub_of(to_a), stream_id, 0)
                assert reason(here) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_RESUMABLE")
                there = await resume(stub_of(to_b), stream_id, 0)
                assert reason(there) == (grpc.StatusCode.UNAVAILABLE, "STREAM_STORE_UNAVAILABLE")
                rest = await read(call)
                await asyncio.to_thread(redis.start)
                gone = await resume(stub_of(to_b), stream_id, 0)
                assert reason(gone) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
                assert a.metrics is not None
                page = await scrape(a.metrics.port)
            assert rest.error is None
            assert first.numbers + rest.numbers == list(range(1, len(first.numbers) + len(rest.numbers) + 1))
            assert len(text_of(first.events + rest.events).split()) == 100
            assert usage(rest)["usage"]["output_tokens"] == 100
            assert "gateway_streams_unresumable_total 1.0" in page
            warnings = [r for r in caplog.records if r.levelname == "WARNING" and stream_id in r.getMessage()]
            assert len(warnings) == 1

        run(go)


def test_the_redis_writer_answers_each_group_in_order_an_error_reply_in_its_place_and_outlives_a_restart() -> None:
    """The writer under RedisStore, on a real redis-server: groups sent together are applied in order and each hears
    its own replies; an error reply (an XADD id not above the last) fails its own group only, and the replies after
    it are still read; Redis killed, the queued groups hear the error; Redis back, the next write goes through."""
    with redis_server() as redis:

        async def go() -> None:
            client = aioredis.Redis.from_url(redis.url, socket_timeout=2.0)
            writer = Writer(client, 2.0)
            heard: list[tuple[int, list[Any] | BaseException]] = []

            def hear(n: int) -> Callable[[list[Any] | BaseException], None]:
                return lambda replies: heard.append((n, replies))

            try:
                for n in range(1, 51):  # many groups queued at once, as many streams' reads are
                    writer.send((("XADD", "w:events", f"{n}-0", "d", b"%d" % n),), hear(n))
                with pytest.raises(ResponseError, match="equal or smaller"):
                    await writer.call(("XADD", "w:events", "7-0", "d", b"late"), ("HSET", "w:meta", "state", "live"))
                assert [n for n, _ in heard] == list(range(1, 51))
                assert all(r == [f"{n}-0".encode()] for n, r in heard)
                assert await writer.call(("HGET", "w:meta", "state"), ("XLEN", "w:events")) == [b"live", 50]
                await asyncio.to_thread(redis.stop)
                lost: list[list[Any] | BaseException] = []
                writer.send((("XADD", "w:events", "51-0", "d", b"51"),), lost.append)
                with pytest.raises((RedisError, OSError)):
                    await writer.call(("XLEN", "w:events"))
                await until(lambda: bool(lost))
                assert isinstance(lost[0], (RedisError, OSError))
                await asyncio.to_thread(redis.start)  # empty: nothing was saved
                assert await writer.call(("XADD", "w:events", "1-0", "d", b"1"), ("XLEN", "w:events")) == [b"1-0", 1]
            finally:
                await writer.close(2.0)
                await client.aclose()

        run(go)


# ---- the clients resume for the user ----


def test_the_python_clients_resume_a_cut_stream_on_another_replica_as_if_nothing_happened() -> None:
    """Gateway and AsyncGateway, asked for a resumable stream, ride through a cut connection: they resume on replica
    B from the last event they delivered, so text_stream, the events and get_final_message() are exactly an
    uninterrupted stream's, the usage report is there once, and the simulator saw one request per stream."""
    with redis_server() as redis:

        async def go() -> None:
            async with replicas(2, Pace(tokens_per_second=50), redis_url=redis.url) as (sim, (a, b)):
                kwargs: dict[str, Any] = {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": "Resume me [[sim:tokens 60]]"}],
                }

                def uninterrupted() -> tuple[str, Any]:
                    with Client(f"127.0.0.1:{a.port}") as client, client.messages.stream(**kwargs) as stream:
                        return "".join(stream.text_stream), stream.get_final_message()

                want_text, want = await asyncio.to_thread(uninterrupted)
                requests = len(sim.requests)

                async with Proxy(a.port) as proxy, AsyncGateway(proxy.address) as client:
                    texts = []
                    async with client.messages.stream(detach_grace_seconds=30, **kwargs) as stream:
                        async for text in stream.text_stream:
                            texts.append(text)
                            if len(texts) == 10:
                                proxy.cut(to=b.port)
                        got = await stream.get_final_message()
                    assert (stream.resumes, proxy.cuts) == (1, 1)
                    assert "".join(texts) == want_text
                    assert got.model_dump(exclude={"id"}) == want.model_dump(exclude={"id"})
                    report = from_metadata(stream.trailing_metadata)
                    assert report is not None
                    assert (report.output_tokens, report.partial) == (60, False)
                    assert stream.request_id == sim.requests[-1].request_id
                assert len(sim.requests) == requests + 1

                async with Proxy(a.port) as proxy:
                    cut = threading.Event()

                    def resumed() -> tuple[list[str], Any, MessageStream]:
                        texts = []
                        with (
                            Client(proxy.address) as client,
                            client.messages.stream(detach_grace_seconds=30, **kwargs) as stream,
                        ):
                            for text in stream.text_stream:
                                texts.append(text)
                                if len(texts) == 10:
                                    cut.set()
                            return texts, stream.get_final_message(), stream

                    reading = asyncio.ensure_future(asyncio.to_thread(resumed))
                    await asyncio.to_thread(cut.wait, 30)
                    proxy.cut(to=b.port)
                    texts, got, sync_stream = await reading
                assert sync_stream.resumes == 1
                assert "".join(texts) == want_text
                assert got.model_dump(exclude={"id"}) == want.model_dump(exclude={"id"})
                assert from_metadata(sync_stream.trailing_metadata) is not None
                assert len(sim.requests) == requests + 2

        run(go)


def test_a_client_gives_up_after_its_resume_attempts_and_closing_a_resumable_stream_cancels_it() -> None:
    """With every replica gone the client stops after its resume attempts with the drop's status; leaving a
    resumable stream's block before its end cancels it at the gateway (its upstream request closes at once)."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50)) as h, Proxy(h.gateway.port) as proxy:
            kwargs: dict[str, Any] = {
                "model": "claude-sonnet-4-6",
                "max_tokens": 8000,
                "messages": [{"role": "user", "content": "Long [[sim:tokens 5000]]"}],
            }
            async with AsyncGateway(proxy.address) as client:
                async with client.messages.stream(detach_grace_seconds=30, **kwargs) as stream:
                    async for _ in stream.text_stream:
                        break
                record = h.sim.requests[-1]
                await record.wait_closed(timeout=5)
                await until(lambda: h.gateway.admission.active == 0)
                with pytest.raises(ClientError) as caught:
                    async with client.messages.stream(detach_grace_seconds=30, resume_attempts=2, **kwargs) as stream:
                        async for text in stream.text_stream:
                            proxy.cut(to=free_port())  # nothing listens there
                            assert text
                assert caught.value.code == grpc.StatusCode.UNAVAILABLE
                assert stream.resumes == 2

    run(go)


# ---- drains, and a producing replica that dies ----


@contextlib.asynccontextmanager
async def replica_process(base_url: str, **env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``python -m server`` aimed at ``base_url``, as deployed (GATEWAY_* ``env``); yields it and its port once it
    serves; killed on the way out if the test did not stop it."""
    settings = {
        **clean_env(),
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": base_url,
        "GATEWAY_LISTEN": "127.0.0.1:0",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", cwd=ROOT, env=settings, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        assert line.startswith("gateway listening on "), line
        yield proc, int(line.split()[3].rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


KWARGS: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Keep going [[sim:tokens 120]]"}],
}


def test_a_draining_replica_reads_its_resumable_streams_to_the_end_while_their_callers_resume_elsewhere() -> None:
    """SIGTERM on replica A while a resumable stream runs, and its caller cut by the load balancer: A keeps reading
    the stream to its end within its drain grace, then exits 0; the caller resumes on B and gets the whole reply,
    from the one upstream request A made."""
    with redis_server() as redis:

        async def go() -> None:
            async with (
                Simulator(Pace(tokens_per_second=50), api_key=API_KEY) as sim,
                replica_process(sim.base_url, GATEWAY_REDIS_URL=redis.url, GATEWAY_DRAIN_GRACE="30") as (a, a_port),
                replicas_on(sim, 1, redis_url=redis.url) as (b,),
                Proxy(a_port) as proxy,
                AsyncGateway(f"127.0.0.1:{b.port}") as direct,
                AsyncGateway(proxy.address) as client,
            ):
                async with direct.messages.stream(**KWARGS) as stream:
                    want = await stream.get_final_text()
                texts = []
                async with client.messages.stream(detach_grace_seconds=30, **KWARGS) as stream:
                    async for text in stream.text_stream:
                        texts.append(text)
                        if len(texts) == 10:
                            a.send_signal(signal.SIGTERM)
                            proxy.cut(to=b.port)
                assert await asyncio.wait_for(a.wait(), 30) == 0
                assert stream.resumes == 1
                assert "".join(texts) == want
                produced = sim.requests[-1]
                assert produced.events_sent == 120 + 6  # A read the reply to its end
                assert len(sim.requests) == 2

        run(go)


def test_when_the_producing_replica_dies_a_resume_elsewhere_replays_what_it_kept_then_says_so() -> None:
    """Replica A is killed mid-stream: the caller resumes on B, which replays what A had stored, each event once,
    then ends UNAVAILABLE (STREAM_PRODUCER_LOST) once A's producer key has run out; the client does not retry that."""
    with redis_server() as redis:

        async def go() -> None:
            lease = {"GATEWAY_LEASE_SECONDS": "1"}
            async with (
                Simulator(Pace(tokens_per_second=50), api_key=API_KEY) as sim,
                replica_process(sim.base_url, GATEWAY_REDIS_URL=redis.url, **lease) as (a, a_port),
                replicas_on(sim, 1, redis_url=redis.url, lease_seconds=1) as (b,),
                Proxy(a_port) as proxy,
                AsyncGateway(f"127.0.0.1:{b.port}") as direct,
                AsyncGateway(proxy.address) as client,
            ):
                async with direct.messages.stream(**KWARGS) as stream:
                    want = await stream.get_final_text()
                texts = []
                with pytest.raises(ClientError) as caught:
                    async with client.messages.stream(detach_grace_seconds=30, **KWARGS) as stream:
                        async for text in stream.text_stream:
                            texts.append(text)
                            if len(texts) == 10:
                                a.kill()
                                proxy.cut(to=b.port)
                error = caught.value
                assert error.code == grpc.StatusCode.UNAVAILABLE
                assert error.error_info is not None
                assert error.error_info.reason == "STREAM_PRODUCER_LOST"
                assert stream.resumes == 1
                assert stream.stream_id is not None
                async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as channel:
                    again = await resume(stub_of(channel), stream.stream_id, 0)
                assert reason(again) == (grpc.StatusCode.UNAVAILABLE, "STREAM_PRODUCER_LOST")
                assert again.numbers == list(range(1, len(again.numbers) + 1))
                # What the caller got came once each, in order; what B replays of it is what A had written to Redis,
                # which may lack the last event or two A's own follower sent before A's write went out.
                got, kept = "".join(texts), text_of(again.events)
                assert got == want[: len(got)]
                assert got.startswith(kept)
                assert 10 <= len(texts) < 120
                assert len(sim.requests) == 2

        run(go)


# ---- the Messages API on the HTTP port: Last-Event-ID ----


def sse_frames(text: str) -> list[dict[str, str]]:
    """The fields of each SSE frame in ``text`` (complete frames only)."""
    frames = []
    for block in text.split("\n\n")[:-1]:
        frame = {}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            frame[key] = value
        frames.append(frame)
    return frames


def test_a_messages_api_stream_names_each_event_and_a_request_with_last_event_id_resumes_it() -> None:
    """On /v1/messages, `claude-gateway-detach-grace` makes a resumable stream: its response names it and each
    event carries `id: STREAM:N`; the same request sent again with Last-Event-ID after the client left gets the
    events after N (text identical to an uninterrupted stream's, from one upstream request); a malformed
    Last-Event-ID is the API's 400, an unknown stream its 404."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50), http_listen="127.0.0.1:0") as h:
            url = f"http://127.0.0.1:{h.gateway.http_port}/v1/messages"
            request = {**body("Via SSE [[sim:tokens 40]]"), "stream": True}
            whole = await h.events(body("Via SSE [[sim:tokens 40]]"))
            requests = len(h.sim.requests)
            async with aiohttp.ClientSession() as session:
                async with session.post(url, json=request, headers={"claude-gateway-detach-grace": "30"}) as first:
                    assert first.status == 200
                    stream_id = first.headers[STREAM_ID_KEY]
                    text = ""
                    while len(sse_frames(text)) < 8:
                        text += (await first.content.readany()).decode()
                got = sse_frames(text)
                last = got[-1]["id"]
                assert [f["id"] for f in got] == [f"{stream_id}:{n}" for n in range(1, len(got) + 1)]
                async with session.post(url, json=request, headers={"Last-Event-ID": last}) as rest:
                    assert rest.status == 200
                    assert rest.headers[STREAM_ID_KEY] == stream_id
                    got += sse_frames(await rest.text())
                async with session.post(url, json=request, headers={"Last-Event-ID": "nonsense"}) as bad:
                    assert bad.status == 400
                    assert (await bad.json())["error"]["type"] == "invalid_request_error"
                async with session.post(url, json=request, headers={"Last-Event-ID": f"{new_id()}:3"}) as unknown:
                    assert unknown.status == 404
                async with session.post(url, json=request) as plain:  # named too, but never kept
                    plain_id = plain.headers[STREAM_ID_KEY]
                    assert "id: " not in await plain.text()
                async with session.post(url, json=request, headers={"Last-Event-ID": f"{plain_id}:3"}) as again:
                    assert again.status == 404
            assert [f["id"] for f in got] == [f"{stream_id}:{n}" for n in range(1, len(got) + 1)]
            events = [json.loads(f["data"]) for f in got]
            assert [f["event"] for f in got] == [e["type"] for e in events]
            assert comparable(events) == comparable(whole)
            assert len(h.sim.requests) == requests + 2

    run(go)


def test_a_messages_api_stream_its_caller_left_holds_its_body_in_the_budget_until_it_ends() -> None:
    """The body of a resumable /v1/messages stream stays counted in the body budget while the stream goes on
    without its caller (its producer holds the request), and is given back when the stream ends."""

    async def go() -> None:
        async with gateway(Pace(tokens_per_second=50), http_listen="127.0.0.1:0") as h:
            url = f"http://127.0.0.1:{h.gateway.http_port}/v1/messages"
            request = {**body("Hold it [[sim:tokens 150]]"), "stream": True}
            bodies = h.gateway.admission.bodies
            grace = {"claude-gateway-detach-grace": "30"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(url, json=request, headers=grace) as first,
            ):
                stream_id = first.headers[STREAM_ID_KEY]
                text = ""
                while len(sse_frames(text)) < 3:
                    text += (await first.content.readany()).decode()
                held = bodies.held
                assert held > 0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{h.gateway.port}") as channel:
                follower = stub_of(channel).ResumeStream(pb.ResumeStreamRequest(stream_id=stream_id), timeout=30)
                live = await read(follower, responses=40)  # live events: the HTTP caller's request is long over
                assert (bodies.held, h.gateway.admission.active) == (held, 1)
                rest = await read(follower)
            assert rest.error is None
            assert live.numbers + rest.numbers == list(range(1, len(live.numbers) + len(rest.numbers) + 1))
            await until(lambda: h.gateway.admission.active == 0)
            assert bodies.held == 0

    run(go)
