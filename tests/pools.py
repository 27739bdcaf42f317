"""A gateway with a backends file over several simulators, one per platform, and one way to call it on
every RPC and entry: StreamMessage and CreateMessage over gRPC, over Connect on the HTTP port, and the
Messages API (``/v1/messages``, streamed and not) on the HTTP port."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from claude_gateway import codec
from claude_gateway.client import create_request, stream_request
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import USAGE_KEY
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from server.app import Gateway, build_server
from server.config import Settings
from simulator import Pace, Simulator
from tests.harness import UNPACED, body, sse_events
from tests.test_web import SERVICE, details_of, envelope, frames

ANTHROPIC_KEYS = ("sk-ant-pool-one-SECRET-00001", "sk-ant-pool-two-SECRET-00002", "sk-ant-pool-three-SECRET-03")
AWS_ID, AWS_SECRET = "AKIAPOOLTEST00000001", "aws-secret-SECRET-000000000001"
VERTEX_TOKEN = "ya29.pool-vertex-SECRET-000001"
MODEL = "claude-sonnet-4-6"
MODEL_IDS = {"bedrock": "anthropic.claude-sonnet-4-6-v1:0", "vertex": "claude-sonnet-4-6@20250929"}
# StreamMessage and CreateMessage over gRPC; the same over Connect (the HTTP port); POST /v1/messages with
# "stream": true and without (the HTTP port's Messages API).
VIAS = ("stream", "create", "connect", "connect-create", "messages", "messages-create")
UNARY = ("create", "connect-create", "messages-create")  # a reply delivered whole: nothing before its end
# What a Messages API caller is answered, by the gateway's status and reason of the call (the HTTP status and
# the API's error type; server/ports/http/messages_api.py): the rows the failover table ends in.
API_ANSWERS = {
    ("UNAVAILABLE", "OVERLOADED_ERROR"): (529, "overloaded_error"),
    ("INVALID_ARGUMENT", "INVALID_REQUEST_ERROR"): (400, "invalid_request_error"),
    ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"): (504, "timeout_error"),
    ("NOT_FOUND", "NOT_FOUND_ERROR"): (404, "not_found_error"),
    ("INVALID_ARGUMENT", "REQUEST_TOO_LARGE"): (413, "request_too_large"),
}


def key_id(secret: str) -> str:
    """The short id the gateway names a key by (computed here, so a test does not trust the gateway's)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass
class Outcome:
    """One call's end, the same whatever the RPC or port."""

    text: str  # the reply's text (what was delivered, for a failed stream)
    report: dict[str, Any]  # the usage trailer's JSON
    code: str = "OK"  # the gRPC code's name
    reason: str = ""  # ErrorInfo.reason of a failure
    events_delivered: int = 0
    message: str = ""
    # On /v1/messages, the answer the caller saw: the HTTP status (200 once a stream has begun) and, for a
    # failure, the API's error type. ``code`` and ``reason`` are then the call's log line's, the operator's view.
    http_status: int | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def answered_as(self, code: str, reason: str) -> bool:
        """Whether the call failed with ``code`` and ``reason``, and (on /v1/messages) the caller was answered
        as the API answers that: its HTTP status before a stream has begun, its error type always."""
        if (self.code, self.reason) != (code, reason):
            return False
        if self.http_status is None:
            return True
        status, kind = API_ANSWERS[(code, reason)]
        return self.error_type == kind and self.http_status == (200 if self.events_delivered else status)

    def served_by(self, backend: str) -> bool:
        """Whether the call ended OK, served by ``backend``."""
        return self.ok and self.report.get("backend") == backend


@dataclass
class Pools:
    sims: dict[str, Simulator]
    gateway: Gateway
    channel: grpc.aio.Channel
    directory: Path
    http_url: str
    session: aiohttp.ClientSession
    stub: chat_pb2_grpc.ChatServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)

    def requests(self, name: str) -> int:
        """Requests the simulator of backend ``name`` has received."""
        return len(self.sims[name].requests)

    async def call(self, via: str, prompt: str, timeout: float = 10, token: str = "", **params: Any) -> Outcome:
        """One call on ``via`` (``VIAS``), as the caller of bearer ``token`` if given; its outcome."""
        request_body = body(prompt, **params)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        if via == "connect":
            return await self._connect(request_body, timeout, dict(metadata or ()))
        if via == "connect-create":
            return await self._connect_create(request_body, timeout, dict(metadata or ()))
        if via in ("messages", "messages-create"):
            return await self._messages(request_body | {"stream": via == "messages"}, timeout, dict(metadata or ()))
        events: list[dict[str, Any]] = []
        try:
            if via == "stream":
                call = self.stub.StreamMessage(stream_request(request_body), timeout=timeout, metadata=metadata)
                async for response in call:
                    events.extend(codec.to_json(e) for e in response.events)
                text = _text(events)
            else:
                unary = self.stub.CreateMessage(create_request(request_body), timeout=timeout, metadata=metadata)
                response = await unary
                message = json_format.MessageToDict(response.message, preserving_proto_field_name=True)
                text = "".join(b.get("text", {}).get("text", "") for b in message.get("content", []))
                call = unary
            trailer = dict(await call.trailing_metadata())
            return Outcome(text, json.loads(trailer[USAGE_KEY]))
        except grpc.aio.AioRpcError as error:
            trailer = dict(error.trailing_metadata() or ())
            info = _error_info(error)
            return Outcome(
                _text(events),
                json.loads(trailer[USAGE_KEY]) if USAGE_KEY in trailer else {},
                error.code().name,
                info.reason if info else "",
                int(info.metadata["events_delivered"]) if info else 0,
                error.details() or "",
            )

    async def _connect(self, request_body: dict[str, Any], timeout: float, extra: dict[str, str]) -> Outcome:
        data = json.dumps(json_format.MessageToDict(stream_request(request_body))).encode()
        headers = {"content-type": "application/connect+json", "connect-timeout-ms": str(int(timeout * 1000)), **extra}
        async with self.session.post(
            f"{self.http_url}{SERVICE}/StreamMessage", data=envelope(data), headers=headers
        ) as response:
            raw = await response.read()
        *messages, (_, end) = frames(raw)
        events = [
            codec.to_json(json_format.ParseDict(e, pb.MessageStreamEvent()))
            for _, m in messages
            for e in json.loads(m).get("events", [])
        ]
        final = json.loads(end)
        report = json.loads(final["metadata"][USAGE_KEY][0]) if USAGE_KEY in final.get("metadata", {}) else {}
        if "error" not in final:
            return Outcome(_text(events), report)
        error = final["error"]
        info = details_of(error).get("google.rpc.ErrorInfo")
        return Outcome(
            _text(events),
            report,
            error["code"].upper(),
            info.reason if info else "",
            int(info.metadata["events_delivered"]) if info else 0,
            error.get("message", ""),
        )

    async def _connect_create(self, request_body: dict[str, Any], timeout: float, extra: dict[str, str]) -> Outcome:
        """Connect unary: the reply (or the error) as JSON, the usage report in a ``trailer-`` header."""
        data = json.dumps(json_format.MessageToDict(create_request(request_body))).encode()
        headers = {"content-type": "application/json", "connect-timeout-ms": str(int(timeout * 1000)), **extra}
        async with self.session.post(f"{self.http_url}{SERVICE}/CreateMessage", data=data, headers=headers) as response:
            raw = await response.read()
            trailer = response.headers.get(f"trailer-{USAGE_KEY}")
        report = json.loads(trailer) if trailer else {}
        answer = json.loads(raw)
        if response.status == 200:
            message = answer["message"]
            return Outcome("".join(b.get("text", {}).get("text", "") for b in message.get("content", [])), report)
        info = details_of(answer).get("google.rpc.ErrorInfo")
        return Outcome(
            "",
            report,
            answer["code"].upper(),
            info.reason if info else "",
            int(info.metadata["events_delivered"]) if info else 0,
            answer.get("message", ""),
        )

    async def _messages(self, request_body: dict[str, Any], timeout: float, extra: dict[str, str]) -> Outcome:
        """POST /v1/messages as the SDKs send it (their timeout in ``x-stainless-timeout``). A reply whole
        carries the usage report in a header; a stream has no place for one, so the report, the status and the
        reason are read from the call's log line (what the operator sees), and the caller's view is the HTTP
        status and the error JSON (or the stream's ``event: error``)."""
        headers = {"content-type": "application/json", "x-stainless-timeout": str(timeout), **extra}
        lines = CallLines()
        url = f"{self.http_url}/v1/messages"
        with lines:
            async with self.session.post(url, json=request_body, headers=headers) as response:
                raw = await response.read()
                header = response.headers.get(USAGE_KEY)
        line = lines.last()
        report = json.loads(header) if header else {k: line[k] for k in _REPORTED if k in line}
        code = line["status"]
        reason = line["reason"] or ""
        if request_body["stream"] and response.status == 200:
            events = sse_events(raw)
            failure = next((e for e in events if e["type"] == "error"), None)
            delivered = [e for e in events if e["type"] != "error"]
            error = failure["error"] if failure else {}
            return Outcome(
                _text(delivered), report, code, reason, len(delivered), error.get("message", ""), 200, error.get("type")
            )
        answer = json.loads(raw)
        if response.status == 200:
            text = "".join(b.get("text", "") for b in answer.get("content", []))
            return Outcome(text, report, code, reason, http_status=200)
        error = answer["error"]
        return Outcome("", report, code, reason, 0, error["message"], response.status, error["type"])


# The call log line's fields that the usage report carries too.
_REPORTED = ("model", "response_model", "usage", "cost_usd", "partial", "backend", "key_id", "failovers")


class CallLines(logging.Handler):
    """The call log lines (logger ``server.call``) written while it is entered, as JSON objects."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, Any]] = []
        self._logger = logging.getLogger("server.call")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith('{"event":"call"'):  # not the pool's lines of each failover, nor a fault's
            self.lines.append(json.loads(text))

    def __enter__(self) -> CallLines:
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def last(self) -> dict[str, Any]:
        assert self.lines, "no call log line was written"
        return self.lines[-1]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta" and "delta" in e)


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def backend_entry(name: str, kind: str, sim: Simulator, directory: Path, keys: int = 1) -> dict[str, Any]:
    """The backends file's entry of a backend of ``kind`` on ``sim``, its credentials in files under ``directory``."""

    def ref(file_name: str, secret: str) -> dict[str, str]:
        path = directory / file_name
        path.write_text(secret + "\n")
        return {"file": str(path)}

    entry: dict[str, Any] = {"name": name, "kind": kind, "base_url": sim.base_url}
    if kind == "anthropic":
        entry["keys"] = [ref(f"{name}-key-{i}", ANTHROPIC_KEYS[i]) for i in range(keys)]
    elif kind == "bedrock":
        entry |= {
            "region": "us-east-1",
            "aws_access_key_id": ref(f"{name}-aws-id", AWS_ID),
            "aws_secret_access_key": ref(f"{name}-aws-secret", AWS_SECRET),
            "models": {MODEL: MODEL_IDS["bedrock"]},
        }
    else:
        entry |= {
            "region": "us-east5",
            "project": "pool-project",
            "base_url": f"{sim.base_url}/v1",
            "access_token": ref(f"{name}-token", VERTEX_TOKEN),
            "models": {MODEL: MODEL_IDS["vertex"]},
        }
    return entry


@contextlib.asynccontextmanager
async def pools(
    directory: Path,
    layout: tuple[str, ...] = ("anthropic", "bedrock", "vertex"),
    *,
    keys: int = 1,
    pace: Pace = UNPACED,
    options: dict[str, dict[str, Any]] | None = None,
    sim_options: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> AsyncIterator[Pools]:
    """A simulator per backend of ``layout`` (each a kind: the backend's name is its kind), a backends file
    naming them in that order, and a gateway on it with its HTTP port; ``options`` add to a backend's entry."""
    async with contextlib.AsyncExitStack() as stack:
        sims: dict[str, Simulator] = {}
        entries = []
        for kind in layout:
            sim = Simulator(pace, platforms=[kind], name=kind, **(sim_options or {}).get(kind, {}))
            await stack.enter_async_context(sim)
            sims[kind] = sim
            entries.append(backend_entry(kind, kind, sim, directory, keys) | (options or {}).get(kind, {}))
        path = directory / "backends.yaml"
        path.write_text(yaml.safe_dump({"backends": entries}, sort_keys=False))
        config = Settings(listen="127.0.0.1:0", http_listen="127.0.0.1:0", backends_file=str(path), **settings)
        gateway = await build_server(config)
        stack.push_async_callback(gateway.close)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        stack.push_async_callback(channel.close)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        yield Pools(sims, gateway, channel, directory, f"http://127.0.0.1:{gateway.http_port}", session)
