"""The proto generates cleanly for every language protoc targets here, with no flag beyond the proto path,
and the generated code compiles where the machine has the toolchain: C++ (g++); Java (Maven with Debian's
protobuf-java, grpc-java and their dependencies, no network; the program of docs/clients.md then streams a
reply through a real gateway); Go (the committed module gen/go, required by a new module in module mode
with Debian's protobuf-go and grpc-go, no network; docs/clients.md's program streams through a gateway).

protoc here is Debian's (protobuf-compiler 3.21, matching libprotobuf-java and libprotobuf-dev);
grpcio-tools' protoc only has the Python generators. `.ci/run` installs the packages; outside CI a
missing tool skips its test and says which package brings it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.harness import gateway, run

ROOT = Path(__file__).resolve().parents[1]
PROTO = "claude_gateway/v1/chat.proto"
EXAMPLES = ROOT / "client" / "examples"
GOCODE = Path("/usr/share/gocode")
GO_MODULE = "claude-grpc-gateway/gen/go"
GO_PACKAGE = f"{GO_MODULE}/claude_gateway/v1"
# docs/clients.md's recipe for a Go module that uses the gateway's (GATEWAY_REPO: a clone of this repository).
GO_RECIPE = """\
go mod init example.com/stream
cp "$GATEWAY_REPO/client/examples/go/main.go" .
go mod edit -require=claude-grpc-gateway/gen/go@v0.0.0 -replace=claude-grpc-gateway/gen/go="$GATEWAY_REPO/gen/go"
go mod tidy
go build -o stream .
"""
JAVA_PACKAGES = " ".join(
    [
        "protobuf-compiler",
        "libprotobuf-java",
        "libgrpc-java",
        "protobuf-compiler-grpc-java-plugin",
        "libgeronimo-annotation-1.3-spec-java",
        "maven",
        "libmaven-compiler-plugin-java",
        "libmaven-resources-plugin-java",
        "libexec-maven-plugin-java",
        "libbuild-helper-maven-plugin-java",
        "libnetty-java",
        "libperfmark-java",
        "libgoogle-gson-java",
        "libgoogle-common-protos-java",
        "libanimal-sniffer-java",
        "junit5",
    ]
)
MAVEN_REPO = Path("/usr/share/maven-repo")
# What the build resolves there that only the packages past libgrpc-java above bring.
MAVEN_REPO_NEEDS = [
    MAVEN_REPO / "org/codehaus/mojo/exec-maven-plugin/3.1.0",
    MAVEN_REPO / "org/codehaus/mojo/build-helper-maven-plugin/3.3.0",
    MAVEN_REPO / "org/apache/maven/plugins/maven-compiler-plugin/3.10.1",
    MAVEN_REPO / "io/netty/netty-codec-http2",
    MAVEN_REPO / "com/google/api/grpc/proto-google-common-protos",
    MAVEN_REPO / "org/junit/junit-bom",
]
# docs/clients.md's command that builds and runs the Java program with Debian's packages, in client/examples/java.
JAVA_RUN = "mvn -q -s debian-settings.xml compile exec:exec"
GO_PACKAGES = "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev"


def need(*tools: str | Path, package: str) -> None:
    """Skip (fail under CI) unless every tool is on PATH or every path exists."""
    missing = [str(t) for t in tools if not (shutil.which(t) if isinstance(t, str) else t.exists())]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install {package}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def protoc(out: Path, *flags: str) -> None:
    """Debian's protoc on the proto, with only the proto path and the output flags."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["protoc", "-I", str(ROOT / "protos"), *flags, PROTO], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    ("language", "path", "says"),
    [
        ("java", "com/claude_gateway/v1/MessageStreamEvent.java", "package com.claude_gateway.v1;"),
        ("kotlin", "com/claude_gateway/v1/MessageStreamEventKt.kt", "package com.claude_gateway.v1"),
        ("csharp", "Chat.cs", "namespace ClaudeGateway.V1"),
        ("cpp", "claude_gateway/v1/chat.pb.h", "namespace claude_gateway"),
        ("objc", "claude_gateway/v1/Chat.pbobjc.h", "@interface CGXMessageStreamEvent"),
        ("php", "ClaudeGateway/V1/MessageStreamEvent.php", "namespace ClaudeGateway\\V1;"),
        ("ruby", "claude_gateway/v1/chat_pb.rb", "module ClaudeGateway\n  module V1\n"),
    ],
)
def test_protoc_generates_each_language_in_its_own_package(tmp_path: Path, language: str, path: str, says: str) -> None:
    """protoc --LANG_out needs no option flag, and the code lands in the package the proto's options name."""
    need("protoc", package="protobuf-compiler")
    protoc(tmp_path, f"--{language}_out={tmp_path}")
    assert says in (tmp_path / path).read_text()


def test_generated_cpp_compiles_and_names_the_auto_arm_auto_underscore(tmp_path: Path) -> None:
    """The C++ code compiles with g++; the ToolChoice arm `auto` is `auto_()` there, protoc's escape of the keyword."""
    need(
        "protoc", "g++", Path("/usr/include/google/protobuf/message.h"), package="protobuf-compiler g++ libprotobuf-dev"
    )
    protoc(tmp_path, f"--cpp_out={tmp_path}")
    assert (
        "const ::claude_gateway::v1::ToolChoiceOptions& auto_() const;"
        in (tmp_path / "claude_gateway/v1/chat.pb.h").read_text()
    )
    subprocess.run(
        ["g++", "-std=c++17", "-c", "-I", str(tmp_path), str(tmp_path / "claude_gateway/v1/chat.pb.cc"),
         "-o", str(tmp_path / "chat.o")],
        check=True, timeout=300,
    )  # fmt: skip


def test_the_java_program_builds_with_maven_from_debian_packages_and_streams_through_the_gateway() -> None:
    """docs/clients.md's Maven build, run as written with no network (`mvn -q -s debian-settings.xml compile
    exec:exec` in client/examples/java, every artifact from Debian's /usr/share/maven-repo): protoc makes the
    messages (a file each) and the grpc-java stub, javac compiles them with Stream.java, and the program streams
    a reply through a gateway. The test adds only a fresh local repository (-Dmaven.repo.local)."""
    need("protoc", "javac", "mvn", Path("/usr/bin/grpc_java_plugin"), *MAVEN_REPO_NEEDS, package=JAVA_PACKAGES)
    project = EXAMPLES / "java"
    shutil.rmtree(project / "target", ignore_errors=True)
    with tempfile.TemporaryDirectory() as repository:
        argv = [*shlex.split(JAVA_RUN), f"-Dmaven.repo.local={repository}"]
        out, text = run_through_a_gateway(argv, cwd=project, timeout=900)
    stubs = project / "target" / "generated-sources" / "protobuf" / "com" / "claude_gateway" / "v1"
    assert {"MessageStreamEvent.java", "ChatServiceGrpc.java"} <= {p.name for p in stubs.iterdir()}
    assert (project / "target" / "classes" / "Stream.class").is_file()
    assert text.startswith("Hello the simulator")
    # Maven's console ends its output with a terminal reset (ESC [0m), even with -q: not the program's.
    assert out.removesuffix("\x1b[0m") == f"{text}\nstop_reason=end_turn output_tokens={len(text.split())}\n"


def run_through_a_gateway(argv: list[str], cwd: Path, timeout: float = 60) -> tuple[str, str]:
    """Run ``argv`` with GATEWAY_TARGET naming a simulator-backed gateway; its stdout, and the text of the reply
    the gateway gives the examples' request (claude-sonnet-4-6, max_tokens 1024, "Hello")."""

    async def go() -> tuple[str, str]:
        async with gateway() as h:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env={**os.environ, "GATEWAY_TARGET": h.target},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
            assert proc.returncode == 0, (out.decode(), err.decode())
            reference = await h.events(
                {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]}
            )
        text = "".join(e["delta"]["text"] for e in reference if e["type"] == "content_block_delta")
        return out.decode(), text

    return run(go)


def need_go() -> None:
    need(
        "protoc",
        "go",
        "protoc-gen-go",
        "protoc-gen-go-grpc",
        GOCODE / "src/google.golang.org/grpc",
        package=GO_PACKAGES,
    )


def test_the_committed_go_module_is_what_the_proto_generates(tmp_path: Path) -> None:
    """gen/go holds exactly what `make go-protos` generates: the stubs at their go_package path in the module."""
    need_go()
    protoc(tmp_path, f"--go_out={tmp_path}", f"--go-grpc_out={tmp_path}")  # the plain flags: go_package paths
    generated = tmp_path / GO_PACKAGE
    committed = ROOT / "gen" / "go" / "claude_gateway" / "v1"
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in generated.iterdir())
    for stub in generated.iterdir():
        assert (committed / stub.name).read_text() == stub.read_text(), f"{stub.name} drifted: run `make go-protos`"
    assert (ROOT / "gen" / "go" / "go.mod").read_text().startswith(f"module {GO_MODULE}\n")


def debian_go_replacements(stubs: Path) -> list[str]:
    """`go mod edit` flags that point every module of Debian's Go packages at its sources in /usr/share/gocode,
    and every module their go.mod files require that Debian lacks (needed by no package built here) at an empty
    stub: a module graph that resolves with no network."""
    found: dict[str, Path] = {}
    required: set[str] = set()
    for go_mod in sorted((GOCODE / "src").rglob("go.mod")):
        described = subprocess.run(["go", "mod", "edit", "-json", str(go_mod)], capture_output=True, check=True)
        module = json.loads(described.stdout)
        found[module["Module"]["Path"]] = go_mod.parent
        required.update(r["Path"] for r in module.get("Require") or [])
    for i, path in enumerate(sorted(required - found.keys())):
        stub = stubs / str(i)
        stub.mkdir(parents=True)
        (stub / "go.mod").write_text(f"module {path}\n")
        found[path] = stub
    return [f"-replace={path}={where}" for path, where in sorted(found.items())]


def test_a_go_module_requires_the_gateway_module_and_the_docs_program_streams_through_the_gateway(
    tmp_path: Path,
) -> None:
    """docs/clients.md's Go recipe, run as written in a new module: `go mod init`, require and replace
    claude-grpc-gateway/gen/go, `go mod tidy`, `go build`; the program then streams a reply via the gateway.

    Module mode throughout (GO111MODULE=on) with GOPROXY=off: before `go mod tidy` the test adds `replace`s of
    the third-party modules (grpc-go, protobuf-go and what they require) to Debian's packaged sources, where a
    machine with the network would download them."""
    need_go()
    app = tmp_path / "app"
    app.mkdir()
    env = {**os.environ, "GO111MODULE": "on", "GOFLAGS": "", "GOPROXY": "off", "GATEWAY_REPO": str(ROOT)}
    setup, build = GO_RECIPE.split("go mod tidy\n")

    def sh(script: str) -> None:
        result = subprocess.run(["bash", "-euc", script], cwd=app, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr

    sh(setup)
    subprocess.run(["go", "mod", "edit", *debian_go_replacements(tmp_path / "stubs")], cwd=app, env=env, check=True)
    sh("go mod tidy\n" + build)
    assert (app / "stream").is_file()

    out, text = run_through_a_gateway([str(app / "stream")], cwd=app)
    assert text.startswith("Hello the simulator")
    assert out == f"{text}\nstop_reason=end_turn output_tokens={len(text.split())}\n"
    go_mod = (app / "go.mod").read_text()
    assert f"require (\n\t{GO_MODULE} v0.0.0\n" in go_mod  # what `go mod tidy` made of the recipe


@pytest.mark.parametrize("example", ["go/main.go", "java/src/main/java/Stream.java", "stream.py", "stream_async.py"])
def test_the_docs_show_each_example_verbatim(example: str) -> None:
    """docs/clients.md shows each example file as it is, the file the tests compile or run; the README shows the
    first Python one."""
    assert (EXAMPLES / example).read_text() in (ROOT / "docs" / "clients.md").read_text()
    if example == "stream.py":
        assert (EXAMPLES / example).read_text() in (ROOT / "README.md").read_text()


def test_the_docs_show_the_go_and_java_recipes_the_tests_run() -> None:
    """docs/clients.md's Go lines and Maven command are the ones the tests above run."""
    clients = (ROOT / "docs" / "clients.md").read_text()
    assert f"```sh\n{GO_RECIPE}```" in clients
    assert f"\n{JAVA_RUN}  " in clients
