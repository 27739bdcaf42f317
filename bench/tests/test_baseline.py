"""Row 13's parts: its commits are this repository's history in order, each one's server imports here, and the
row's ratios are what its rounds measured."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from bench.baseline import (
    AGAIN,
    BUDGET,
    ENDS,
    NOW,
    QUIET,
    STEPS,
    _cancel_row,
    _extract,
    _known,
    _Measure,
    _row,
    cancel_budget,
)
from bench.processes import ROOT
from bench.report import Row

COMMITS = [commit for _, commit, _ in STEPS if commit is not None]
needs_history = pytest.mark.skipif(
    not all(_known(commit) for commit in COMMITS), reason="this clone lacks the commits of row 13 (a shallow clone?)"
)


@needs_history
def test_steps_are_this_branchs_history_in_the_order_they_landed() -> None:
    for earlier, later in itertools.pairwise([*COMMITS, "HEAD"]):
        found = subprocess.run(["git", "merge-base", "--is-ancestor", earlier, later], cwd=ROOT, check=False)
        assert found.returncode == 0, f"{earlier} is not an ancestor of {later}"


@needs_history
@pytest.mark.parametrize("commit", COMMITS)
def test_each_steps_server_is_read_out_of_history_and_imports_here(commit: str, tmp_path: Path) -> None:
    _extract(commit, tmp_path)
    assert (tmp_path / "server" / "__main__.py").is_file()
    # As the row runs it: that commit's server and client ahead of the code as it stands.
    probe = "import server, server.app, claude_gateway; print(server.__file__); print(claude_gateway.__file__)"
    env = {"PYTHONPATH": f"{tmp_path}:{tmp_path / 'client'}", "PATH": "/usr/bin:/bin"}
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.split() == [str(tmp_path / "server" / "__init__.py"),
                                    str(tmp_path / "client" / "claude_gateway" / "__init__.py")]  # fmt: skip


def _measure(key: str) -> _Measure:
    return _Measure(key, "what", "per call", lambda target: [], lambda run: 0.0)


def test_row_judges_the_restructuring_and_gives_each_step_against_the_one_before() -> None:
    # Three rounds: per step, seconds per call; "restructured" 1.02x "before", each later step 1.01x the one before.
    values: dict[str, list[float]] = {}
    for i, (name, _, _) in enumerate(STEPS):
        factor = 1.0 if i == 0 else 1.02 * 1.01 ** (i - 1)
        values[name] = [0.002 * factor * round_ for round_ in (1.0, 1.1, 0.9)]
    row = _row(_measure("13a"), values, [])
    assert isinstance(row, Row)
    assert row.verdict == "pass"
    assert row.data["restructured_ratio"] == pytest.approx(1.02)
    assert row.data["now_ratio"] == pytest.approx(1.02 * 1.01 ** (len(STEPS) - 2))
    assert list(row.data["steps"]) == [name for name, _, _ in STEPS[1:]]
    assert all(ratio == pytest.approx(1.01) for ratio in list(row.data["steps"].values())[1:])
    assert "each step against the one before it" in row.detail
    for _, _, brought in STEPS[1:]:
        assert brought in row.detail
    assert row.data["without_call_line"] == {}  # not measured: not given


def test_row_gives_the_call_lines_share_where_it_was_measured() -> None:
    values = {name: [0.002, 0.002] for name, _, _ in STEPS}
    values[NOW] = [0.0022, 0.0022]
    values[QUIET["before"]] = [0.0019, 0.0019]
    values[QUIET[NOW]] = [0.0020, 0.0020]
    quiet = _row(_measure("13a"), values, []).data["without_call_line"]
    assert quiet["now"] == pytest.approx(0.0020 / 0.0019)
    assert quiet["line_before"] == pytest.approx(0.002 / 0.0019)
    assert quiet["line_now"] == pytest.approx(0.0022 / 0.0020)


def test_row_fails_a_restructuring_past_the_budget_or_with_errors() -> None:
    values = {name: [0.002, 0.002] for name in ENDS}
    values["restructured"] = [0.002 * (BUDGET + 0.01)] * 2
    assert _row(_measure("13b"), values, []).verdict == "FAIL"
    values["restructured"] = [0.002, 0.002]
    assert _row(_measure("13b"), values, []).verdict == "pass"
    assert _row(_measure("13b"), values, ["UNAVAILABLE"]).verdict == "FAIL"
    # Only the ends measured: no chain of steps, the later ones named as 13a's.
    assert "every later step of 13a" in _row(_measure("13b"), values, []).detail


def test_cancel_row_judges_the_p99_against_5_percent_or_the_same_codes_spread_whichever_is_wider() -> None:
    before = [i * 1e-5 for i in range(1, 1001)]

    def gaps(restructured: float, again: float) -> dict[str, list[float]]:
        scaled = {AGAIN: again, "restructured": restructured}
        return {"before": before, NOW: before} | {name: [g * by for g in before] for name, by in scaled.items()}

    assert cancel_budget(1.0) == BUDGET
    assert cancel_budget(1.2) == pytest.approx(1.2)
    assert cancel_budget(1 / 1.2) == pytest.approx(1.2)  # the same code moved as far the other way
    row = _cancel_row(gaps(1.10, 1.0), [], 5)
    assert row.verdict == "FAIL"  # 10% slower, where the same code moved by nothing
    assert row.data["p99_ratio"] == pytest.approx(1.10)
    assert row.data["same_code_p99_ratio"] == pytest.approx(1.0)
    assert _cancel_row(gaps(1.10, 1.12), [], 5).verdict == "pass"  # within what the same code moved
    assert _cancel_row(gaps(1.10, 1 / 1.12), [], 5).verdict == "pass"
    assert _cancel_row(gaps(1.04, 1.0), [], 5).verdict == "pass"
    assert _cancel_row(gaps(1.04, 1.0), ["1 never closed"], 5).verdict == "FAIL"
    assert "budget in this run 1.12x" in _cancel_row(gaps(1.10, 1.12), [], 5).detail
