"""``CallContext``: what the life of one call needs of the port it arrived on.

Every port implements it: on gRPC it is grpc.aio's own ``ServicerContext``; on the HTTP port each
protocol (Connect and gRPC-Web, the Messages API) has a small class of its own. ``server.call`` is
written against this Protocol alone, so a port never reaches into another port's types, and mypy
checks each implementation where it is handed to ``Calls.run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn, Protocol

import grpc


class CallContext(Protocol):
    """One call's side of its port: the caller's metadata and deadline in, headers, trailers and status out."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        """The request's metadata (gRPC) or headers (HTTP), lower-case keys: ``authorization`` among them."""

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline; None without one."""

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Metadata (response headers) sent before the first message: the upstream's request id."""

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Metadata sent at the call's end: the usage and cost report."""

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with ``status`` (its trailing metadata included); never returns."""
