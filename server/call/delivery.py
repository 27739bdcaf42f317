"""How a call's events reach the caller, the same on every port: a stream of messages, or one sum.

streamed(write, limit)   a ``Sink`` that sends each batch as StreamMessage responses, split to fit
                         the message limit (REPLY_TOO_LARGE after what fits, if one event cannot),
                         each numbered by its first event's sequence number (from 1)
MessageAccumulator       CreateMessage's sink: the batches summed into one message
                         (``server.call.accumulator``)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from claude_gateway.v1 import chat_pb2 as pb

from server.call.accumulator import MessageAccumulator
from server.call.events import OFFLOAD_BYTES, Event, responses, text_size
from server.errors import Failure, GatewayError

__all__ = ["MessageAccumulator", "Sink", "converted", "streamed"]

Sink = Callable[[list[Event]], Awaitable[None]]  # takes each batch of events, in order


def streamed(write: Callable[[pb.StreamMessageResponse], Awaitable[None]], limit: int) -> Sink:
    """A sink that writes each batch as StreamMessage responses with ``write``, numbering each by the sequence
    number of its first event; a batch's failure (an event too large for ``limit``) is raised after the messages
    that fit have been written."""
    sequence = 1  # the number of the next event

    async def deliver(batch: list[Event]) -> None:
        nonlocal sequence
        out, failure = await converted(batch, limit)
        for response in out:
            response.sequence = sequence
            sequence += len(response.events)
            await write(response)
        if failure is not None:
            raise GatewayError(failure)

    return deliver


async def converted(batch: list[Event], limit: int) -> tuple[list[pb.StreamMessageResponse], Failure | None]:
    """``events.responses`` for one batch, off the event loop when the batch is big; the messages that fit
    go out before the failure, if any."""
    size = text_size(batch)
    if size < OFFLOAD_BYTES:
        return responses(batch, limit, size)
    return await asyncio.to_thread(responses, batch, limit)
