"""CountTokens and ListModels (server.call.lookups): the same answers on gRPC, Connect and the HTTP port."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from claude_gateway import codec
from claude_gateway.client import stream_request
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import json_format

from server.call.lookups import EPOCH, model_list
from server.limits.policy import Rules, parse
from simulator import HttpError, catalog
from tests.harness import ROOT, body, run, status_of
from tests.test_messages_api import ALPHA, BRAVO, POLICY, api_gateway, policy_files, sdk
from tests.test_polyglot import GRPCURL
from tests.test_web import SERVICE, marked_shell_block, post

SIM_IDS = sorted(catalog.MODELS)  # what the simulator lists (simulator/lookups.py)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_each_port_lists_the_callers_models_aliases_first_with_the_upstreams_information(tmp_path: Path) -> None:
    """alpha may use the alias chat and the ids claude-haiku-4-5 and claude-private-1: it sees the aliases
    whose model it may use (chat, fast) with their ids, then its ids (the upstream's first, in its order,
    then the one the upstream does not list); bravo, without an allowlist, every alias and every listed
    model. gRPC, Connect and the SDK on the HTTP port give the same list; an unknown token is refused."""

    async def go() -> None:
        async with api_gateway(**policy_files(tmp_path)) as (h, url):
            upstream = {m["id"]: m for m in [m.to_dict(mode="json") async for m in h.sdk.models.list()]}
            listed = await h.stub.ListModels(pb.ListModelsRequest(), metadata=bearer(ALPHA))
            data = [codec.to_json(m) for m in listed.data]
            assert [(m["id"], m.get("alias_for")) for m in data] == [
                ("chat", "claude-sonnet-4-6"),
                ("fast", "claude-haiku-4-5"),
                ("claude-haiku-4-5", None),  # the upstream lists by name
                ("claude-sonnet-4-6", None),
                ("claude-private-1", None),
            ]
            assert data[0] == {**upstream["claude-sonnet-4-6"], "id": "chat", "alias_for": "claude-sonnet-4-6"}
            assert data[2] == upstream["claude-haiku-4-5"]
            assert data[4] == {"type": "model", "id": "claude-private-1", "display_name": "claude-private-1",
                               "created_at": EPOCH}  # fmt: skip
            assert (listed.has_more, listed.first_id, listed.last_id) == (False, "chat", "claude-private-1")

            reply = await post(f"{url}{SERVICE}/ListModels", "application/json", b"{}", authorization=f"Bearer {ALPHA}")
            assert reply.status == 200
            connect = [codec.to_json(codec.from_json(m, pb.ModelInfo())) for m in json.loads(reply.body)["data"]]
            assert [m["id"] for m in connect] == [m["id"] for m in data]

            client = sdk(url, ALPHA, "httpx")
            try:
                assert [m.to_dict(mode="json") async for m in client.models.list()] == data
                assert (await client.models.retrieve("fast")).to_dict(mode="json") == data[1]
            finally:
                await client.close()

            everyone = await h.stub.ListModels(pb.ListModelsRequest(), metadata=bearer(BRAVO))
            assert [m.id for m in everyone.data] == ["chat", "fast", "big", *SIM_IDS]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await h.stub.ListModels(pb.ListModelsRequest(), metadata=bearer("tok-unknown"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(go)


def test_without_the_upstreams_list_the_policy_alone_is_listed(tmp_path: Path) -> None:
    """When GET /v1/models fails upstream, the caller still gets its aliases and allowed ids."""

    async def go() -> None:
        async with api_gateway(**policy_files(tmp_path)) as (h, _):
            h.sim.keys = {"another-key"}  # every upstream call is now refused with 401
            listed = await h.stub.ListModels(pb.ListModelsRequest(), metadata=bearer(ALPHA))
            assert [(m.id, m.display_name) for m in listed.data] == [
                ("chat", "claude-sonnet-4-6"),
                ("fast", "claude-haiku-4-5"),
                ("claude-haiku-4-5", "claude-haiku-4-5"),
                ("claude-private-1", "claude-private-1"),
                ("claude-sonnet-4-6", "claude-sonnet-4-6"),
            ]

    run(go)


def test_count_tokens_is_the_same_on_each_port_and_the_policy_applies(tmp_path: Path) -> None:
    """CountTokens on gRPC, Connect and the HTTP port: the upstream's count, for an alias its model id;
    a model outside the allowlist is refused before any upstream call; an upstream error is its status."""

    async def go() -> None:
        async with api_gateway(**policy_files(tmp_path)) as (h, url):
            params = body("one two three four", model="chat")
            request = pb.CountTokensRequest(params=stream_request(params).params)
            over_grpc = await h.stub.CountTokens(request, metadata=bearer(ALPHA))
            reply = await post(
                f"{url}{SERVICE}/CountTokens",
                "application/json",
                json_format.MessageToJson(request).encode(),
                authorization=f"Bearer {ALPHA}",
            )
            assert reply.status == 200, reply.body
            async with aiohttp.ClientSession() as session:
                count = {"model": "chat", "messages": params["messages"]}
                async with session.post(
                    f"{url}/v1/messages/count_tokens", json=count, headers={"x-api-key": ALPHA}
                ) as r:
                    over_http = await r.json()
                    assert r.headers["request-id"] == h.sim.requests[-1].request_id
            assert over_grpc.input_tokens == json.loads(reply.body)["inputTokens"] == over_http["input_tokens"] == 4
            assert [r.body["model"] for r in h.sim.requests] == ["claude-sonnet-4-6"] * 3

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                denied = pb.CountTokensRequest(params=stream_request(body(model="big")).params)
                await h.stub.CountTokens(denied, metadata=bearer(ALPHA))
            assert status_of(refused.value).error_info.reason == "MODEL_NOT_ALLOWED"  # type: ignore[union-attr]
            assert len(h.sim.requests) == 3

            h.sim.keys = {"another-key"}
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await h.stub.CountTokens(request, metadata=bearer(BRAVO))
            status = status_of(failed.value)
            assert (status.code, status.error_info.reason) == (  # type: ignore[union-attr]
                grpc.StatusCode.UNAUTHENTICATED,
                "AUTHENTICATION_ERROR",
            )

    run(go)


def test_count_tokens_retries_an_overloaded_upstream() -> None:
    """A 529 before the count is retried as a stream's opening is; a 400 is not, and is the caller's status."""

    async def go() -> None:
        async with api_gateway(auth_token="") as (h, _):
            h.sim.enqueue(HttpError(529, "overloaded_error", retry_after=0))
            request = pb.CountTokensRequest(params=stream_request(body()).params)
            assert (await h.stub.CountTokens(request)).input_tokens == 2
            assert [r.status for r in h.sim.requests] == [529, 200]
            h.sim.enqueue(HttpError(400, "invalid_request_error", "messages.0: no"))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await h.stub.CountTokens(request)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "messages.0: no" in (failed.value.details() or "")
            assert len(h.sim.requests) == 3

    run(go)


@pytest.mark.parametrize(
    ("rules", "listed", "ids"),
    [
        (Rules(), None, ["chat", "fast", "big"]),
        (Rules(models=frozenset({"b", "a"})), None, ["a", "b"]),
        (Rules(models=frozenset({"claude-haiku-4-5"})), [{"id": "x"}, {"id": "claude-haiku-4-5"}],
         ["fast", "claude-haiku-4-5"]),
        (Rules(), [{"id": "x"}, {"id": "y"}], ["chat", "fast", "big", "x", "y"]),
    ],
)  # fmt: skip
def test_the_model_list_is_the_policys_view(rules: Rules, listed: list[dict[str, Any]] | None, ids: list[str]) -> None:
    """model_list: the aliases the rules allow, then the ids (listed ones in order, then unlisted, sorted)."""
    response = model_list(parse(POLICY), rules, listed)
    assert [m.id for m in response.data] == ids
    assert (response.first_id, response.last_id) == (ids[0], ids[-1])


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is missing: run `make setup`")
@pytest.mark.parametrize("page", ["debugging.md", "api.md"])
def test_the_grpcurl_lines_for_count_tokens_and_list_models_work_as_written(tmp_path: Path, page: str) -> None:
    """The grpcurl block for CountTokens and ListModels of docs/debugging.md and of docs/api.md, run as
    written against a gateway."""
    assert GRPCURL is not None
    script = marked_shell_block(ROOT / "docs" / page, "grpcurl-lookups")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + '  "*": {}\n')

    async def go() -> str:
        async with api_gateway(auth_token="", policy_file=str(policy)) as (h, _):
            script_here = script.replace("127.0.0.1:50051", h.target).replace(".venv/bin/grpcurl", GRPCURL)
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", script_here, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            return out.decode()

    out = run(go)
    count, listed = (json.loads(doc) for doc in re.split(r"(?<=\})\n(?=\{)", out.strip()))
    assert count == {"input_tokens": 2}
    assert [(m["id"], m.get("alias_for")) for m in listed["data"]][:3] == [
        ("chat", "claude-sonnet-4-6"),
        ("fast", "claude-haiku-4-5"),
        ("big", "claude-opus-4-6"),
    ]
    assert [m["id"] for m in listed["data"]][3:] == SIM_IDS
