"""``python -m bench.plot [JSON] [SVG]``: the capacity rows of a bench run as one SVG chart.

Reads ``bench/results/latest.json`` (or JSON) and writes ``bench/results/capacity.svg`` (or SVG):
relay latency p50 and p99 (left axis, ms) and the gateway's CPU (right axis, % of its core)
against the number of streams. Plain SVG, no plotting library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.processes import ROOT

WIDTH, HEIGHT, MARGIN = 640, 360, 60
SERIES = (("p50", "#1f77b4"), ("p99", "#d62728"))
CPU_COLOR = "#2ca02c"


def capacity_points(run: dict[str, Any]) -> list[tuple[int, float, float, float]]:
    """(streams, p50 ms, p99 ms, gateway CPU %) for each capacity row of a bench run."""
    points = []
    for row in run["rows"]:
        data = row.get("data", {})
        if row["key"].startswith("1") and "latency_s" in data:
            latency = data["latency_s"]
            cpu = data["cpu"]["gateway"]["util"] * 100
            points.append((data["streams"], latency["p50"] * 1e3, latency["p99"] * 1e3, cpu))
    return sorted(points)


def svg(points: list[tuple[int, float, float, float]], title: str) -> str:
    """The chart as SVG text."""
    x_max = max(p[0] for p in points) * 1.1
    y_max = max(50.0, max(p[2] for p in points) * 1.1)  # the 50 ms target stays in view
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def x(streams: float) -> float:
        return MARGIN + streams / x_max * plot_w

    def y(value: float, top: float) -> float:
        return HEIGHT - MARGIN - value / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{WIDTH - MARGIN}" y1="{MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{y(50, y_max):.1f}" x2="{WIDTH - MARGIN}" y2="{y(50, y_max):.1f}" '
        'stroke="#999" stroke-dasharray="4 4"/>',
        f'<text x="{WIDTH - MARGIN - 4}" y="{y(50, y_max) - 4:.1f}" text-anchor="end" fill="#666">50 ms target</text>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 20}" text-anchor="middle">streams x 50 deltas/s</text>',
        f'<text x="16" y="{HEIGHT / 2}" transform="rotate(-90 16 {HEIGHT / 2})" text-anchor="middle">'
        "relay latency (ms)</text>",
        f'<text x="{WIDTH - 16}" y="{HEIGHT / 2}" transform="rotate(90 {WIDTH - 16} {HEIGHT / 2})" '
        f'text-anchor="middle" fill="{CPU_COLOR}">gateway CPU (% of one core)</text>',
    ]
    for streams, *_ in points:
        parts.append(f'<text x="{x(streams):.1f}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{streams}</text>')
    for tick in range(0, int(y_max) + 1, max(10, int(y_max) // 5 // 10 * 10)):
        parts.append(f'<text x="{MARGIN - 6}" y="{y(tick, y_max) + 4:.1f}" text-anchor="end">{tick}</text>')
    for tick in range(0, 101, 25):
        parts.append(f'<text x="{WIDTH - MARGIN + 6}" y="{y(tick, 100) + 4:.1f}" fill="{CPU_COLOR}">{tick}</text>')
    lines = [(name, color, [(x(p[0]), y(p[i + 1], y_max)) for p in points]) for i, (name, color) in enumerate(SERIES)]
    lines.append(("gateway CPU", CPU_COLOR, [(x(p[0]), y(p[3], 100)) for p in points]))
    for index, (name, color, coords) in enumerate(lines):
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
        dash = ' stroke-dasharray="6 3"' if name == "gateway CPU" else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        parts.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in coords)
        parts.append(f'<text x="{MARGIN + 10}" y="{MARGIN + 24 + 16 * index}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else ROOT / "bench" / "results" / "latest.json"
    target = Path(argv[1]) if len(argv) > 1 else source.with_name("capacity.svg")
    run = json.loads(source.read_text())
    points = capacity_points(run)
    if not points:
        raise SystemExit(f"{source} has no capacity rows (scenario 1)")
    machine = run.get("machine", {})
    title = f"claude-grpc-gateway relay latency, {machine.get('cores', '?')} cores, {run.get('generated_at', '')}"
    target.write_text(svg(points, title))
    print(f"written: {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
