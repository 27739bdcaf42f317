"""``CallContext``: what the life of one call needs of the port it arrived on.

Every port implements it: on gRPC it is grpc.aio's own ``ServicerContext``; on the HTTP port each
protocol (Connect and gRPC-Web, the Messages API) has a small class of its own. ``server.call`` is
written against this Protocol alone, so a port never reaches into another port's types, and mypy
checks each implementation where it is handed to ``Calls.run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import grpc


class CallMetadata(Protocol):
    """What a port knows of a call before it reads the call's body: its metadata (headers) and deadline."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        """The request's metadata (gRPC) or headers (HTTP), lower-case keys: ``authorization`` among them."""

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline; None without one."""


class CallContext(CallMetadata, Protocol):
    """One call's side of its port: the caller's metadata and deadline in, headers, trailers and status out.
    A failed call's status is set (code, message, then the trailing metadata with its rich details), never
    raised: an exception raised through the port's frames would hold the call's request in a reference
    cycle until the next full collection."""

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Metadata (response headers) sent before the first message: the upstream's request id."""

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Metadata sent at the call's end: the usage and cost report, and a failure's rich details
        (``grpc-status-details-bin``)."""

    def set_code(self, code: grpc.StatusCode) -> None:
        """The call's status code, set when it failed."""

    def set_details(self, details: str) -> None:
        """The call's status message, set when it failed."""
