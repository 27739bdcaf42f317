"""Recorded streams to replay: the project's own (always), and the shared corpus beside the clone.

The shared corpus (``../shared/fixtures/anthropic-sse``) is other projects' data, read where it lies.
Its replays run whenever it is there and are required when ``CI`` is set; elsewhere a missing corpus
shows as one skipped case that says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
OWN = HERE / "fixtures" / "sse"
SHARED = HERE.parents[1] / "shared" / "fixtures" / "anthropic-sse"
SHARED_SDK = HERE.parents[1] / "shared" / "fixtures" / "sdk-streams"


def _shared(folder: Path, pattern: str = "*.sse") -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def is_complete(path: Path) -> bool:
    return b"message_stop" in path.read_bytes()


def sdk_streams() -> list[Any]:
    """pytest params of every body of the official SDKs' stream corpus (``../shared/fixtures/sdk-streams``),
    with its index entry; required in CI, one skipped case outside it when the corpus is not there."""
    index = SHARED_SDK / "index.json"
    if index.is_file():
        entries = json.loads(index.read_text())["fixtures"]
        return [pytest.param(SHARED_SDK / e["file"], e, id=e["name"]) for e in entries]
    if os.environ.get("CI"):
        raise FileNotFoundError(f"CI needs the SDK stream corpus at {SHARED_SDK}")
    reason = f"the SDK stream corpus is not beside this clone ({SHARED_SDK}): its replays are skipped"
    return [pytest.param(None, None, id="sdk-streams", marks=pytest.mark.skip(reason=reason))]


def shared_streams() -> list[tuple[Path, bool]]:
    """Every body of the shared corpus (``../shared/fixtures/anthropic-sse``) with whether it is a beta one,
    as the SDK corpus's index says of the same bytes; required in CI, a skip that says why elsewhere."""
    paths = _shared(SHARED)
    if not paths:
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI needs the shared corpus at {SHARED}")
        pytest.skip(f"the shared corpus is not beside this clone ({SHARED})")
    index = SHARED_SDK / "index.json"
    entries = json.loads(index.read_text())["fixtures"] if index.is_file() else []
    beta = {str(e["in_shared_corpus"]).split(" ")[0] for e in entries if e["api"] == "beta" and e["in_shared_corpus"]}
    return [(p, p.name in beta) for p in paths]


def streams(*, complete: bool) -> list[Any]:
    """pytest params of every recorded stream that ends in message_stop (``complete``) or does not."""
    params: list[Any] = [pytest.param(p, id=p.stem) for p in sorted(OWN.glob("*.sse")) if is_complete(p) == complete]
    shared = [p for p in _shared(SHARED) if is_complete(p) == complete]
    if shared:
        params += [pytest.param(p, id="shared-" + p.stem) for p in shared]
    elif not os.environ.get("CI"):
        reason = f"the shared corpus is not beside this clone ({SHARED}): its replays are skipped"
        params.append(pytest.param(None, id="shared-corpus", marks=pytest.mark.skip(reason=reason)))
    return params
