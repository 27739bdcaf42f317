"""The README's tables match the code: every setting, every status mapping."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from server.config import Settings, env_name, flag_name
from server.reasons import Reason
from server.upstream.failures import API_ERRORS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def table_rows(heading_row: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``heading_row``."""
    lines = README[README.index(heading_row) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_settings_table_lists_every_setting_with_its_flag_and_default() -> None:
    """Each Settings field appears in the README's settings table with its flag and the default the code uses."""
    rows = {row[0]: row for row in table_rows("| variable | flag | default | meaning |")}
    for f in fields(Settings):
        name = env_name(f.name)
        assert name in rows, f"{name} is missing from the README settings table"
        default: str | int
        if isinstance(f.default, bool):
            default = str(f.default).lower()
        elif isinstance(f.default, str | int):
            default = f.default
        else:
            default = f"{f.default:g}"
        assert rows[name][1] == flag_name(f.name), name
        assert rows[name][2] == str(default), name
    settings = {env_name(f.name) for f in fields(Settings)}
    assert {n for n in rows if n.startswith("GATEWAY_")} <= settings, "the README lists a setting the code lacks"


def test_gateway_failure_table_is_the_reason_table() -> None:
    """The README table of the gateway's own failures is exactly server.reasons, with the same codes."""
    rows = {row[0]: row[1] for row in table_rows("| reason (ErrorInfo) | gRPC code | when |")}
    assert rows == {reason.name: reason.code.name for reason in Reason}


def test_status_table_matches_the_error_mapping() -> None:
    """Each API error type maps to the gRPC code the README's status table gives."""
    rows = {row[0]: row[2] for row in table_rows("| API error type | HTTP | gRPC code |")}
    for error_type, code in API_ERRORS.items():
        assert re.match(code.name + r"\b", rows[error_type]), error_type
