"""The simulator's answers to the API's calls that generate nothing: counting tokens and listing models.

`count_tokens(raw, version, models)` checks a `POST /v1/messages/count_tokens` body as the real API
does (a message body without what only generation uses: any key it does not take is refused; a model
outside the catalog is a 404) and counts its input tokens as the reply's `message_start` would
(`model.input_tokens`). `models_page(models, query)` and `model_info(models, id)` answer
`GET /v1/models` (pages by `limit`, `after_id`, `before_id`) and `GET /v1/models/{id}` from the
simulator's catalog (`catalog`), in name order, each as the API's ModelInfo object.
"""

import json
from collections.abc import Collection, Mapping
from typing import Any

from . import model
from .validation import RejectedRequestError, check_model, check_turns

COUNT_PATH = "/v1/messages/count_tokens"
MODELS_PATH = "/v1/models"
MODEL_PATH = "/v1/models/"  # then the model's id
PATHS = (COUNT_PATH, MODELS_PATH)
CREATED_AT = "2025-01-01T00:00:00Z"  # the one release date the simulator gives its models

# The keys a count_tokens body may have (the API refuses the others, max_tokens among them).
COUNTED_KEYS = frozenset(
    (
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
        "speed",
        "mcp_servers",
        "context_management",
    )
)


def count_tokens(raw: bytes, version: str, models: Collection[str]) -> dict[str, Any]:
    """The answer to a count_tokens body; RejectedRequestError naming what is wrong with it."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RejectedRequestError(400, "invalid_request_error", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RejectedRequestError(400, "invalid_request_error", "request body must be a JSON object")
    for key in body:
        if key not in COUNTED_KEYS:
            raise RejectedRequestError(400, "invalid_request_error", f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise RejectedRequestError(400, "invalid_request_error", "model: Field required")
    check_turns(body.get("messages"), version)
    check_model(body, models)
    return {"input_tokens": model.input_tokens(body)}


def info(name: str) -> dict[str, Any]:
    """The ModelInfo of one catalog name."""
    return {"type": "model", "id": name, "display_name": name, "created_at": CREATED_AT, "lifecycle": "active"}


def models_page(models: Collection[str], query: Mapping[str, list[str]]) -> dict[str, Any]:
    """One page of the catalog as GET /v1/models gives it."""
    raw = query.get("limit", ["20"])[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RejectedRequestError(400, "invalid_request_error", "limit: must be an integer from 1 to 1000")
    limit = int(raw)
    ids = sorted(models)
    after, before = query.get("after_id", [""])[-1], query.get("before_id", [""])[-1]
    if before:
        end = ids.index(before) if before in ids else len(ids)
        start = max(0, end - limit)
        page, more = ids[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after in ids else 0
        page, more = ids[start : start + limit], start + limit < len(ids)
    return {
        "data": [info(name) for name in page],
        "has_more": more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def model_info(models: Collection[str], model_id: str) -> dict[str, Any]:
    """One model of the catalog; a 404 for any other id."""
    if model_id not in models:
        raise RejectedRequestError(404, "not_found_error", f"model: {model_id}")
    return info(model_id)
