"""The Kubernetes manifests in k8s/: valid against the Kubernetes schemas offline, and consistent with the
gateway's own settings, health services and drain sequence."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from server.app import SERVICE
from server.config import Settings, env_name

K8S = Path(__file__).resolve().parents[1] / "k8s"
POD_MANIFESTS = ("sidecar.yaml", "deployment.yaml")
MANIFESTS = (*POD_MANIFESTS, "secret.example.yaml")

# The oldest Kubernetes the manifests target (1.29: native sidecars on by default) and the newest schema that
# kubernetes-validate 1.37 bundles.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

GATEWAY_IMAGE = "ghcr.io/example/claude-grpc-gateway:0.1.0"
GATEWAY_COMMAND = ["python", "-m", "server"]
SETTINGS_ENV = frozenset(env_name(f.name) for f in fields(Settings))
# GATEWAY_* variables read by the sample client (client/claude_gateway/cli.py), not by the gateway.
CLIENT_ENV = frozenset({"GATEWAY_TARGET"})
# Where the example app says how long its own drain takes (k8s/sidecar.yaml).
APP_SHUTDOWN_ENV = "APP_SHUTDOWN_SECONDS"
# server/app.py gives server.stop() drain_grace + 5 s before giving up: the pod has to outlast that as well.
STOP_BACKSTOP_SECONDS = 5.0
WILDCARD_HOSTS = ("0.0.0.0", "[::]")
KEY_SHAPED = re.compile(r"sk-ant-[A-Za-z0-9_-]{16,}")

Doc = dict[str, Any]


def load(name: str) -> list[Doc]:
    """The non-empty YAML documents of one manifest."""
    with (K8S / name).open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(name: str) -> Doc:
    """The pod template of the one Deployment in a manifest."""
    (deployment,) = of_kind(load(name), "Deployment")
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


def pod_labels(docs: list[Doc]) -> dict[str, str]:
    (deployment,) = of_kind(docs, "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_gateway(container: Doc) -> bool:
    return bool(container["image"] == GATEWAY_IMAGE)


def gateway_container(spec: Doc) -> Doc:
    (gateway,) = [c for c in all_containers(spec) if is_gateway(c)]
    return gateway


def app_containers(spec: Doc) -> list[Doc]:
    return [c for c in all_containers(spec) if not is_gateway(c)]


def env_entries(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def literal_env(container: Doc) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env_entries(container).items() if "value" in entry}


def gateway_settings(container: Doc) -> Settings:
    """The Settings the gateway container starts with, parsed the way the gateway parses them."""
    return Settings.from_env({k: v for k, v in literal_env(container).items() if k.startswith("GATEWAY_")})


def listen_port(settings: Settings) -> int:
    return int(settings.listen.rsplit(":", 1)[1])


def prestop_seconds(container: Doc) -> float:
    """How long the container's preStop hook holds off SIGTERM (only the native sleep action can be timed)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" not in hook:
        pytest.fail(f"{container['name']}: cannot time a preStop hook other than `sleep`: {hook}")
    return float(hook["sleep"]["seconds"])


def is_native_sidecar(spec: Doc, container: Doc) -> bool:
    return any(c is container for c in spec.get("initContainers", [])) and container.get("restartPolicy") == "Always"


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * scale
    raise ValueError(f"unexpected memory quantity {quantity!r}")


def named_container_ports(spec: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in all_containers(spec) for p in c.get("ports", []) if "name" in p}


def test_manifests_parse_into_named_objects() -> None:
    """Every manifest parses as YAML into Kubernetes objects that each have an apiVersion, a kind and a name."""
    for name in MANIFESTS:
        docs = load(name)
        assert docs, f"{name} holds no objects"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: {doc}"
            assert doc["metadata"]["name"], f"{name}: a {doc['kind']} has no name"
            assert "namespace" not in doc["metadata"], f"{name}: apply with -n instead of fixing a namespace"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kubernetes_schema(name: str, version: str) -> None:
    """Every object validates offline against the strict (no unknown fields) schema of each targeted version."""
    for doc in load(name):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_gateway_env_names_are_settings(name: str) -> None:
    """GATEWAY_* variables on the gateway are Settings fields that parse; apps set only the client's."""
    spec = pod_spec(name)
    gateway = gateway_container(spec)
    unknown = {n for n in env_entries(gateway) if n.startswith("GATEWAY_")} - SETTINGS_ENV
    assert not unknown, f"{name}: the gateway does not read {sorted(unknown)}"
    gateway_settings(gateway)  # raises on a value the gateway would refuse at start-up
    for app in app_containers(spec):
        stray = {n for n in env_entries(app) if n.startswith("GATEWAY_")} - CLIENT_ENV
        assert not stray, f"{name}: {app['name']} sets gateway-only variables {sorted(stray)}"


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_termination_grace_covers_the_drain(name: str) -> None:
    """terminationGracePeriodSeconds outlasts preStop, the app's own drain (for a sidecar), drain delay and grace."""
    spec = pod_spec(name)
    gateway = gateway_container(spec)
    settings = gateway_settings(gateway)
    budget = prestop_seconds(gateway) + settings.drain_delay + settings.drain_grace + STOP_BACKSTOP_SECONDS
    if is_native_sidecar(spec, gateway):
        # The kubelet stops a native sidecar only after the app containers have exited: their drain comes first.
        apps = app_containers(spec)
        assert all(APP_SHUTDOWN_ENV in literal_env(c) for c in apps), f"{name}: say how long the app takes to stop"
        budget += max(float(literal_env(c)[APP_SHUTDOWN_ENV]) + prestop_seconds(c) for c in apps)
    assert spec["terminationGracePeriodSeconds"] > budget, f"{name}: SIGKILL would land inside the drain"


def test_shared_gateway_never_cuts_a_stream_on_rollout() -> None:
    """The shared gateway's drain grace is at least its longest stream, so a rollout lets every stream finish."""
    settings = gateway_settings(gateway_container(pod_spec("deployment.yaml")))
    assert settings.drain_grace >= settings.max_stream_seconds
    assert settings.drain_delay > 0, "the drain delay is what replaces a preStop sleep here"


def test_shared_service_is_headless_grpc() -> None:
    """The claude-gateway Service is headless, selects the gateway pods and publishes the gRPC port as grpc."""
    docs = load("deployment.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    (service,) = of_kind(docs, "Service")
    spec = deployment["spec"]["template"]["spec"]
    port = listen_port(gateway_settings(gateway_container(spec)))
    assert service["metadata"]["name"] == "claude-gateway"
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["appProtocol"] == "grpc"
    assert named_container_ports(spec).get(service_port["targetPort"], service_port["targetPort"]) == port
    assert deployment["spec"]["replicas"] >= 2


def test_disruption_budget_covers_the_gateway_pods() -> None:
    """The PodDisruptionBudget selects the gateway pods and leaves at least one serving."""
    docs = load("deployment.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_api_key_comes_only_from_a_secret_ref(name: str) -> None:
    """ANTHROPIC_API_KEY reaches the gateway only through a secretKeyRef to the example Secret, and no app sees it."""
    (secret,) = of_kind(load("secret.example.yaml"), "Secret")
    spec = pod_spec(name)
    for container in all_containers(spec):
        assert "envFrom" not in container, f"{name}: envFrom would hand whole Secrets/ConfigMaps to {container['name']}"
        entry = env_entries(container).get("ANTHROPIC_API_KEY")
        if not is_gateway(container):
            assert entry is None, f"{name}: {container['name']} must not get the API key"
            continue
        assert entry is not None, f"{name}: the gateway has no ANTHROPIC_API_KEY"
        assert "value" not in entry, f"{name}: the API key is a literal value"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
        assert not ref.get("optional", False), "a missing Secret should stop the pod, not start a keyless gateway"


def test_example_secret_is_a_placeholder() -> None:
    """The example Secret holds an obvious placeholder, nothing shaped like a real Anthropic key."""
    (secret,) = of_kind(load("secret.example.yaml"), "Secret")
    assert "data" not in secret, "base64 would hide what the value is"
    for value in secret["stringData"].values():
        assert "not-a-real-key" in value
        assert not value.startswith("sk-ant-")
    for name in MANIFESTS:
        assert not KEY_SHAPED.search((K8S / name).read_text(encoding="utf-8")), f"{name} holds something key-shaped"


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_probes_use_grpc_health_with_the_right_services(name: str) -> None:
    """Startup and liveness probe health service "", readiness the chat service, all with the native grpc probe."""
    gateway = gateway_container(pod_spec(name))
    port = listen_port(gateway_settings(gateway))
    expected = {"startupProbe": "", "livenessProbe": "", "readinessProbe": SERVICE}
    assert SERVICE == "claude_gateway.v1.ChatService"
    for probe_name, service in expected.items():
        probe = gateway[probe_name]
        handlers = {"grpc", "exec", "httpGet", "tcpSocket"} & probe.keys()
        assert handlers == {"grpc"}, f"{name}: {probe_name} uses {sorted(handlers)}"
        assert probe["grpc"]["port"] == port, f"{name}: {probe_name} probes another port"
        assert probe["grpc"].get("service", "") == service, f"{name}: {probe_name} checks the wrong service"


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_gateway_listens_where_the_probes_can_reach(name: str) -> None:
    """The gateway binds all interfaces, since the kubelet's grpc probes dial the pod IP, never loopback."""
    settings = gateway_settings(gateway_container(pod_spec(name)))
    assert settings.listen.rsplit(":", 1)[0] in WILDCARD_HOSTS


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_gateway_has_no_prestop_hook(name: str) -> None:
    """No preStop sleep: GATEWAY_DRAIN_DELAY keeps the gateway answering while endpoints are removed."""
    assert "lifecycle" not in gateway_container(pod_spec(name))


def test_sidecar_is_native_private_and_on_loopback() -> None:
    """The sidecar is a native sidecar, the app dials 127.0.0.1, and neither a Service nor the policy opens its port."""
    docs = load("sidecar.yaml")
    spec = pod_spec("sidecar.yaml")
    gateway = gateway_container(spec)
    port = listen_port(gateway_settings(gateway))
    assert is_native_sidecar(spec, gateway)
    (app,) = app_containers(spec)
    assert literal_env(app)["GATEWAY_TARGET"] == f"127.0.0.1:{port}"
    assert "ports" not in gateway, "the gateway's port is not for other pods"
    named = named_container_ports(spec)
    for service in of_kind(docs, "Service"):
        for service_port in service["spec"]["ports"]:
            assert port not in (service_port["port"], named.get(service_port.get("targetPort"), None))
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(docs).items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", []):
        assert rule.get("ports"), "an ingress rule without ports would open every port, 50051 included"
        for rule_port in rule["ports"]:
            assert named.get(rule_port["port"], rule_port["port"]) != port


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_containers_are_locked_down(name: str) -> None:
    """Every container runs non-root with a read-only root, no privilege escalation and no capabilities."""
    spec = pod_spec(name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec.get("automountServiceAccountToken") is False
    for container in all_containers(spec):
        context = container["securityContext"]
        assert context.get("runAsNonRoot", True) is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", POD_MANIFESTS)
def test_gateway_image_command_and_resources(name: str) -> None:
    """The gateway runs `python -m server`, with CPU and memory requests and a memory limit above the request."""
    gateway = gateway_container(pod_spec(name))
    assert gateway["command"] == GATEWAY_COMMAND
    resources = gateway["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert mebibytes(resources["requests"]["memory"]) >= 256
    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(resources["requests"]["memory"])
