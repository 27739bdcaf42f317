"""Resuming a resumable stream after its connection dropped, for ``MessageStream`` and ``AsyncMessageStream``.

A stream asked for with ``detach_grace_seconds`` keeps running at the gateway when its caller's connection goes
away. The client then calls ResumeStream with the stream's id and the number of the last event it delivered,
waiting a little longer before each attempt, at most ``attempts`` times in a row without an event; what a resume
sends twice (events it already had) is skipped by number, so the caller sees each event once, in order.

Only a drop is resumed: a call that failed with a status of the network (no ``ErrorInfo`` of the gateway's), not
one the gateway gave, which is the stream's own end.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import ERROR_DOMAIN
from google.rpc import error_details_pb2
from grpc_status import rpc_status

RESUME_ATTEMPTS = 5  # resumes in a row without an event before the drop is the caller's error
# What transports make of a lost connection (grpcio: UNAVAILABLE, INTERNAL; Node's: ABORTED for a reset).
_DROPS = frozenset(
    (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    )
)


@dataclass(frozen=True)
class Resumption:
    """How a stream resumes: ``resume(stream_id, after)`` starts a ResumeStream call, ``cancel(stream_id)`` ends the
    stream at the gateway (CancelStream); ``attempts`` bounds the resumes in a row without an event."""

    resume: Callable[[str, int], Any]
    cancel: Callable[[str], Any]
    attempts: int = RESUME_ATTEMPTS


def dropped(error: grpc.RpcError) -> bool:
    """Whether a failed call lost its connection (a status the network gave, not the gateway)."""
    if error.code() not in _DROPS:
        return False
    try:
        status = rpc_status.from_call(error)  # every RpcError a call raises is also its Call
    except ValueError:  # details that do not match the status: not the gateway's
        return True
    if status is None:
        return True
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                return False
    return True


def backoff(attempt: int) -> float:
    """Seconds to wait before resume number ``attempt`` (from 1) of a run without events: 0.2 s doubling to 3.2 s,
    less up to a quarter at random, so that the callers of a replica that went away do not all come back at once."""
    return min(0.2 * 2.0 ** (attempt - 1), 3.2) * (1 - 0.25 * random.random())


class Numbering:
    """The number of the last event delivered, to skip the events a resume sends again."""

    def __init__(self) -> None:
        self.last = 0

    def fresh(self, response: pb.StreamMessageResponse | pb.ResumeStreamResponse) -> Iterator[pb.MessageStreamEvent]:
        """The events of ``response`` not delivered yet, in order; each is noted as delivered as it is taken."""
        first = response.sequence
        for i, event in enumerate(response.events):
            number = first + i if first else self.last + 1  # a gateway that does not number: take them all
            if number <= self.last:
                continue
            self.last = number
            yield event
