"""The usage and cost the gateway reports for each call, read from the call's trailing metadata.

Every call through the gateway ends with the trailer ``claude-gateway-usage`` (``USAGE_KEY``):
JSON ``{"model", "usage", "cost_usd", "partial"}``. ``usage`` is the Messages API usage object,
merged over the stream as the API defines it (``input_tokens``, ``output_tokens``,
``cache_creation_input_tokens``, ``cache_read_input_tokens``, ``cache_creation``, ``server_tool_use``,
``output_tokens_details``..., each present only when the API reported it); ``cost_usd`` is null when
the gateway has no price for the model; ``partial`` is true when the call did not end OK (its usage
is what the upstream had reported by then). A call the client itself cancelled has no trailer.

    call = stub.StreamMessage(request, timeout=60)
    for response in call: ...
    usage = from_metadata(call.trailing_metadata())          # grpc (sync)
    usage = from_metadata(await call.trailing_metadata())    # grpc.aio
    usage = from_metadata(error.trailing_metadata())         # on grpc.RpcError / AioRpcError
    usage = from_metadata(stream.trailing_metadata)          # a Gateway / AsyncGateway stream, once done
    usage = from_metadata(gateway_error.trailing_metadata)   # claude_gateway.GatewayError
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from claude_gateway.wire import USAGE_KEY


@dataclass(frozen=True)
class CallUsage:
    """One call's usage and cost, as the gateway reported them."""

    model: str
    usage: dict[str, Any]  # the API's usage object; absent keys were not reported
    cost_usd: float | None  # None: the gateway has no price for the model (not zero)
    partial: bool  # the call did not end OK

    @property
    def input_tokens(self) -> int:
        return int(self.usage.get("input_tokens") or 0)

    @property
    def output_tokens(self) -> int:
        return int(self.usage.get("output_tokens") or 0)


def from_metadata(metadata: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> CallUsage | None:
    """The usage trailer in ``metadata`` (key/value pairs or a dict), or None if there is none; ValueError if
    it is not the gateway's JSON."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata or ()
    for key, value in pairs:
        if key != USAGE_KEY:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        obj = json.loads(text)
        if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
            raise ValueError(f"{USAGE_KEY} is not a usage object: {text[:200]!r}")
        cost = obj.get("cost_usd")
        return CallUsage(
            model=str(obj.get("model") or ""),
            usage=obj["usage"],
            cost_usd=float(cost) if isinstance(cost, int | float) else None,
            partial=bool(obj.get("partial")),
        )
    return None
