"""Python client of claude-grpc-gateway: ``Gateway`` and ``AsyncGateway``, shaped like ``anthropic.Anthropic``.

Events and messages are the anthropic SDK's types; failures raise ``GatewayError``. The generated
stubs are ``claude_gateway.v1.chat_pb2`` and ``chat_pb2_grpc``. The names below load on first use, so
that ``claude_gateway.codec`` and the CLI's ``--help`` do not pay for importing the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from claude_gateway.client import AsyncGateway, Gateway
    from claude_gateway.errors import GatewayError
    from claude_gateway.streaming import AsyncMessageStream, MessageStream

__version__ = "0.2.0"

_HOMES = {
    "AsyncGateway": "claude_gateway.client",
    "Gateway": "claude_gateway.client",
    "GatewayError": "claude_gateway.errors",
    "AsyncMessageStream": "claude_gateway.streaming",
    "MessageStream": "claude_gateway.streaming",
}

__all__ = ["AsyncGateway", "AsyncMessageStream", "Gateway", "GatewayError", "MessageStream", "__version__"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'claude_gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
