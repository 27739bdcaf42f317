"""MessageStream and AsyncMessageStream: one StreamMessage call, read as the anthropic SDK's stream helper reads SSE.

Each relayed protobuf event becomes its Messages API JSON (``claude_gateway.codec``), then the SDK's own
event type (``anthropic.types.RawMessageStreamEvent``), and goes through the SDK's own accumulation and
event building (``accumulate_event``, ``build_events``), so iteration yields exactly what
``anthropic.Anthropic().messages.stream()`` yields: the raw events plus the derived ``text``,
``citation``, ``thinking``, ``signature`` and ``input_json`` events, and ``get_final_message()`` is
the SDK's ``ParsedMessage``. A resumable stream (``detach_grace_seconds``) whose connection drops is resumed
where it was (``claude_gateway.resumption``): the events, the text and the final message are those of an
uninterrupted stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, cast

import grpc
import grpc.aio
from anthropic.lib.streaming import MessageStreamEvent
from anthropic.types import RawMessageStreamEvent
from anthropic.types.parsed_message import ParsedMessage
from claude_gateway import codec
from claude_gateway.errors import GatewayError, metadata_dict
from claude_gateway.resumption import Numbering, Resumption, backoff, dropped
from claude_gateway.sdk import accumulate_event, build_events, construct_type
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import REQUEST_ID_KEY, STREAM_ID_KEY

_CLOSED = (
    "the stream was closed before it ended: its `with` block was left (or close() called) first; "
    "read it to the end inside the block, e.g. with get_final_message()"
)


class _Accumulation:
    """The SDK's snapshot and the events it fires, fed one Messages API JSON event at a time."""

    def __init__(self) -> None:
        self.snapshot: ParsedMessage[None] | None = None
        self._json_bufs: dict[int, bytes] = {}

    def feed(self, event: pb.MessageStreamEvent) -> tuple[RawMessageStreamEvent, list[MessageStreamEvent]]:
        """The relayed event as the SDK's raw event type, and the events the SDK's helper fires for it."""
        raw = cast(RawMessageStreamEvent, construct_type(type_=RawMessageStreamEvent, value=codec.to_json(event)))
        if raw.type == "ping":  # type: ignore[comparison-overlap]
            return raw, []  # the SDK's stream drops pings
        if self.snapshot is None and raw.type != "message_start":
            return raw, [cast(MessageStreamEvent, raw)]  # as the SDK does: a ping (or anything) before message_start
        self.snapshot = accumulate_event(event=raw, current_snapshot=self.snapshot, json_bufs=self._json_bufs)
        return raw, cast(list[MessageStreamEvent], build_events(event=raw, message_snapshot=self.snapshot))

    def final(self) -> ParsedMessage[None]:
        if self.snapshot is None:
            raise RuntimeError("the stream ended before message_start")
        return self.snapshot


def _final_text(message: ParsedMessage[None]) -> str:
    texts = [block.text for block in message.content if block.type == "text"]
    if not texts:
        kinds = ",".join(block.type for block in message.content)
        raise RuntimeError(f"get_final_text() needs a text block; the reply has {kinds or 'no'} content block(s)")
    return "".join(texts)


class _Metadata:
    """What a call tells besides events: its initial and trailing metadata."""

    initial_metadata: dict[str, str | bytes]
    trailing_metadata: dict[str, str | bytes] | None
    resumes: int  # how many times the stream was resumed after a dropped connection

    @property
    def request_id(self) -> str | None:
        """The upstream request id (initial metadata ``anthropic-request-id``; a resumable stream's comes with its
        trailers), once the upstream answered."""
        value = self.initial_metadata.get(REQUEST_ID_KEY) or (self.trailing_metadata or {}).get(REQUEST_ID_KEY)
        return value if isinstance(value, str) else None

    @property
    def stream_id(self) -> str | None:
        """The stream's id (initial metadata ``claude-gateway-stream-id``), for ResumeStream and CancelStream."""
        value = self.initial_metadata.get(STREAM_ID_KEY)
        return value if isinstance(value, str) else None

    def trailer_json(self, key: str) -> Any:
        """The JSON value of trailing metadata ``key`` (e.g. usage or cost reports), or None when absent.

        Trailing metadata arrives when the call ends: read the stream to its end first."""
        if self.trailing_metadata is None or key not in self.trailing_metadata:
            return None
        return json.loads(self.trailing_metadata[key])


class MessageStream(_Metadata):
    """A StreamMessage call. Iterate it for events; ``text_stream`` for the text; ``get_final_message()``
    reads to the end and returns the message. ``close()`` (or leaving the ``with`` block) cancels the call,
    which closes the gateway's upstream request at once."""

    text_stream: Iterator[str]

    def __init__(self, call: Any, resumption: Resumption | None = None) -> None:
        self._call = call
        self._resumption = resumption
        self._numbering = Numbering()
        self._accumulation = _Accumulation()
        self._closed = False
        self._ended = False
        self.resumes = 0
        self.initial_metadata = {}
        self.trailing_metadata = None
        self._source = self._read()
        self._iterator = (event for _, fired in self._source for event in fired)
        self.text_stream = self._stream_text()

    def _start(self) -> None:
        """Wait for the gateway's first answer; raise GatewayError if the call failed before any event."""
        try:
            self.initial_metadata = metadata_dict(self._call.initial_metadata())
        except grpc.RpcError as error:
            raise GatewayError.from_rpc_error(error) from None
        if self._call.done() and self._call.code() != grpc.StatusCode.OK:
            try:
                next(iter(self._call))
            except grpc.RpcError as error:
                raise GatewayError.from_rpc_error(error) from None

    def _read(self) -> Iterator[tuple[RawMessageStreamEvent, list[MessageStreamEvent]]]:
        numbering, failures = self._numbering, 0
        while True:
            try:
                for response in self._call:
                    for event in numbering.fresh(response):
                        failures = 0
                        yield self._accumulation.feed(event)
                break
            except grpc.RpcError as error:
                if self._closed and error.code() == grpc.StatusCode.CANCELLED:
                    raise GatewayError(grpc.StatusCode.CANCELLED, _CLOSED) from None
                resumption, stream_id = self._resumption, self.stream_id
                if resumption is None or stream_id is None or failures >= resumption.attempts or not dropped(error):
                    self._ended = True
                    raise GatewayError.from_rpc_error(error) from None
                failures += 1
                time.sleep(backoff(failures))
                self._call = resumption.resume(stream_id, numbering.last)
                self.resumes += 1
        self._ended = True
        self.initial_metadata = {**self.initial_metadata, **metadata_dict(self._call.initial_metadata())}
        self.trailing_metadata = metadata_dict(self._call.trailing_metadata())

    def _stream_text(self) -> Iterator[str]:
        for event in self:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    def __iter__(self) -> Iterator[MessageStreamEvent]:
        yield from self._iterator

    @property
    def raw_events(self) -> Iterator[RawMessageStreamEvent]:
        """Every event as relayed, pings included, without the derived ones: what ``messages.create(stream=True)``
        gives in the SDK, except that the SDK drops pings. It reads the same call: each event goes either here
        or to the event iteration, never both."""
        return (raw for raw, _ in self._source)

    def __next__(self) -> MessageStreamEvent:
        return next(self._iterator)

    @property
    def current_message_snapshot(self) -> ParsedMessage[None]:
        """The message accumulated so far (after message_start)."""
        return self._accumulation.final()

    def until_done(self) -> None:
        """Read the stream to its end."""
        for _ in self:
            pass

    def get_final_message(self) -> ParsedMessage[None]:
        """Read the rest of the stream and return the accumulated message."""
        self.until_done()
        return self._accumulation.final()

    def get_final_text(self) -> str:
        """Read the rest of the stream and return the text of its text blocks, joined."""
        return _final_text(self.get_final_message())

    def close(self) -> None:
        """Cancel the call if it is still running (a resumable stream at the gateway too, with CancelStream)."""
        self._closed = True
        self._call.cancel()
        if self._resumption is not None and not self._ended and self.stream_id is not None:
            self._ended = True
            with contextlib.suppress(grpc.RpcError):  # unreachable or already over: its detach grace ends it
                self._resumption.cancel(self.stream_id)

    def __enter__(self) -> MessageStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class MessageStreamManager:
    """What ``messages.stream(...)`` returns: ``with`` it to start the call and get its MessageStream."""

    def __init__(self, start: Callable[[], Any], resumption: Resumption | None = None) -> None:
        self._start = start
        self._resumption = resumption
        self._stream: MessageStream | None = None

    def __enter__(self) -> MessageStream:
        self._stream = MessageStream(self._start(), self._resumption)
        try:
            self._stream._start()
        except BaseException:
            self._stream.close()
            raise
        return self._stream

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncMessageStream(_Metadata):
    """The asyncio MessageStream: ``async for`` events, ``text_stream``, ``await get_final_message()``."""

    text_stream: AsyncIterator[str]

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any], resumption: Resumption | None = None) -> None:
        self._call = call
        self._resumption = resumption
        self._numbering = Numbering()
        self._accumulation = _Accumulation()
        self._closed = False
        self._ended = False
        self.resumes = 0
        self.initial_metadata = {}
        self.trailing_metadata = None
        self._source = self._read()
        self._iterator = self._fired()
        self.text_stream = self._stream_text()

    async def _start(self) -> None:
        """Wait for the gateway's first answer; raise GatewayError if the call failed before any event."""
        metadata = await self._call.initial_metadata()
        self.initial_metadata = metadata_dict(metadata)
        if self._call.done():
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                try:
                    await self._call.read()
                except grpc.RpcError as error:
                    raise GatewayError.from_rpc_error(error) from None

    async def _read(self) -> AsyncIterator[tuple[RawMessageStreamEvent, list[MessageStreamEvent]]]:
        numbering, failures = self._numbering, 0
        while True:
            try:
                async for response in self._call:
                    for event in numbering.fresh(response):
                        failures = 0
                        yield self._accumulation.feed(event)
                self._ended = True
                self.initial_metadata = {**self.initial_metadata, **metadata_dict(await self._call.initial_metadata())}
                self.trailing_metadata = metadata_dict(await self._call.trailing_metadata())
                return
            except asyncio.CancelledError:
                if self._closed and self._call.cancelled():  # our own close(), not the task's cancellation
                    raise GatewayError(grpc.StatusCode.CANCELLED, _CLOSED) from None
                raise
            except grpc.RpcError as error:
                if self._closed and error.code() == grpc.StatusCode.CANCELLED:
                    raise GatewayError(grpc.StatusCode.CANCELLED, _CLOSED) from None
                resumption, stream_id = self._resumption, self.stream_id
                if resumption is None or stream_id is None or failures >= resumption.attempts or not dropped(error):
                    self._ended = True
                    raise GatewayError.from_rpc_error(error) from None
            failures += 1
            await asyncio.sleep(backoff(failures))
            self._call = resumption.resume(stream_id, numbering.last)
            self.resumes += 1

    async def _fired(self) -> AsyncIterator[MessageStreamEvent]:
        async for _, fired in self._source:
            for event in fired:
                yield event

    @property
    async def raw_events(self) -> AsyncIterator[RawMessageStreamEvent]:
        """The events as relayed, without the derived ones; see MessageStream.raw_events."""
        async for raw, _ in self._source:
            yield raw

    async def _stream_text(self) -> AsyncIterator[str]:
        async for event in self:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    async def __aiter__(self) -> AsyncIterator[MessageStreamEvent]:
        async for event in self._iterator:
            yield event

    async def __anext__(self) -> MessageStreamEvent:
        return await self._iterator.__anext__()

    @property
    def current_message_snapshot(self) -> ParsedMessage[None]:
        """The message accumulated so far (after message_start)."""
        return self._accumulation.final()

    async def until_done(self) -> None:
        """Read the stream to its end."""
        async for _ in self:
            pass

    async def get_final_message(self) -> ParsedMessage[None]:
        """Read the rest of the stream and return the accumulated message."""
        await self.until_done()
        return self._accumulation.final()

    async def get_final_text(self) -> str:
        """Read the rest of the stream and return the text of its text blocks, joined."""
        return _final_text(await self.get_final_message())

    async def close(self) -> None:
        """Cancel the call if it is still running (a resumable stream at the gateway too, with CancelStream)."""
        self._closed = True
        self._call.cancel()
        if self._resumption is not None and not self._ended and self.stream_id is not None:
            self._ended = True
            with contextlib.suppress(grpc.RpcError):  # unreachable or already over: its detach grace ends it
                await self._resumption.cancel(self.stream_id)

    async def __aenter__(self) -> AsyncMessageStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncMessageStreamManager:
    """What ``messages.stream(...)`` of the async client returns: ``async with`` it for the AsyncMessageStream."""

    def __init__(
        self, start: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]], resumption: Resumption | None = None
    ) -> None:
        self._start = start
        self._resumption = resumption
        self._stream: AsyncMessageStream | None = None

    async def __aenter__(self) -> AsyncMessageStream:
        self._stream = AsyncMessageStream(self._start(), self._resumption)
        try:
            await self._stream._start()
        except BaseException:
            await self._stream.close()
            raise
        return self._stream

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not None:
            await self._stream.close()
