"""One test per concern, each driving the gateway's three entries alike: gRPC, Connect (the HTTP port's
ChatService) and the Messages API (the HTTP port's /v1/messages, by the official Python SDK).

Policy, quotas, metrics, cost, the log line and cancel come from the one call path; each test makes
the same calls through each entry and checks that each behaves as the others (each in its own terms:
a gRPC status, a Connect error, the API's HTTP error).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import grpc
import pytest
from claude_gateway import codec
from claude_gateway.client import create_request, stream_request
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import USAGE_KEY
from google.protobuf import json_format

from simulator import Pace, Replay
from tests.harness import UNPACED, Harness, body, fixture_events, run, status_of, until
from tests.test_messages_api import ALPHA, BRAVO, api_gateway, policy_files
from tests.test_observability import FIXTURE, moved, scrape
from tests.test_web import SERVICE, envelope, frames, read_frame

ENTRIES = ("grpc", "connect", "messages")
PACED = Pace(tokens_per_second=50)
# The status each entry answers a refusal with, by the gateway's reason.
REFUSALS = {
    "CALLER_UNAUTHENTICATED": ("UNAUTHENTICATED", "unauthenticated", 401),
    "CALLER_NOT_ALLOWED": ("PERMISSION_DENIED", "permission_denied", 403),
    "MODEL_NOT_ALLOWED": ("PERMISSION_DENIED", "permission_denied", 403),
    "MAX_TOKENS_OVER_LIMIT": ("RESOURCE_EXHAUSTED", "resource_exhausted", 400),
    "QUOTA_EXCEEDED": ("RESOURCE_EXHAUSTED", "resource_exhausted", 429),
}

# Refusals /v1/messages decides on the headers alone, never reading the body of a caller it refuses.
ON_HEADERS = ("CALLER_UNAUTHENTICATED", "CALLER_NOT_ALLOWED")


@dataclass
class Outcome:
    """One call through one entry: its events (or the message), and its refusal in that entry's terms."""

    events: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] | None = None
    refusal: str | int | None = None  # the gRPC code's name, the Connect code, or the HTTP status
    retry_after: float | None = None  # seconds, when the refusal says
    usage_report: dict[str, Any] | None = None  # the usage trailer (header) where the entry carries one


class Entries:
    """The three entries of one gateway, each making calls as a caller whose token is given."""

    def __init__(self, h: Harness, url: str, session: aiohttp.ClientSession) -> None:
        self.h, self.url, self.session = h, url, session

    async def stream(self, entry: str, token: str, params: dict[str, Any]) -> Outcome:
        """One streamed reply through ``entry``."""
        if entry == "grpc":
            out = Outcome()
            call = self.h.stub.StreamMessage(stream_request(params), metadata=_bearer(token), timeout=10)
            try:
                async for response in call:
                    out.events += [codec.to_json(e) for e in response.events]
            except grpc.aio.AioRpcError as error:
                _refused_grpc(out, error)
            return out
        if entry == "connect":
            out = Outcome()
            data = envelope(json_format.MessageToJson(stream_request(params)).encode())
            headers = {"content-type": "application/connect+json", "authorization": f"Bearer {token}"}
            async with self.session.post(f"{self.url}{SERVICE}/StreamMessage", data=data, headers=headers) as r:
                payload = await r.read()
            for flags, frame in frames(payload):
                if flags & 2:
                    end = json.loads(frame)
                    if "error" in end:
                        out.refusal = end["error"]["code"]
                else:
                    response = json_format.Parse(frame, pb.StreamMessageResponse())
                    out.events += [codec.to_json(e) for e in response.events]
            return out
        out = Outcome()
        client = anthropic.AsyncAnthropic(base_url=self.url, api_key=token, max_retries=0)
        try:
            async with await client.messages.create(**params, stream=True) as events:
                out.events = [e.to_dict(mode="json") async for e in events]
        except anthropic.APIStatusError as error:
            _refused_api(out, error)
        finally:
            await client.close()
        return out

    async def create(self, entry: str, token: str, params: dict[str, Any]) -> Outcome:
        """One whole reply through ``entry``, with the usage report the entry gives with it."""
        out = Outcome()
        if entry == "grpc":
            call = self.h.stub.CreateMessage(create_request(params), metadata=_bearer(token), timeout=10)
            out.message = codec.to_json((await call).message)
            trailer = dict(await call.trailing_metadata())
            out.usage_report = json.loads(trailer[USAGE_KEY])
        elif entry == "connect":
            data = json_format.MessageToJson(create_request(params)).encode()
            headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
            async with self.session.post(f"{self.url}{SERVICE}/CreateMessage", data=data, headers=headers) as r:
                reply = json_format.Parse(await r.read(), pb.CreateMessageResponse())
                out.usage_report = json.loads(r.headers[f"trailer-{USAGE_KEY}"])  # Connect unary: a header
            out.message = codec.to_json(reply.message)
        else:
            client = anthropic.AsyncAnthropic(base_url=self.url, api_key=token, max_retries=0)
            try:
                raw = await client.messages.with_raw_response.create(**params)
                out.message = (await raw.parse()).to_dict(mode="json")
                out.usage_report = json.loads(raw.headers[USAGE_KEY])
            finally:
                await client.close()
        return out

    @asynccontextmanager
    async def leaving(self, entry: str, token: str, params: dict[str, Any], events: int) -> AsyncIterator[None]:
        """A stream through ``entry`` read for ``events`` events; the client goes away on leaving."""
        if entry == "grpc":
            call = self.h.stub.StreamMessage(stream_request(params), metadata=_bearer(token), timeout=30)
            seen = 0
            async for response in call:
                seen += len(response.events)
                if seen >= events:
                    break
            yield
            call.cancel()
        elif entry == "connect":
            data = envelope(json_format.MessageToJson(stream_request(params)).encode())
            headers = {"content-type": "application/connect+json", "authorization": f"Bearer {token}"}
            response = await self.session.post(f"{self.url}{SERVICE}/StreamMessage", data=data, headers=headers)
            seen = 0
            while seen < events:
                seen += len(json.loads(await read_frame(response.content)).get("events", []))
            yield
            response.close()
        else:
            client = anthropic.AsyncAnthropic(base_url=self.url, api_key=token, max_retries=0)
            try:
                async with await client.messages.create(**params, stream=True) as stream:
                    seen = 0
                    async for _ in stream:
                        seen += 1
                        if seen >= events:
                            break
                    yield
            finally:
                await client.close()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _refused_grpc(out: Outcome, error: grpc.aio.AioRpcError) -> None:
    out.refusal = error.code().name
    retry = status_of(error).retry_info
    if retry is not None:
        out.retry_after = retry.retry_delay.ToNanoseconds() / 1e9


def _refused_api(out: Outcome, error: anthropic.APIStatusError) -> None:
    out.refusal = error.status_code
    if "retry-after" in error.response.headers:
        out.retry_after = float(error.response.headers["retry-after"])


@asynccontextmanager
async def entries(tmp_path: Path, policy: str, pace: Pace = UNPACED, **settings: Any) -> AsyncIterator[Entries]:
    async with (
        api_gateway(pace, **policy_files(tmp_path, policy), **settings) as (h, url),
        aiohttp.ClientSession() as session,
    ):
        yield Entries(h, url, session)


def call_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.call"]


def alike(line: dict[str, Any]) -> dict[str, Any]:
    """A call's log line without what differs between two runs of the same call (times, request and stream ids)."""
    return {k: v for k, v in line.items() if k not in ("duration_ms", "ttft_ms", "request_id", "stream_id")}


POLICY = """
models:
  chat: claude-sonnet-4-6
  big: claude-opus-4-6
callers:
  alpha:
    models: [chat]
    max_tokens: 300
"""


def test_policy_applies_alike_on_every_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An alias resolves to its model id; a model outside the allowlist, a caller the policy does not
    name, an unknown token and max_tokens over the cap are refused before any upstream call, with the
    same log line, whichever the entry. A refusal of the caller itself is decided on /v1/messages from
    the headers, before the body (which says whether the request streams) is read: its line names the
    method CreateMessage, and is otherwise the same."""
    caplog.set_level(logging.INFO, logger="server.call")
    cases = [
        (ALPHA, body("Hi", model="chat"), None),
        (ALPHA, body("Hi", model="big"), "MODEL_NOT_ALLOWED"),
        (BRAVO, body("Hi", model="chat"), "CALLER_NOT_ALLOWED"),
        ("tok-unknown", body("Hi", model="chat"), "CALLER_UNAUTHENTICATED"),
        (ALPHA, body("Hi", model="chat", max_tokens=301), "MAX_TOKENS_OVER_LIMIT"),
    ]

    async def go() -> None:
        async with entries(tmp_path, POLICY) as via:
            for token, params, reason in cases:
                before = len(via.h.sim.requests)
                for i, entry in enumerate(ENTRIES):
                    out = await via.stream(entry, token, params)
                    if reason is None:
                        assert out.events[0]["message"]["model"] == "claude-sonnet-4-6", entry
                        assert out.events[-1]["type"] == "message_stop", entry
                        assert via.h.sim.requests[-1].body["model"] == "claude-sonnet-4-6"
                    else:
                        assert out.refusal == REFUSALS[reason][i], (entry, reason)
                lines = call_lines(caplog)[-3:]
                assert [line["reason"] for line in lines] == [reason or ""] * 3
                if reason in ON_HEADERS:
                    assert lines[2]["method"] == "CreateMessage"
                    lines[2]["method"] = "StreamMessage"
                assert alike(lines[0]) == alike(lines[1]) == alike(lines[2]), (reason, lines)
                assert len(via.h.sim.requests) == before + (3 if reason is None else 0)

    run(go)


def test_quotas_count_every_entry_alike(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One caller's requests and tokens are counted the same whichever entry each call takes, and over
    its limit each entry refuses with its own form of QUOTA_EXCEEDED and when to retry."""
    caplog.set_level(logging.INFO, logger="server.call")
    policy = "callers:\n  alpha:\n    requests_per_minute: 3\n    tokens_per_minute: 100000\n"

    async def go() -> None:
        async with entries(tmp_path, policy) as via:
            quotas: Any = via.h.gateway.admission.quotas
            counted = [quotas.usage("alpha")]
            for entry in ENTRIES:
                out = await via.stream(entry, ALPHA, body("one two three [[sim:tokens 5]]"))
                assert out.events[-1]["type"] == "message_stop"
                counted.append(quotas.usage("alpha"))
            assert [requests for _, requests, _ in counted] == [0, 1, 2, 3]
            tokens = [t for _, _, t in counted]
            used = [line["usage"]["input_tokens"] + line["usage"]["output_tokens"] for line in call_lines(caplog)]
            assert [tokens[1] - tokens[0], tokens[2] - tokens[1], tokens[3] - tokens[2]] == used
            assert used[0] == used[1] == used[2] > 0
            for i, entry in enumerate(ENTRIES):
                out = await via.stream(entry, ALPHA, body("again"))
                assert out.refusal == REFUSALS["QUOTA_EXCEEDED"][i], entry
                if entry != "connect":  # Connect's RetryInfo is in its error details, checked in test_web
                    assert out.retry_after is not None
                    assert out.retry_after > 0
            assert [line["reason"] for line in call_lines(caplog)[-3:]] == ["QUOTA_EXCEEDED"] * 3
            assert quotas.usage("alpha") == counted[-1]

    run(go)


def test_metrics_move_alike_for_every_entry(tmp_path: Path) -> None:
    """The same call through each entry moves the calls, events, token and cost counters by the same amounts."""

    async def go() -> None:
        async with entries(tmp_path, 'callers:\n  "*": {}\n', metrics_listen="127.0.0.1:0") as via:
            moves = []
            for entry in ENTRIES:
                via.h.sim.enqueue(Replay(FIXTURE.read_bytes()))
                before = await scrape(via.h)
                out = await via.stream(entry, ALPHA, body())
                after = await scrape(via.h)
                counted = {
                    "calls": moved(before, after, "gateway_calls_total", method="StreamMessage", status="OK"),
                    "events": moved(before, after, "gateway_relayed_events_total", method="StreamMessage"),
                    "input": moved(before, after, "gateway_tokens_total", type="input"),
                    "output": moved(before, after, "gateway_tokens_total", type="output"),
                    "cost": moved(before, after, "gateway_cost_usd_total", caller="alpha"),
                    "duration": moved(before, after, "gen_ai_server_request_duration_seconds_count"),
                }
                assert counted["events"] == len(fixture_events(FIXTURE)) == len(out.events)
                moves.append(counted)
            # The cost counter is a float sum over calls: equal to the last unit in the last place.
            costs = [move.pop("cost") for move in moves]
            assert costs[1] == pytest.approx(costs[0], rel=1e-12)
            assert costs[2] == pytest.approx(costs[0], rel=1e-12)
            assert moves[0] == moves[1] == moves[2]
            moves[0]["cost"] = costs[0]
            assert moves[0]["calls"] == moves[0]["duration"] == 1
            assert moves[0]["output"] > 0
            assert moves[0]["cost"] > 0

    run(go)


def test_cost_is_reported_alike_by_every_entry(tmp_path: Path) -> None:
    """A whole reply's usage report (gRPC trailer, Connect header, /v1/messages header) and its log line
    give the same usage and cost through each entry."""

    async def go() -> None:
        async with entries(tmp_path, 'callers:\n  "*": {}\n') as via:
            reports = []
            for entry in ENTRIES:
                via.h.sim.enqueue(Replay(FIXTURE.read_bytes()))
                out = await via.create(entry, ALPHA, body())
                assert out.message is not None
                assert out.message["content"]
                reports.append(out.usage_report)
            assert reports[0] == reports[1] == reports[2]
            assert reports[0] is not None
            assert reports[0]["cost_usd"] > 0
            assert reports[0]["partial"] is False

    run(go)


def test_each_entry_writes_the_same_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One JSON line per call, the same fields and values whichever the entry (the upstream's request id
    included), and no prompt or completion text."""
    caplog.set_level(logging.INFO, logger="server.call")
    prompt = "the secret word is marmalade"

    async def go() -> None:
        async with entries(tmp_path, 'callers:\n  "*": {}\n') as via:
            for entry in ENTRIES:
                via.h.sim.enqueue(Replay(FIXTURE.read_bytes(), headers={"request-id": f"req_{entry}"}))
                await via.stream(entry, ALPHA, body(prompt))
            lines = call_lines(caplog)
            assert [line["request_id"] for line in lines] == [f"req_{e}" for e in ENTRIES]
            assert alike(lines[0]) == alike(lines[1]) == alike(lines[2])
            assert (lines[0]["caller"], lines[0]["method"], lines[0]["status"]) == ("alpha", "StreamMessage", "OK")
            assert "marmalade" not in caplog.text

    run(go)


def test_a_client_that_leaves_cancels_the_call_on_every_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that goes away mid-stream ends its call through each entry: the upstream connection
    closes long before the reply would have ended, and the call is logged CANCELLED in its streaming phase."""
    caplog.set_level(logging.INFO, logger="server.call")

    async def go() -> None:
        async with entries(tmp_path, 'callers:\n  "*": {}\n', PACED, metrics_listen="127.0.0.1:0") as via:
            before = await scrape(via.h)
            for entry in ENTRIES:
                async with via.leaving(entry, ALPHA, body("long [[sim:tokens 2000]]"), events=4):
                    assert via.h.gateway.admission.active == 1
                upstream = via.h.sim.requests[-1]
                closed_at = await upstream.wait_closed(timeout=10)
                assert closed_at - upstream.received_at < 2000 / PACED.tokens_per_second
                await until(lambda: via.h.gateway.admission.active == 0)
                await until(lambda e=entry: len(call_lines(caplog)) == ENTRIES.index(e) + 1)  # type: ignore[misc]
            after = await scrape(via.h)
            lines = call_lines(caplog)
            assert [(line["status"], line["reason"]) for line in lines] == [("CANCELLED", "CLIENT_CANCELLED")] * 3
            streaming = {"method": "StreamMessage", "phase": "streaming"}
            assert moved(before, after, "gateway_cancellations_total", **streaming) == 3

    run(go)


def test_every_entry_is_refused_the_same_during_a_drain(tmp_path: Path) -> None:
    """Once the gateway drains, a new call through each entry is refused (UNAVAILABLE, unavailable, 529)."""

    async def go() -> None:
        async with entries(tmp_path, 'callers:\n  "*": {}\n') as via:
            via.h.gateway.admission.draining = True
            got = [(await via.stream(entry, ALPHA, body())).refusal for entry in ENTRIES]
            assert got == ["UNAVAILABLE", "unavailable", 529]

    run(go)
