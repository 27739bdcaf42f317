"""What an operator sees of a backends file's pool: the log line, the metrics per backend and key, the cost
by the model that served (and a backend's own prices)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from server.reporting.prices import load
from server.reporting.usage import Usage
from simulator import SpendLimit
from tests.harness import run
from tests.pools import ANTHROPIC_KEYS, MODEL, MODEL_IDS, VERTEX_TOKEN, key_id, pools
from tests.test_observability import scrape, value


def test_metrics_count_attempts_failovers_dead_keys_and_show_headroom_and_circuits(tmp_path: Path) -> None:
    """A 529 failover and a spend limit, then a scrape: attempts by outcome, failovers by reason, the dead
    key (counted, and shown dead), headroom from the served key's headers, the overloaded backend's
    circuit open, and the GenAI histograms labelled with the provider and model that served."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock"), keys=2, metrics_listen="127.0.0.1:0") as p:
            first = await p.call("stream", "first")
            mine = next(k for k in ANTHROPIC_KEYS if key_id(k) == first.report["key_id"])
            other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
            p.sims["anthropic"].enqueue(SpendLimit(), key=mine)
            spent = await p.call("stream", "spend")
            assert spent.served_by("anthropic"), spent
            over = await p.call("stream", "over [[sim@anthropic:http_error 529]]")
            assert over.served_by("bedrock"), over
            samples = await scrape(p)
            anthropic, mine_id, other_id = "anthropic", key_id(mine), key_id(other)
            assert value(samples, "gateway_upstream_attempts_total", backend=anthropic, key_id=mine_id) == 2
            assert value(samples, "gateway_upstream_attempts_total", key_id=mine_id, outcome="spend_limit") == 1
            assert value(samples, "gateway_upstream_attempts_total", key_id=other_id, outcome="served") == 1
            assert value(samples, "gateway_upstream_attempts_total", key_id=other_id, outcome="overloaded") == 1
            assert value(samples, "gateway_upstream_attempts_total", backend="bedrock", outcome="served") == 1
            assert value(samples, "gateway_failovers_total", reason="spend_limit") == 1
            assert value(samples, "gateway_failovers_total", backend=anthropic, reason="overloaded") == 1
            assert value(samples, "gateway_keys_marked_dead_total", key_id=mine_id, reason="spend_limit") == 1
            assert value(samples, "gateway_key_dead", key_id=mine_id) == 1
            assert value(samples, "gateway_key_dead", key_id=other_id) == 0
            assert value(samples, "gateway_key_headroom", key_id=other_id, family="sonnet", bucket="requests") > 0
            assert value(samples, "gateway_backend_circuit_open", backend=anthropic) == 1
            assert value(samples, "gateway_backend_circuit_open", backend="bedrock") == 0
            bedrock = {"gen_ai_provider_name": "aws.bedrock", "gen_ai_response_model": MODEL_IDS["bedrock"]}
            assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", **bedrock) == 1
            assert (
                value(samples, "gen_ai_server_time_to_first_token_seconds_count", gen_ai_provider_name=anthropic) == 2
            )
            text = "\n".join(f"{n} {sorted(ls)}" for n, ls in samples)
            assert mine not in text
            assert other not in text

    run(go)


def test_the_log_line_names_model_backend_key_and_each_failover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The call's log line names the model asked for and the one that served, the backend and key id that
    served, the call's cost, and each attempt that failed over (backend, key id, verdict, error); never a key."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "vertex")) as p:
            with caplog.at_level(logging.INFO, logger="server.call"):
                plain = await p.call("stream", "logged")
                moved = await p.call("stream", "logged [[sim@anthropic:http_error 500]]")
            assert plain.served_by("anthropic"), plain
            assert moved.served_by("vertex"), moved
        texts = [r.getMessage() for r in caplog.records if r.name == "server.call" and r.getMessage().startswith("{")]
        first, second = (json.loads(t) for t in texts[-2:])
        assert (first["model"], first["response_model"]) == (MODEL, MODEL)
        assert (first["backend"], first["key_id"], first["failovers"]) == ("anthropic", key_id(ANTHROPIC_KEYS[0]), [])
        assert first["cost_usd"] > 0
        assert (second["model"], second["response_model"]) == (MODEL, MODEL_IDS["vertex"])
        assert (second["backend"], second["key_id"]) == ("vertex", key_id(VERTEX_TOKEN))  # its token file
        assert second["failovers"] == [
            {"backend": "anthropic", "key_id": key_id(ANTHROPIC_KEYS[0]), "reason": "unavailable", "error": "api_error"}
        ]
        assert second["attempts"] == 2
        assert second["cost_usd"] == moved.report["cost_usd"] > 0
        assert not any(ANTHROPIC_KEYS[0] in t or VERTEX_TOKEN in t for t in texts)

    run(go)


def test_a_call_is_priced_by_the_model_that_served_and_the_backends_own_prices(tmp_path: Path) -> None:
    """Bedrock's model id has no price of its own: the call is priced as the model asked for; a backend's
    own price table (its `prices_file`) prices the calls it served."""
    table = tmp_path / "vertex-prices.toml"
    table.write_text(
        f"[models.{MODEL}]\ninput = 100\noutput = 100\ncache_write_5m = 0\ncache_write_1h = 0\ncache_read = 0\n"
    )

    async def go() -> None:
        catalog = load()
        async with pools(tmp_path, ("bedrock", "vertex"), options={"vertex": {"prices_file": str(table)}}) as p:
            on_bedrock = await p.call("stream", "priced")
            assert on_bedrock.served_by("bedrock"), on_bedrock
            assert catalog.cost(MODEL_IDS["bedrock"], Usage(on_bedrock.report["usage"])) is None
            expected = catalog.cost(MODEL, Usage(on_bedrock.report["usage"]))
            assert expected
            assert on_bedrock.report["cost_usd"] == pytest.approx(expected)
            on_vertex = await p.call("stream", "priced [[sim@bedrock:http_error 500]]")
            assert on_vertex.served_by("vertex"), on_vertex
            usage = on_vertex.report["usage"]
            assert on_vertex.report["cost_usd"] == pytest.approx(
                (usage["input_tokens"] + usage["output_tokens"]) * 100 / 1e6
            )

    run(go)
