"""The anthropic SDK's private names the project relies on, and nothing else: the one place they live.

The SDK's public API offers no equivalent for these; each is named by ``tests/test_sdk_internals.py``,
so an SDK release that moves or reshapes one fails ``make test`` instead of a gateway in production.
The supported ``anthropic`` range (client/pyproject.toml) is the range those tests ran against.

    SSEDecoder                the SDK's server-sent-events line decoder (the gateway's framer, by lines)
    accumulate_event          the SDK's stream accumulation of a Message (and its beta twin)
    accumulate_beta_event
    build_events              the derived text/thinking/input_json events of the stream helper
    construct_type            the SDK's unvalidated model construction (how it builds its own objects)
    status_error              the SDK's exception for an HTTP error response
    aiohttp_response          the aiohttp response under the SDK's aiohttp transport, for one-await reads
    forget_aws_sessions       drops the botocore sessions the SDK keeps per process, keyed by the credential
                              arguments (so credentials read from the environment are read again)
"""

from __future__ import annotations

from typing import Any

from anthropic._models import construct_type
from anthropic._streaming import SSEDecoder
from anthropic.lib.streaming._beta_messages import accumulate_event as accumulate_beta_event
from anthropic.lib.streaming._messages import accumulate_event, build_events

__all__ = [
    "SSEDecoder",
    "accumulate_beta_event",
    "accumulate_event",
    "aiohttp_response",
    "build_events",
    "construct_type",
    "forget_aws_sessions",
    "status_error",
]


def status_error(client: Any, response: Any) -> Any:
    """The SDK's own exception (``anthropic.APIStatusError`` or its subclass by status) for the httpx
    ``response`` of a failed request, exactly as the SDK raises it for its own requests."""
    return client._make_status_error_from_response(response)


def aiohttp_response(response: Any) -> Any | None:
    """The ``aiohttp.ClientResponse`` under an httpx response the SDK's aiohttp transport made, or None
    (another transport, or layers that changed shape): httpx's bound stream wraps the transport's
    stream, which holds the aiohttp response."""
    inner = getattr(response.stream, "_stream", None)
    return getattr(inner, "_aiohttp_response", None)


def forget_aws_sessions() -> None:
    """Forget the botocore sessions AnthropicBedrock clients share: the SDK keeps one per process for each set
    of credential arguments, so a client built with none goes on signing with the environment's credentials
    as they were when the first such client signed."""
    from anthropic.lib.aws._auth import _get_session

    cached: Any = _get_session  # the SDK's lru_cache, typed as the function it wraps
    cached.cache_clear()
