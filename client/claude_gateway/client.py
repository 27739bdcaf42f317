"""Gateway and AsyncGateway: clients of claude_gateway.v1.ChatService shaped like ``anthropic.Anthropic``.

    from claude_gateway import Gateway

    client = Gateway("127.0.0.1:50051")
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=1024,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        for text in stream.text_stream:
            print(text, end="", flush=True)
        message = stream.get_final_message()

Requests take the Messages API's keyword arguments; events and messages are the SDK's own types
(``anthropic.types``); a failed call raises ``GatewayError`` with the status details. ``detach_grace_seconds``
asks for a resumable stream, which the client resumes by itself after a dropped connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import grpc
import grpc.aio
from anthropic.types import Message, MessageParam
from claude_gateway import codec
from claude_gateway.errors import GatewayError
from claude_gateway.resumption import RESUME_ATTEMPTS, Resumption
from claude_gateway.sdk import construct_type
from claude_gateway.streaming import AsyncMessageStreamManager, MessageStreamManager
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from pydantic import BaseModel

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 600.0  # seconds, the anthropic SDK's default; it becomes each call's gRPC deadline
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the gateway's default GATEWAY_MAX_MESSAGE_BYTES
CANCEL_TIMEOUT = 10.0  # seconds for the CancelStream that closing a resumable stream sends


def _plain(value: Any) -> Any:
    """Request values as plain JSON: SDK models (e.g. a reply's content echoed back) become dicts."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _params(body: Mapping[str, Any]) -> pb.MessageCreateParams:
    params = {key: _plain(value) for key, value in body.items() if key != "stream"}
    return codec.from_json(params, pb.MessageCreateParams())


def _body(model: str, max_tokens: int, messages: Iterable[MessageParam], params: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": list(messages), **params}


def stream_request(
    body: Mapping[str, Any], betas: Sequence[str] = (), detach_grace_seconds: int = 0
) -> pb.StreamMessageRequest:
    """The StreamMessage request for an Anthropic-shaped request body ("stream" is ignored); resumable with a
    ``detach_grace_seconds``."""
    return pb.StreamMessageRequest(params=_params(body), betas=betas, detach_grace_seconds=detach_grace_seconds)


def create_request(body: Mapping[str, Any], betas: Sequence[str] = ()) -> pb.CreateMessageRequest:
    """The CreateMessage request for an Anthropic-shaped request body."""
    return pb.CreateMessageRequest(params=_params(body), betas=betas)


def message_of(response: pb.CreateMessageResponse) -> Message:
    """The SDK Message that a CreateMessage response carries."""
    return cast(Message, construct_type(type_=Message, value=codec.to_json(response.message)))


def _credentials(root_certificates: bytes | None, tls: bool | None) -> grpc.ChannelCredentials | None:
    if tls is False or (tls is None and root_certificates is None):
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


_OPTIONS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),)


class _Settings:
    """What both clients share: the target, the call metadata and the default deadline."""

    def __init__(self, token: str | None, default_headers: Mapping[str, str] | None, timeout: float | None) -> None:
        token = token if token is not None else os.environ.get("GATEWAY_TOKEN")
        self.metadata: tuple[tuple[str, str], ...] = (
            *((("authorization", f"Bearer {token}"),) if token else ()),
            *(default_headers or {}).items(),
        )
        self.timeout = timeout

    def call_metadata(self, extra_headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return (*self.metadata, *(extra_headers or {}).items())

    def call_timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout


class Messages:
    """``client.messages``: ``stream(...)`` and ``create(...)`` with the Messages API's keyword arguments."""

    def __init__(self, stub: chat_pb2_grpc.ChatServiceStub, settings: _Settings) -> None:
        self._stub = stub
        self._settings = settings

    def stream(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: Iterable[MessageParam],
        betas: Sequence[str] = (),
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        detach_grace_seconds: int = 0,
        resume_attempts: int = RESUME_ATTEMPTS,
        **params: Any,
    ) -> MessageStreamManager:
        """StreamMessage: ``with`` the result for a MessageStream. ``params`` are the other request keys
        (system, tools, tool_choice, thinking, stop_sequences, metadata...); ``timeout`` (seconds) is the
        deadline; ``extra_headers`` go as gRPC metadata. ``detach_grace_seconds`` > 0 asks for a resumable
        stream: after a dropped connection the client resumes it (at most ``resume_attempts`` times in a row
        without an event), and leaving the ``with`` block before its end cancels it at the gateway too."""
        request = stream_request(_body(model, max_tokens, messages, params), betas, detach_grace_seconds)
        deadline = self._settings.call_timeout(timeout)
        metadata = self._settings.call_metadata(extra_headers)
        resumption = None
        if detach_grace_seconds > 0:
            resumption = Resumption(
                lambda stream_id, after: self._stub.ResumeStream(
                    pb.ResumeStreamRequest(stream_id=stream_id, after_seq=after), timeout=deadline, metadata=metadata
                ),
                lambda stream_id: self._stub.CancelStream(
                    pb.CancelStreamRequest(stream_id=stream_id), timeout=CANCEL_TIMEOUT, metadata=metadata
                ),
                resume_attempts,
            )
        return MessageStreamManager(
            lambda: self._stub.StreamMessage(request, timeout=deadline, metadata=metadata), resumption
        )

    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: Iterable[MessageParam],
        betas: Sequence[str] = (),
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Message:
        """CreateMessage: the whole reply as one Message."""
        request = create_request(_body(model, max_tokens, messages, params), betas)
        try:
            response = self._stub.CreateMessage(
                request,
                timeout=self._settings.call_timeout(timeout),
                metadata=self._settings.call_metadata(extra_headers),
            )
        except grpc.RpcError as error:
            raise GatewayError.from_rpc_error(error) from None
        return message_of(response)


class Gateway:
    """A client of the gateway at ``target`` (default env GATEWAY_TARGET, else 127.0.0.1:50051).

    ``token`` (default env GATEWAY_TOKEN) goes as ``authorization: Bearer <token>`` and ``default_headers`` as
    gRPC metadata with every call; ``root_certificates``
    (PEM bytes) or ``tls=True`` (system roots) connect with TLS; ``timeout`` is the default deadline of each
    call in seconds. Pass ``channel`` to use a channel you own instead (then target and TLS are unused).
    Close it with ``close()`` or a ``with`` block.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        default_headers: Mapping[str, str] | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._owned = channel is None
        if channel is None:
            target = target or os.environ.get("GATEWAY_TARGET") or DEFAULT_TARGET
            credentials = _credentials(root_certificates, tls)
            if credentials is None:
                channel = grpc.insecure_channel(target, options=_OPTIONS)
            else:
                channel = grpc.secure_channel(target, credentials, options=_OPTIONS)
        self.channel = channel
        self.messages = Messages(chat_pb2_grpc.ChatServiceStub(channel), _Settings(token, default_headers, timeout))

    def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self._owned:
            self.channel.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncMessages:
    """``client.messages`` of AsyncGateway."""

    def __init__(self, stub: Callable[[], chat_pb2_grpc.ChatServiceStub], settings: _Settings) -> None:
        self._stub_of = stub
        self._settings = settings

    def stream(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: Iterable[MessageParam],
        betas: Sequence[str] = (),
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        detach_grace_seconds: int = 0,
        resume_attempts: int = RESUME_ATTEMPTS,
        **params: Any,
    ) -> AsyncMessageStreamManager:
        """StreamMessage: ``async with`` the result for an AsyncMessageStream; resumable as Gateway's."""
        request = stream_request(_body(model, max_tokens, messages, params), betas, detach_grace_seconds)
        deadline = self._settings.call_timeout(timeout)
        metadata = self._settings.call_metadata(extra_headers)
        resumption = None
        if detach_grace_seconds > 0:
            resumption = Resumption(
                lambda stream_id, after: self._stub_of().ResumeStream(
                    pb.ResumeStreamRequest(stream_id=stream_id, after_seq=after), timeout=deadline, metadata=metadata
                ),
                lambda stream_id: self._stub_of().CancelStream(
                    pb.CancelStreamRequest(stream_id=stream_id), timeout=CANCEL_TIMEOUT, metadata=metadata
                ),
                resume_attempts,
            )
        return AsyncMessageStreamManager(
            lambda: self._stub_of().StreamMessage(request, timeout=deadline, metadata=metadata), resumption
        )

    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: Iterable[MessageParam],
        betas: Sequence[str] = (),
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Message:
        """CreateMessage: the whole reply as one Message."""
        request = create_request(_body(model, max_tokens, messages, params), betas)
        try:
            response = await self._stub_of().CreateMessage(
                request,
                timeout=self._settings.call_timeout(timeout),
                metadata=self._settings.call_metadata(extra_headers),
            )
        except grpc.RpcError as error:
            raise GatewayError.from_rpc_error(error) from None
        return message_of(response)


class AsyncGateway:
    """The asyncio client (grpc.aio); arguments as for Gateway. Its channel opens on the first call, so the
    client may be made outside the event loop that uses it. Close it with ``await close()`` or ``async with``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        default_headers: Mapping[str, str] | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._owned = channel is None
        self._channel = channel
        self._stub: chat_pb2_grpc.ChatServiceStub | None = None
        self._target = target or os.environ.get("GATEWAY_TARGET") or DEFAULT_TARGET
        self._credentials = _credentials(root_certificates, tls)
        self.messages = AsyncMessages(self._chat_stub, _Settings(token, default_headers, timeout))

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, opened on first use."""
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials, options=_OPTIONS)
        return self._channel

    def _chat_stub(self) -> chat_pb2_grpc.ChatServiceStub:
        if self._stub is None:
            self._stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        return self._stub

    async def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self._owned and self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
