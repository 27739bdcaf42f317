"""The benchmark's table, printed for people and written as JSON beside it.

A ``Row`` is one figure with the target or baseline it is judged against and a verdict: ``pass``,
``FAIL``, ``info`` (no target), ``not implemented`` or ``error``. ``data`` keeps the numbers
behind the row for the JSON file; ``detail`` is printed under the table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    key: str  # e.g. "1b": scenario number, then a letter per row
    measure: str
    result: str
    target: str
    verdict: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def judged(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with precision to suit the size."""
    value = seconds * 1000
    if value != value:  # NaN: nothing measured
        return "n/a"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def pct(fraction: float) -> str:
    """A fraction as a percentage; "n/a" for NaN (nothing measured)."""
    return "n/a" if fraction != fraction else f"{fraction:.0%}"


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table, then each row's detail."""
    header = ("#", "measure", "result", "target / baseline", "verdict")
    cells = [header, *((r.key, r.measure, r.result, r.target, r.verdict) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = [f"[{r.key}] {r.detail}" for r in rows if r.detail]
    return "\n".join([*lines, "", *details])


def header(machine: dict[str, Any], notes: list[str]) -> str:
    """The lines above the table: the machine, then how the run was set up."""
    desc = ", ".join(f"{k} {v}" for k, v in machine.items())
    return "\n".join([f"machine: {desc}", *(f"note: {n}" for n in notes)])


def write_json(path: Path, rows: list[Row], machine: dict[str, Any], notes: list[str], plan: dict[str, Any]) -> None:
    """The same report as JSON: machine, notes, plan, and every row with its data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "notes": notes,
        "plan": plan,
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
