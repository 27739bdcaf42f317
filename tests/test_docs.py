"""The docs match the code (every setting, every status mapping), and the README leads to every page of them.

README.md is the front door; docs/*.md is the manual. Each table is read from the page that holds it.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from server.config import Settings, env_name, flag_name
from server.reasons import Reason
from server.upstream.failures import API_ERRORS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SETTINGS = DOCS / "settings.md"
API = DOCS / "api.md"
# A Markdown link or image: [text](target) or ![alt](target); the target up to its first space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def table_rows(heading_row: str, page: Path) -> list[list[str]]:
    """The cells of the Markdown table on ``page`` whose header row starts with ``heading_row``."""
    text = page.read_text()
    lines = text[text.index(heading_row) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_settings_table_lists_every_setting_with_its_flag_and_default() -> None:
    """Each Settings field appears in docs/settings.md's table with its flag and the default the code uses."""
    rows = {row[0]: row for row in table_rows("| variable | flag | default | meaning |", SETTINGS)}
    for f in fields(Settings):
        name = env_name(f.name)
        assert name in rows, f"{name} is missing from the settings table"
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
    assert {n for n in rows if n.startswith("GATEWAY_")} <= settings, "docs/settings.md lists a setting the code lacks"


def test_gateway_failure_table_is_the_reason_table() -> None:
    """docs/api.md's table of the gateway's own failures is exactly server.reasons, with the same codes."""
    rows = {row[0]: row[1] for row in table_rows("| reason (ErrorInfo) | gRPC code | when |", API)}
    assert rows == {reason.name: reason.code.name for reason in Reason}


def test_status_table_matches_the_error_mapping() -> None:
    """Each API error type maps to the gRPC code docs/api.md's status table gives."""
    rows = {row[0]: row[2] for row in table_rows("| API error type | HTTP | gRPC code |", API)}
    for error_type, code in API_ERRORS.items():
        assert re.match(code.name + r"\b", rows[error_type]), error_type


def test_the_readme_first_run_settings_agree_with_the_settings_table() -> None:
    """Each setting the README names for a first run is in docs/settings.md with the same default."""
    full = {row[0]: row[2] for row in table_rows("| variable | flag | default | meaning |", SETTINGS)}
    short = table_rows("| variable | default | for |", README)
    assert len(short) >= 5
    for name, default, _ in short:
        assert name in full, f"the README names {name}, which docs/settings.md lacks"
        assert default == full[name].replace("(none)", ""), name


def test_the_readme_short_status_table_names_only_real_reasons() -> None:
    """Every reason and code in the README's short status table is one the gateway really gives."""
    reasons = {reason.name for reason in Reason} | {error_type.upper() for error_type in API_ERRORS}
    codes = {reason.code.name for reason in Reason} | {code.name for code in API_ERRORS.values()}
    rows = table_rows("| what happened | gRPC code | ErrorInfo reason |", README)
    assert len(rows) >= 5
    for _, code_cell, reason_cell in rows:
        named = re.findall(r"\b[A-Z][A-Z_]{3,}\b", code_cell)
        assert named, code_cell
        assert set(named) <= codes, code_cell
        for reason in re.findall(r"`([A-Z_]+)`", reason_cell):
            assert reason in reasons, reason


def links(page: Path) -> list[str]:
    """The targets of the Markdown links and images on ``page``, outside code blocks."""
    prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return LINK.findall(prose)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    """A reader finds every page of the manual from the README."""
    linked = {(ROOT / target.split("#")[0]).resolve() for target in links(README)}
    assert PAGES, "docs/ has no pages"
    for page in PAGES:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Every relative link of the README and the docs pages names a file or folder that exists, and a heading
    there when it names one."""
    checked = 0
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            if target.startswith("#"):
                assert target[1:] in anchors(page), f"{page.relative_to(ROOT)} links {target}: no such heading"
            continue  # a URL, or an anchor on the same page
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        assert ROOT in path.parents, f"{page.relative_to(ROOT)} links {target}, outside the repository"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.relative_to(ROOT)} links {target}: no such heading"
        checked += 1
    assert checked or page.name == "debugging.md", f"{page.relative_to(ROOT)} links nothing"


def test_the_readme_stays_a_front_door() -> None:
    """The README stays short: what does not fit in about 250 lines belongs on a page under docs/."""
    assert len(README.read_text().splitlines()) <= 260
