"""server/ keeps its layering: the import-linter contracts in pyproject.toml hold, and no module imports
itself through others (imports under TYPE_CHECKING are types, not dependencies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_the_layer_and_port_contracts_hold() -> None:
    """lint-imports passes: each layer imports only those below it; the gRPC and HTTP ports stay apart.

    Run as its own process: in this one, its logging set-up (``dictConfig``) would disable every logger
    that exists, the gateway's call log included, for the tests that follow."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # the contracts live in pyproject.toml


def test_no_module_of_the_server_is_part_of_an_import_cycle() -> None:
    """For every import a -> b inside server/, b does not lead back to a."""
    graph = grimp.build_graph("server", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append((module, *back))
    assert cycles == []
