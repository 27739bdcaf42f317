"""A small Python client for claude_gateway.v1.ChatService, shaped like the anthropic SDK's.

    chat = ChatClient(grpc.insecure_channel("127.0.0.1:50051"))
    with chat.stream({"model": ..., "max_tokens": ..., "messages": [...]}, timeout=60) as stream:
        for text in stream.text_stream:
            print(text, end="", flush=True)
    message = stream.get_final_message()

Requests and events are the Messages API's JSON objects; ``claude_gateway.codec`` maps them to
and from the protos losslessly. A failed call raises ``GatewayCallError`` with its status details.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from claude_gateway import codec
from claude_gateway.accumulator import Accumulator
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

JSON = dict[str, Any]


class GatewayCallError(Exception):
    """A call ended with a non-OK status. ``error_info``, ``retry_delay`` and ``violations`` come
    from the status details (google.rpc.ErrorInfo, RetryInfo, BadRequest) when present."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.code: grpc.StatusCode = error.code()
        self.details: str = error.details() or ""
        self.error_info: error_details_pb2.ErrorInfo | None = None
        self.retry_delay: float | None = None
        self.violations: list[tuple[str, str]] = []
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                self.error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(self.error_info)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                self.retry_delay = info.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.violations = [(v.field, v.description) for v in bad.field_violations]
        super().__init__(f"{self.code.name}: {self.details}")

    def describe(self) -> str:
        """Every detail, one per line, for people reading a terminal."""
        lines = [f"{self.code.name}: {self.details}"]
        if self.error_info is not None:
            meta = " ".join(f"{k}={v}" for k, v in sorted(self.error_info.metadata.items()))
            lines.append(f"  reason: {self.error_info.reason} ({self.error_info.domain}) {meta}".rstrip())
        if self.retry_delay is not None:
            lines.append(f"  retry after: {self.retry_delay:g}s")
        lines.extend(f"  bad field {name}: {why}" for name, why in self.violations)
        return "\n".join(lines)


def stream_request(body: JSON, betas: Sequence[str] = ()) -> pb.StreamMessageRequest:
    """The StreamMessage request for an Anthropic-shaped request body ("stream" is ignored)."""
    params = {k: v for k, v in body.items() if k != "stream"}
    return pb.StreamMessageRequest(params=codec.from_json(params, pb.MessageCreateParams()), betas=betas)


def create_request(body: JSON, betas: Sequence[str] = ()) -> pb.CreateMessageRequest:
    """The CreateMessage request for an Anthropic-shaped request body."""
    params = {k: v for k, v in body.items() if k != "stream"}
    return pb.CreateMessageRequest(params=codec.from_json(params, pb.MessageCreateParams()), betas=betas)


class MessageStream:
    """One StreamMessage call: iterate it for events (Messages API JSON), or ``text_stream``
    for the text; ``get_final_message()`` reads to the end and returns the whole message."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._accumulator = Accumulator()
        self._events = self._iter_events()

    def _iter_events(self) -> Iterator[JSON]:
        try:
            for response in self._call:
                for event in response.events:
                    data = codec.to_json(event)
                    self._accumulator.add(data)
                    yield data
        except grpc.RpcError as error:
            raise GatewayCallError(error) from None

    def __iter__(self) -> Iterator[JSON]:
        return self._events

    @property
    def text_stream(self) -> Iterator[str]:
        """The text of text_delta events, as it arrives."""
        for event in self._events:
            if event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta":
                yield event["delta"]["text"]

    @property
    def current_message_snapshot(self) -> JSON | None:
        """The message accumulated so far."""
        return self._accumulator.message

    def get_final_message(self) -> JSON:
        """Read the rest of the stream and return the accumulated message."""
        for _ in self._events:
            pass
        if self._accumulator.message is None:
            raise RuntimeError("the stream ended before message_start")
        return self._accumulator.message

    def close(self) -> None:
        """Cancel the call; the gateway closes its upstream request at once."""
        self._call.cancel()

    def __enter__(self) -> MessageStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ChatClient:
    """Calls the gateway over a grpc channel the caller owns."""

    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]] | None = None) -> None:
        """``metadata`` goes with every call, e.g. ``[("authorization", "Bearer <token>")]``."""
        self._stub = chat_pb2_grpc.ChatServiceStub(channel)
        self._metadata = tuple(metadata or ())

    def stream(
        self,
        body: JSON,
        *,
        betas: Sequence[str] = (),
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> MessageStream:
        """Start StreamMessage for an Anthropic-shaped request body. Set ``timeout``: it becomes
        the call's deadline, which bounds the whole upstream call."""
        call = self._stub.StreamMessage(
            stream_request(body, betas), timeout=timeout, metadata=(*self._metadata, *(metadata or ()))
        )
        return MessageStream(call)

    def create(
        self,
        body: JSON,
        *,
        betas: Sequence[str] = (),
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> JSON:
        """CreateMessage: the whole reply as a Messages API Message object."""
        try:
            response = self._stub.CreateMessage(
                create_request(body, betas), timeout=timeout, metadata=(*self._metadata, *(metadata or ()))
            )
        except grpc.RpcError as error:
            raise GatewayCallError(error) from None
        return codec.to_json(response.message)
