"""The three platforms Claude is served on, as the simulator tells them apart: path, credentials, body, errors.

    anthropic  POST /v1/messages                                              SSE, or a JSON Message
    bedrock    POST /model/{model}/invoke-with-response-stream                AWS event-stream (`eventstream`)
               POST /model/{model}/invoke                                     a JSON Message
    vertex     POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:streamRawPredict   SSE
               POST .../models/{model}:rawPredict                            a JSON Message

The key a request is made with is what the tests count by and what directives and rate limits are
kept per: `x-api-key` or the `Authorization: Bearer` token (anthropic, vertex, and Bedrock API
keys), or the access key id in a SigV4 `Authorization: AWS4-HMAC-SHA256 Credential=KEY/...` (bedrock;
the signature is checked for form, not recomputed).

Bodies are what the SDK's `AsyncAnthropicBedrock` and `AsyncAnthropicVertex` send: the Messages
body with `anthropic_version` in it and the model in the path; Bedrock's has no `stream` either
(the path says it) and refuses `model` and `stream` as extraneous keys. Each becomes the Messages
body the shared checks (`validation.check_body`) and the model (`model.reply`) read. A body's
`anthropic_version` may be the platform's own (`bedrock-2023-05-31`, `vertex-2023-10-16`), read as
2023-06-01, or an API version (`validation.VERSIONS`), which the SDK sends by default.

Errors take each platform's shape (`error_response`), from one table per platform:
anthropic `{"type":"error","error":{...},"request_id"}`; bedrock `{"message"}` with
`x-amzn-ErrorType`; vertex the Messages API's shape passed through, except its own Google-shaped
errors (missing or bad credentials, its 429 quota, billing).
"""

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from .faults import STATUS_BY_ERROR_TYPE, HttpError, SpendLimit
from .validation import VERSIONS, RejectedRequestError, check_body, check_headers


class Platform(StrEnum):
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    VERTEX = "vertex"


@dataclass(frozen=True)
class Route:
    """Where a request went: its platform, and what the path says of it."""

    platform: Platform
    model: str | None = None  # bedrock, vertex: the model id from the path (unquoted)
    stream: bool | None = None  # bedrock: which path; None: the body's `stream` says
    project: str | None = None  # vertex
    region: str | None = None  # vertex


_BEDROCK = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream)")
_VERTEX = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)"
)
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/\d{8}/[^/,\s]+/bedrock/aws4_request,"
    r" ?SignedHeaders=[a-z0-9;-]+, ?Signature=[0-9a-f]{64}"
)
PLATFORM_VERSIONS: Mapping[Platform, str] = {
    Platform.BEDROCK: "bedrock-2023-05-31",
    Platform.VERTEX: "vertex-2023-10-16",
}


def route(path: str) -> Route | None:
    """The platform and path parameters of `path` (no query), or None if no platform serves it."""
    if path == "/v1/messages":
        return Route(Platform.ANTHROPIC)
    if (match := _BEDROCK.fullmatch(path)) is not None:
        return Route(Platform.BEDROCK, unquote(match.group(1)), stream=match.group(2) != "invoke")
    if (match := _VERTEX.fullmatch(path)) is not None:
        project, region, model, _ = match.groups()
        return Route(Platform.VERTEX, unquote(model), project=unquote(project), region=unquote(region))
    return None


def credentials(platform: Platform, headers: Mapping[str, str], keys: Collection[str] | None) -> tuple[str, str | None]:
    """The key the request is made with and (anthropic) its `anthropic-version`; raises RejectedRequestError."""
    if platform is Platform.ANTHROPIC:
        version = check_headers(headers, keys)
        key = headers.get("x-api-key", "")
        if not key or (keys is not None and key not in keys):
            key = headers.get("authorization", "").partition(" ")[2]
        return key, version
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if platform is Platform.VERTEX:
        if scheme.lower() != "bearer" or not token:
            raise RejectedRequestError(401, "UNAUTHENTICATED", "Request is missing required authentication credential.")
        if keys is not None and token not in keys:
            raise RejectedRequestError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        return token, None
    if scheme.lower() == "bearer" and token:
        key = token
    elif scheme == "AWS4-HMAC-SHA256":
        signed = _SIGV4.fullmatch(headers["authorization"])
        if signed is None or "x-amz-date" not in headers:
            raise RejectedRequestError(403, "IncompleteSignatureException", "The request signature is malformed.")
        key = signed.group(1)
    else:
        raise RejectedRequestError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if keys is not None and key not in keys:
        raise RejectedRequestError(403, "UnrecognizedClientException", _BAD_TOKEN)
    return key, None


def messages_body(route: Route, raw: bytes, version: str | None) -> dict[str, Any]:
    """The checked Messages body `raw` stands for on `route`'s platform; raises RejectedRequestError."""
    if route.platform is Platform.ANTHROPIC:
        assert version is not None  # credentials() read it
        return check_body(raw, version)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _invalid(route, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _invalid(route, "request body must be a JSON object")
    if route.platform is Platform.BEDROCK:
        for extraneous in ("model", "stream"):
            if extraneous in body:
                raise _invalid(route, f"Malformed input request: #: extraneous key [{extraneous}] is not permitted")
    given = body.pop("anthropic_version", None)
    if given is None:
        raise _invalid(route, "anthropic_version: Field required")
    if given != PLATFORM_VERSIONS[route.platform] and given not in VERSIONS:
        accepted = " or ".join((PLATFORM_VERSIONS[route.platform], *VERSIONS))
        raise _invalid(route, f"anthropic_version: {given!r} is not a supported version ({accepted})")
    body.pop("anthropic_beta", None)
    body["model"] = route.model
    if route.stream is not None:
        body["stream"] = route.stream
    return check_body(json.dumps(body).encode(), given if given in VERSIONS else "2023-06-01")


def _invalid(route: Route, message: str) -> RejectedRequestError:
    error_type = "ValidationException" if route.platform is Platform.BEDROCK else "invalid_request_error"
    return RejectedRequestError(400, error_type, message)


# ---- errors, each platform's shape -------------------------------------------------------------------

_BAD_TOKEN = "The security token included in the request is invalid."
# Bedrock's HTTP error for each Messages API error type: status, exception, default message.
BEDROCK_ERRORS: Mapping[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "ValidationException", None),
    "authentication_error": (403, "UnrecognizedClientException", _BAD_TOKEN),
    "billing_error": (403, "AccessDeniedException", None),
    "permission_error": (403, "AccessDeniedException", None),
    "not_found_error": (404, "ResourceNotFoundException", None),
    "request_too_large": (400, "ValidationException", "Input is too long for requested model."),
    "rate_limit_error": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "api_error": (500, "InternalServerException", None),
    "timeout_error": (408, "ModelTimeoutException", None),
    "overloaded_error": (503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
}
# Bedrock's in-stream exception for each Messages API error type; others become a
# modelStreamErrorException carrying the status the model would have answered.
BEDROCK_STREAM_EXCEPTIONS: Mapping[str, str] = {
    "overloaded_error": "throttlingException",
    "rate_limit_error": "throttlingException",
    "api_error": "internalServerException",
    "invalid_request_error": "validationException",
    "timeout_error": "modelTimeoutException",
}
# Vertex's own errors (Google's shape): the gRPC-style status for each HTTP status.
_GOOGLE_STATUS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}
_VERTEX_QUOTA = (
    "Quota exceeded for aiplatform.googleapis.com/online_prediction_input_tokens_per_minute_per_base_model "
    "with base model: anthropic-claude. Please submit a quota increase request."
)
_JSON = {"content-type": "application/json"}


def error_response(
    platform: Platform, error: HttpError | SpendLimit, request_id: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of `error` as `platform` writes it."""
    if isinstance(error, SpendLimit):
        error = spend_limit(platform, error.status)
    headers = dict(_JSON)
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
    if error.retry_after_ms is not None:
        headers["retry-after-ms"] = str(error.retry_after_ms)
    if error.should_retry is not None:
        headers["x-should-retry"] = "true" if error.should_retry else "false"
    if platform is Platform.BEDROCK:
        status, exception, message = _bedrock(error)
        headers["x-amzn-requestid"] = request_id
        headers["x-amzn-errortype"] = f"{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        return status, headers, _compact({"message": message})
    if platform is Platform.VERTEX and (error.error_type.isupper() or error.status == 429):
        status_name = error.error_type if error.error_type.isupper() else _GOOGLE_STATUS[429]
        message = _VERTEX_QUOTA if error.error_type == "rate_limit_error" else error.message
        google = {"error": {"code": error.status, "message": message, "status": status_name}}
        return error.status, headers, _compact(google)
    if platform is Platform.ANTHROPIC:
        headers["request-id"] = request_id
    return error.status, headers, anthropic_error(error.error_type, error.message, request_id)


def spend_limit(platform: Platform, status: int) -> HttpError:
    """What each platform answers once the key's spend or credit limit is reached."""
    if platform is Platform.BEDROCK:
        return HttpError(
            403,
            "AccessDeniedException",
            "Model access is denied due to INVALID_PAYMENT_INSTRUMENT:A valid payment instrument must be provided.",
        )
    if platform is Platform.VERTEX:
        return HttpError(403, "PERMISSION_DENIED", "This API method requires billing to be enabled.")
    first = (datetime.now(UTC).replace(day=1) + timedelta(days=32)).replace(day=1)
    message = (
        "You have reached your specified workspace API usage limits. "
        f"You will regain access on {first:%Y-%m-%d} at 00:00 UTC."
    )
    return HttpError(status, "rate_limit_error" if status == 429 else "invalid_request_error", message)


def stream_exception(error_type: str, message: str) -> tuple[str, dict[str, Any]]:
    """The Bedrock exception message (type, body) for an in-stream error of `error_type`."""
    if error_type.endswith("Exception"):
        return error_type, {"message": message}
    exception = BEDROCK_STREAM_EXCEPTIONS.get(error_type)
    if exception is not None:
        return exception, {"message": message}
    status = STATUS_BY_ERROR_TYPE.get(error_type, 500)
    return "modelStreamErrorException", {
        "message": f"Received error from the model: {message}",
        "originalStatusCode": status,
        "originalMessage": message,
    }


def anthropic_error(error_type: str, message: str, request_id: str | None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return _compact(body)


def _bedrock(error: HttpError) -> tuple[int, str, str]:
    if error.error_type.endswith("Exception"):
        return error.status, error.error_type, error.message
    status, exception, message = BEDROCK_ERRORS.get(error.error_type, (error.status, "InternalServerException", None))
    return status, exception, message or error.message


def _compact(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
