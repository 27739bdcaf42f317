"""What a failed attempt says about the way it took, and so where the call goes next: one table.

``verdict(failure)`` reads the HTTP status and the error type alike, so an ``overloaded_error`` event
inside a 200 stream is an overload, and Bedrock's and Vertex's own errors (already read as the API's
error types by ``server.upstream.failures``) land in the same rows:

    verdict        when                                             the key / backend          the call
    rate_limited   429 / rate_limit_error (retry-after, or none     key cooled for retry-after  next key
                   and no spend words)                              (that model family)
    spend_limit    a spend, credit or billing limit (429 without    key dead, alert             next key
                   retry-after, 402, a 400/403 that says so)
    unauthorized   401 / 403, no credentials                        key dead until its          next key
                                                                    credentials change
    overloaded     529 / overloaded_error (Bedrock: 503 or a        platform backed off         next backend of
                   serviceUnavailableException)                                                 another platform
    unavailable    5xx, connect failure, a broken or cut stream     backend backed off          next backend
    timeout        the backend's own first_event_timeout passed     backend backed off          next backend
    caller         400 / 404 / 413: the caller's request            nothing                     no failover: the
                                                                                                caller's status
"""

from __future__ import annotations

import re
from enum import Enum

from server.errors import Failure
from server.reasons import Reason


class Verdict(Enum):
    """How a failed attempt is read; the value is the metric label and the log's word."""

    RATE_LIMITED = "rate_limited"
    SPEND_LIMIT = "spend_limit"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    CALLER = "caller"

    @property
    def fails_over(self) -> bool:
        """Whether another key or backend may serve the call."""
        return self is not Verdict.CALLER

    @property
    def kills_key(self) -> bool:
        return self is Verdict.SPEND_LIMIT or self is Verdict.UNAUTHORIZED


# What a spend or credit limit says, on each platform (Anthropic: "workspace API usage limits", "credit
# balance is too low"; Bedrock: "INVALID_PAYMENT_INSTRUMENT"; Vertex: "requires billing to be enabled").
SPEND_WORDS = re.compile(r"usage limit|spend(ing)? limit|credit balance|credit limit|billing|payment", re.IGNORECASE)

_CALLER_TYPES = frozenset(("invalid_request_error", "not_found_error", "request_too_large"))
_AUTH_TYPES = frozenset(("authentication_error", "permission_error"))
# The gateway's own reasons that no other backend would change: the reply is too large for the gateway.
_CALLER_REASONS = frozenset((Reason.UPSTREAM_EVENT_TOO_LARGE.name,))


def verdict(failure: Failure) -> Verdict:
    """The row of the table above that ``failure`` falls in."""
    kind, status = failure.error_type, failure.http_status or 0
    spend_words = SPEND_WORDS.search(failure.message) is not None
    if kind == "overloaded_error" or status == 529:
        return Verdict.OVERLOADED
    if kind == "billing_error" or status == 402:
        return Verdict.SPEND_LIMIT
    if kind == "rate_limit_error" or status == 429:
        return Verdict.SPEND_LIMIT if failure.retry_after is None and spend_words else Verdict.RATE_LIMITED
    if kind in _AUTH_TYPES or status in (401, 403):
        return Verdict.SPEND_LIMIT if spend_words else Verdict.UNAUTHORIZED
    if kind in _CALLER_TYPES or status in (400, 404, 413, 422):
        return Verdict.SPEND_LIMIT if spend_words else Verdict.CALLER
    if failure.reason == Reason.FIRST_EVENT_TIMEOUT.name:
        return Verdict.TIMEOUT
    if failure.reason == Reason.GATEWAY_NOT_CONFIGURED.name:
        return Verdict.UNAUTHORIZED
    if failure.reason in _CALLER_REASONS:
        return Verdict.CALLER
    if failure.retryable or status >= 500 or failure.reason.startswith("UPSTREAM_") or failure.error_type:
        return Verdict.UNAVAILABLE
    return Verdict.CALLER
