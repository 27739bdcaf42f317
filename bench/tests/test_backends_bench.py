"""Row 11's backends files are what the gateway reads: each layout parses, in its order, with its kinds."""

from __future__ import annotations

from pathlib import Path

from bench.backends import BEDROCK_MODEL, backends_files
from bench.workload import MODEL
from server.upstream.backends import load


def test_the_row_11_backends_files_parse_as_the_gateway_reads_them(tmp_path: Path) -> None:
    paths = backends_files(tmp_path, "http://127.0.0.1:9")
    layouts = {name: [(s.name, s.kind) for s in load(str(path))] for name, path in paths.items()}
    assert layouts == {
        "failover": [("anthropic", "anthropic"), ("bedrock", "bedrock")],
        "bedrock": [("bedrock", "bedrock")],
        "anthropic": [("anthropic", "anthropic")],
    }
    (bedrock,) = load(str(paths["bedrock"]))
    assert bedrock.model_id(MODEL) == BEDROCK_MODEL
