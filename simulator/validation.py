"""The checks the real Messages API makes before it answers, in its order: credentials, version, body, model.

A failed check raises `RejectedRequestError` carrying the HTTP status, the error type and a message that
names the offending header or field (`messages.1.role: ...`), as the real API's do. Under
`anthropic-version: 2026-10-21`, `temperature`, `top_p`, `top_k` and a `document` block in an
assistant turn are refused.
"""

import json
from collections.abc import Collection, Mapping
from typing import Any

VERSIONS = ("2023-06-01", "2026-10-21")
# Optional fields the simulator reads: the JSON types they must have, and how to name them.
_OPTIONAL_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "system": ((str, list), "a string or a list of text blocks"),
    "thinking": ((dict,), "an object"),
    "tool_choice": ((dict,), "an object"),
    "tools": ((list,), "a list"),
}
# Sampling parameters the 2026-10-21 API version no longer accepts.
_REMOVED_IN_2026 = ("temperature", "top_p", "top_k")


class RejectedRequestError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _invalid(message: str) -> RejectedRequestError:
    return RejectedRequestError(400, "invalid_request_error", message)


def check_headers(headers: Mapping[str, str], accepted: Collection[str] | None) -> str:
    """Check the key (`x-api-key` or `Authorization: Bearer`; one of `accepted`, unless None) and
    return the API version."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    keys = {key for key in (headers.get("x-api-key", ""), token if scheme.lower() == "bearer" else "") if key}
    if not keys:
        raise RejectedRequestError(
            401, "authentication_error", "x-api-key header or Authorization: Bearer token is required"
        )
    if accepted is not None and not any(key in accepted for key in keys):
        raise RejectedRequestError(401, "authentication_error", "invalid x-api-key")
    version = headers.get("anthropic-version")
    if version is None:
        raise _invalid("anthropic-version: header is required")
    if version not in VERSIONS:
        raise _invalid(f"anthropic-version: {version!r} is not a supported version ({' or '.join(VERSIONS)})")
    return version


def check_body(raw: bytes, version: str) -> dict[str, Any]:
    """Parse and check a Messages request body; the fields the simulator relies on are sound after."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _invalid(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid("max_tokens: Field required, an integer greater than or equal to 1")
    for name, (kinds, described) in _OPTIONAL_FIELDS.items():
        if body.get(name) is not None and not isinstance(body[name], kinds):
            raise _invalid(f"{name}: Input should be {described}")
    check_turns(body.get("messages"), version)
    stop_sequences = body.get("stop_sequences", [])
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        raise _invalid("stop_sequences: Input should be a list of strings")
    if version == "2026-10-21":
        for name in _REMOVED_IN_2026:
            if name in body:
                raise _invalid(f"{name}: Extra inputs are not permitted (removed in anthropic-version {version})")
    return body


def check_model(body: Mapping[str, Any], models: Collection[str]) -> None:
    """A model the API does not serve is not found (404), with the API's message, ``model: NAME``."""
    if body["model"] not in models:
        raise RejectedRequestError(404, "not_found_error", f"model: {body['model']}")


def check_turns(messages: object, version: str) -> None:
    """Check the conversation: at least one turn, each with a role and content."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    for i, turn in enumerate(messages):
        _check_turn(i, turn, version)


def _check_turn(i: int, turn: object, version: str) -> None:
    if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
        raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    content = turn.get("content")
    if not isinstance(content, str | list):
        raise _invalid(f"messages.{i}.content: Input should be a string or a list of content blocks")
    for j, block in enumerate(content if isinstance(content, list) else []):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _invalid(f"messages.{i}.content.{j}.type: Field required")
        if version == "2026-10-21" and turn["role"] == "assistant" and block["type"] == "document":
            raise _invalid(f"messages.{i}.content.{j}: document blocks are not allowed in assistant messages")
