"""The calls that generate nothing, the same on every port: CountTokens and ListModels.

    lookups = Lookups(calls)
    response = await lookups.count_tokens(context, request)   # pb.CountTokensResponse
    response = await lookups.list_models(context)             # pb.ListModelsResponse

Each is admitted as a message is (``server.call.admission``: the caller, the drain, the policy) and
reported as one is (``server.reporting.telemetry``: one log line, the calls counter), under the
method names ``CountTokens`` and ``ListModels``. A failure is set on the port's
context (code, message, rich details) as ``server.errors.to_status`` gives it, as a message's is.

CountTokens asks the upstream (POST /v1/messages/count_tokens): the count is the API's own. It is
retried as a stream's opening is (HTTP 408/409/429/5xx, connection failures) within the first-event
bound and the caller's deadline. ListModels is the caller's view of the policy (``model_list``),
with the upstream's own information on each model (GET /v1/models, every page) when the upstream
answers; when it does not, the policy's view alone, and a warning in the log.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import REQUEST_ID_KEY

from server.call.admission import Undecodable
from server.call.context import CallContext
from server.call.retry import backoff
from server.call.runner import Calls
from server.errors import Failure, GatewayError, Reason, fail, to_status
from server.limits.policy import Policy, Rules
from server.redaction import model_id
from server.reporting.record import OK, CallRecord
from server.upstream.failures import from_exception

log = logging.getLogger(__name__)

T = TypeVar("T")

COUNT_PATH = "/v1/messages/count_tokens"
MODELS_PATH = "/v1/models"
MODELS_PAGE = 1000  # models asked for per page (the API's most)
MAX_MODEL_PAGES = 20  # pages read at most: a list that never ends is cut there
EPOCH = "1970-01-01T00:00:00Z"  # created_at of a model the upstream did not describe, as the API writes unknown dates


class Lookups:
    """CountTokens and ListModels on the settings, admission, upstream and telemetry of ``calls``."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def count_tokens(
        self, context: CallContext, request: pb.CountTokensRequest | Undecodable
    ) -> pb.CountTokensResponse | None:
        """The API's count of the request's input tokens."""
        model = "" if isinstance(request, Undecodable) else model_id(request.params.model) or ""

        async def work(record: CallRecord) -> pb.CountTokensResponse:
            counted = await self._calls.admission.admit_count(context, request)
            record.caller, record.model = counted.caller, counted.body["model"]
            answer, request_id = await self._ask(
                context,
                record,
                "POST",
                COUNT_PATH,
                body=counted.body,
                betas=counted.betas,
                version=counted.version,
            )
            if request_id:
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
            if type(tokens) is not int or not 0 <= tokens < 2**31:
                raise GatewayError(fail(Reason.UPSTREAM_MALFORMED_EVENT, "upstream's count has no whole input_tokens"))
            assert isinstance(answer, dict)
            return codec.from_json(answer, pb.CountTokensResponse())

        return await self._run("CountTokens", model, context, work)

    async def list_models(self, context: CallContext) -> pb.ListModelsResponse | None:
        """The models the caller may name (``model_list``)."""

        async def work(record: CallRecord) -> pb.ListModelsResponse:
            caller, rules = self._calls.admission.caller(context)
            record.caller = caller
            listed: list[dict[str, Any]] | None = None
            try:
                listed = await self._listed(context, record)
            except GatewayError as exc:
                failure = self._calls.redactor.failure(exc.failure)
                log.warning("the upstream's model list is not available (%s): the policy's view alone", failure.message)
            return model_list(self._calls.admission.policy, rules, listed)

        return await self._run("ListModels", "", context, work)

    async def _listed(self, context: CallContext, record: CallRecord) -> list[dict[str, Any]]:
        """Every model of the upstream's list (GET /v1/models, page after page)."""
        models: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": MODELS_PAGE}
        for _ in range(MAX_MODEL_PAGES):
            page, _ = await self._ask(context, record, "GET", MODELS_PATH, params=params)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise GatewayError(fail(Reason.UPSTREAM_MALFORMED_EVENT, "upstream's model list has no data list"))
            models += [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]
            last = page.get("last_id")
            if page.get("has_more") is not True or not isinstance(last, str) or not last:
                break
            params = {"limit": MODELS_PAGE, "after_id": last}
        return models

    async def _ask(
        self, context: CallContext, record: CallRecord, method: str, path: str, **request: Any
    ) -> tuple[Any, str | None]:
        """``Upstream.ask``, retried as a stream's opening is, within the first-event bound and the deadline."""
        settings = self._calls.settings
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        deadline = loop.time() + min(settings.first_event_timeout, math.inf if remaining is None else remaining)
        attempt = 1
        while True:
            record.attempts += 1
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._calls.upstream.ask(
                        method, path, timeout=max(deadline - loop.time(), 0.001), **request
                    )
            except TimeoutError:
                raise GatewayError(fail(Reason.UPSTREAM_TIMEOUT, f"upstream did not answer {path} in time")) from None
            except Exception as exc:
                failure = from_exception(exc)
                delay = backoff(attempt, failure.retry_after)
                if not failure.retryable or attempt >= settings.max_attempts or loop.time() + delay >= deadline:
                    raise GatewayError(failure) from None
                record.retried.append(failure.error_type or failure.reason)
                attempt += 1
                await asyncio.sleep(delay)

    async def _run(
        self,
        method: str,
        model: str,
        context: CallContext,
        work: Callable[[CallRecord], Awaitable[T]],
    ) -> T | None:
        """Run ``work`` as one reported call; a failure is set on the port's context as its status (code,
        message, rich details) and the result is None, as ``Calls.run`` does."""
        record = CallRecord(method, model)
        failure: Failure | None = None
        try:
            result = await work(record)
            record.status = OK
        except GatewayError as exc:
            failure = self._calls.redactor.failure(exc.failure)
        except Exception as exc:  # a bug: the caller still gets a status, and the log the traceback
            log.exception("%s failed inside the gateway", method)
            failure = fail(Reason.GATEWAY_ERROR, f"gateway error: {type(exc).__name__}")
        finally:
            if failure is not None:
                record.status, record.reason = failure.code.name, failure.reason
                record.error_type = failure.error_type or failure.reason
                if failure.error_type or failure.reason.startswith("UPSTREAM_"):
                    record.upstream_error = failure.error_type or failure.reason
                record.request_id = failure.request_id
            self._calls.telemetry.finish(record)
        if failure is not None:
            status = to_status(failure, 0)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)
            return None
        return result


def model_list(policy: Policy, rules: Rules, listed: Iterable[Mapping[str, Any]] | None) -> pb.ListModelsResponse:
    """The caller's view: each alias whose model the caller may use, with that model id; then each
    model id it may use: every listed one without an allowlist, else the allowlist's (in the list's
    order, then those the list lacks, sorted). Each entry carries the upstream's own information on
    its model when ``listed`` has it (``None``: the upstream was not asked or did not answer)."""
    allowed = rules.models
    by_id = {m["id"]: m for m in listed or ()}
    data = [
        _info(alias, by_id.get(target), alias_for=target)
        for alias, target in policy.aliases.items()
        if allowed is None or target in allowed
    ]
    ids = list(by_id) if allowed is None else [i for i in by_id if i in allowed] + sorted(allowed - by_id.keys())
    data += [_info(i, by_id.get(i)) for i in ids]
    response = pb.ListModelsResponse(data=data, has_more=False)
    if data:
        response.first_id, response.last_id = data[0].id, data[-1].id
    return response


def _info(name: str, listed: Mapping[str, Any] | None, alias_for: str | None = None) -> pb.ModelInfo:
    """One entry: the upstream's object for the model (if any) under the name ``name``."""
    obj: dict[str, Any] = {"type": "model", "id": name, "display_name": alias_for or name, "created_at": EPOCH}
    if listed is not None:
        obj.update(listed)
        obj["id"] = name
    if alias_for is not None:
        obj["alias_for"] = alias_for
    try:
        return codec.from_json(obj, pb.ModelInfo())
    except ValueError:  # upstream values the proto cannot hold: the entry without them
        return codec.from_json({"type": "model", "id": name, "display_name": name, "created_at": EPOCH}, pb.ModelInfo())
