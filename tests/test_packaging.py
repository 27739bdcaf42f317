"""The Python client installs on its own: stubs and library, none of the server's dependencies.

It depends on the anthropic SDK for its types and stream accumulation (events and messages are the
SDK's own objects), never on the server or the server-only gRPC packages."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_client_distribution_declares_no_server_dependency() -> None:
    """claude-gateway-client depends on grpc, protobuf and the SDK's types, never on the server."""
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]]
    assert not {"claude-grpc-gateway", "grpcio-health-checking", "grpcio-reflection"} & set(names)
    assert "anthropic" in names


def test_client_library_imports_without_the_server() -> None:
    """Importing the client library, its CLI and the stubs loads nothing of the server package."""
    code = (
        "import sys, claude_gateway, claude_gateway.cli, claude_gateway.v1.chat_pb2_grpc; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'server']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "client", check=True)


def test_client_wheel_carries_the_stubs_and_type_information(tmp_path: Path) -> None:
    """The built wheel holds the generated stubs, their .pyi files and py.typed under claude_gateway/."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT / "client")],
        check=True,
    )
    (wheel,) = tmp_path.glob("claude_gateway_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("chat_pb2.py", "chat_pb2_grpc.py", "chat_pb2.pyi", "chat_pb2_grpc.pyi"):
        assert f"claude_gateway/v1/{name}" in names
    assert {"claude_gateway/py.typed", "claude_gateway/client.py", "claude_gateway/streaming.py"} <= names
    assert not [n for n in names if n.startswith(("server/", "client/"))]


def test_the_gateway_imports_none_of_its_tooling() -> None:
    """Every module of the server package loads without the simulator, the benchmark or the tests."""
    code = (
        "import importlib, pkgutil, sys, server; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(server.__path__, 'server.')]; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('simulator', 'bench', 'tests')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_gateway_wheel_ships_its_data_and_depends_on_the_client_for_the_wire(tmp_path: Path) -> None:
    """The gateway wheel holds its page, not the wire package: that is the client's, pinned."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("claude_grpc_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"server/reporting/prices.py", "server/reporting/usage.py", "server/page/chat.js"} <= names
    assert not [n for n in names if n.startswith("claude_gateway/")]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    version = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]["version"]
    assert f"Requires-Dist: claude-gateway-client=={version}" in zipfile.ZipFile(wheel).read(metadata).decode()
