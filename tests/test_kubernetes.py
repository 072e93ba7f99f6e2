"""deploy/kubernetes, checked as far as this machine allows: no cluster can run
here (no registry, no images), so every variant is rendered with ``kubectl
kustomize``, every object is validated offline against the Kubernetes schemas
(``kubernetes-validate --strict``, KUBERNETES_VERSIONS), and the wiring is
cross-checked: Services select the pods they are meant to, probes and Services
name ports the containers open, the endpoints in the environment name existing
Services and ports, every setting that names a port matches the container's,
and the image is the one the Swarm stack (deploy/swarm/stack.yaml) runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rokv.discovery import is_dns, split_dns
from rokv.endpoints import check_endpoints

from support.procs import REPO

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the test extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate comes with the test extra")

BASE = REPO / "deploy" / "kubernetes"
COMPONENTS = {"curve": BASE / "components" / "curve", "servicemonitor": BASE / "components" / "servicemonitor"}
EXAMPLE = REPO / "deploy" / "kubernetes-production"
STACK = REPO / "deploy" / "swarm" / "stack.yaml"
#: The kubectl on these machines (1.32) and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
#: Kinds that are not in the Kubernetes schemas (custom resources), checked here by hand.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKLOADS = ("Deployment", "StatefulSet")
#: Paths the image writes at run time: each must be a volume, the root being read-only.
WRITABLE = ("/app/run", "/tmp")
#: What each role must reach, by the port name of the brokers' Service.
ENDPOINT_PORTS = {"ROKV_BACKEND": "backend", "ROKV_ENDPOINT": "frontend"}
#: Settings naming a port the container serves on, and the port's name.
SERVES = {"ROKV_METRICS": "metrics", "ROKV_HTTP": "http", "ROKV_DIRECT_BIND": "direct"}
BROKER_BINDS = {"ROKV_FRONTEND": "frontend", "ROKV_BACKEND": "backend"}
SWARM_WORKER_HEALTH = yaml.safe_load(STACK.read_text())["services"]["workers"]["healthcheck"]["test"]


def kustomize(folder: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def overlay(tmp_path: Path, components: list[str]) -> Path:
    """A kustomization in ``tmp_path`` of the base with ``components``
    (kustomize takes only relative paths)."""
    folder = tmp_path / ("with-" + "-".join(components) if components else "base")
    folder.mkdir()
    rel = lambda p: os.path.relpath(p, folder)
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources:", f"  - {rel(BASE)}"]
    if components:
        lines += ["components:", *(f"  - {rel(COMPONENTS[c])}" for c in components)]
    (folder / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    return folder


VARIANTS = {
    "base": [],
    "curve": ["curve"],
    "servicemonitor": ["servicemonitor"],
    "curve+servicemonitor": ["curve", "servicemonitor"],
}


@pytest.fixture(params=[*VARIANTS, "kubernetes-production"])
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    if request.param == "kubernetes-production":
        return request.param, kustomize(EXAMPLE)
    if request.param == "base":
        return request.param, kustomize(BASE)
    return request.param, kustomize(overlay(tmp_path, VARIANTS[request.param]))


def by_kind(objs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in kinds]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def container_ports(workload: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in container:
            yield kind, container[kind]


# ------------------------------------------------------------------ tests


def test_every_variant_renders_and_every_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    variant, objs = rendered
    kinds = sorted({o["kind"] for o in objs})
    expected = {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    }
    assert expected <= set(kinds), kinds
    checked = 0
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue  # test_the_service_monitor_scrapes_every_metrics_port
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata']['name']} is invalid for {version}: {exc}")
            checked += 1
    assert checked == len(KUBERNETES_VERSIONS) * sum((o["apiVersion"], o["kind"]) not in CUSTOM_KINDS for o in objs)
    print(f"\n{variant}: {len(objs)} objects ({', '.join(kinds)}), valid for Kubernetes {KUBERNETES_VERSIONS} (strict)")


def test_a_misspelt_field_is_caught_by_the_strict_validation() -> None:
    """The validation can fail: an unknown field in a container is refused."""
    deployment = named(kustomize(BASE), "Deployment", "rokv-worker")
    containers(deployment)[0]["readinessprobe"] = containers(deployment)[0]["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_services_select_the_pods_they_are_meant_to_and_name_ports_those_pods_open(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    workloads = by_kind(objs, *WORKLOADS)
    services = by_kind(objs, "Service")
    assert {s["metadata"]["name"] for s in services} == {"rokv-broker", "rokv-worker", "rokv-gateway"}
    for service in services:
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        chosen = [
            w for w in workloads if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert [w["metadata"]["name"] for w in chosen] == [f"rokv-{component}"], service["metadata"]["name"]
        opened = container_ports(chosen[0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in opened, f"{service['metadata']['name']} targets {port['targetPort']}"
            assert opened[port["targetPort"]] == port["port"], "the Service port is the container's"
    # The brokers' Service is headless (one address per broker, for tcp+dns://)
    # and is the StatefulSet's: its pods get stable names under it.
    broker = named(objs, "Service", "rokv-broker")
    assert broker["spec"]["clusterIP"] == "None"
    assert named(objs, "StatefulSet", "rokv-broker")["spec"]["serviceName"] == "rokv-broker"
    assert named(objs, "StatefulSet", "rokv-broker")["spec"]["replicas"] == 2
    for workload in workloads:  # a workload's own selector matches its pods
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels)


def test_probes_name_open_ports_and_the_gateway_is_probed_on_healthz(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    for workload in by_kind(objs, *WORKLOADS):
        opened = container_ports(workload)
        for container in containers(workload):
            found = dict(probes(container))
            assert {"readinessProbe", "livenessProbe"} <= set(found), workload["metadata"]["name"]
            for kind, probe in found.items():
                for how in ("httpGet", "tcpSocket"):
                    if how in probe:
                        assert probe[how]["port"] in opened, f"{workload['metadata']['name']} {kind}"
                if "exec" in probe:  # the workers: the Swarm stack's health check, which Swarm ran
                    assert probe["exec"]["command"] == SWARM_WORKER_HEALTH[1:], workload["metadata"]["name"]
    gateway = containers(named(objs, "Deployment", "rokv-gateway"))[0]
    for _, probe in probes(gateway):
        assert probe["httpGet"]["path"] == "/healthz"


def test_the_endpoints_in_the_environment_name_existing_services_and_ports(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    sets = {s["metadata"]["name"]: s for s in by_kind(objs, "StatefulSet")}
    seen = set()
    for workload in by_kind(objs, *WORKLOADS):
        opened = container_ports(workload)
        for container in containers(workload):
            env = env_of(container)
            for variable, port_name in ENDPOINT_PORTS.items():
                if variable not in env or env.get("ROKV_ROLE") == "broker":
                    continue
                seen.add(variable)
                for endpoint in check_endpoints(env[variable]):
                    host, port = _host_port(endpoint)
                    service = _service_of(host, services, sets)
                    ports = {p["port"]: p["name"] for p in service["spec"]["ports"]}
                    assert ports.get(port) == port_name, f"{variable}={endpoint}: port {port} is not {port_name}"
            # Settings that bind or serve name the ports the container opens.
            binds = dict(SERVES)
            if env.get("ROKV_ROLE") == "broker":
                binds.update(BROKER_BINDS)
            for variable, port_name in binds.items():
                if variable in env:
                    port = int(env[variable].rsplit(":", 1)[1])
                    assert opened.get(port_name) == port, f"{workload['metadata']['name']}: {variable}={env[variable]}"
            if "ROKV_ADVERTISE" in env:  # the pod's own address, on the bound port
                assert env["ROKV_ADVERTISE"] == f"tcp://$(POD_IP):{opened['direct']}"
                assert any(e["name"] == "POD_IP" and "valueFrom" in e for e in container["env"])
    assert seen == set(ENDPOINT_PORTS), "workers and the gateway each name the brokers"
    # They use DNS discovery: one connection per broker pod, not libzmq's first address only.
    worker_env = env_of(containers(named(objs, "Deployment", "rokv-worker"))[0])
    assert is_dns(worker_env["ROKV_BACKEND"])


def _host_port(endpoint: str) -> tuple[str, int]:
    if is_dns(endpoint):
        return split_dns(endpoint)
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def _service_of(host: str, services: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The Service a host name in the environment stands for: NAME,
    NAME.NAMESPACE[.svc...], or a StatefulSet pod's POD.NAME."""
    parts = host.split(".")
    if parts[0] in services:
        return services[parts[0]]
    pod = re.fullmatch(r"(.+)-([0-9]+)", parts[0])
    if pod and len(parts) > 1 and parts[1] in services and pod.group(1) in sets:
        assert int(pod.group(2)) < sets[pod.group(1)]["spec"]["replicas"], f"{host}: no such pod"
        return services[parts[1]]
    raise AssertionError(f"{host!r} names no Service of the rendering ({', '.join(services)})")


def test_pod_disruption_budgets_and_the_autoscaler_name_existing_workloads(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    workloads = by_kind(objs, *WORKLOADS)
    budgets = by_kind(objs, "PodDisruptionBudget")
    assert len(budgets) == len(workloads) == 3
    for budget in budgets:
        chosen = [
            w["metadata"]["name"]
            for w in workloads
            if selects(budget["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert chosen == [budget["metadata"]["name"]]
    (hpa,) = by_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    worker = named(objs, target["kind"], target["name"])
    assert target["name"] == "rokv-worker"
    # A CPU utilisation target needs CPU requests on the pods it scales.
    assert all("cpu" in c["resources"]["requests"] for c in containers(worker))


def test_every_pod_runs_as_the_images_user_on_a_read_only_root_with_resources_and_its_writable_paths_mounted(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    for workload in by_kind(objs, *WORKLOADS):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's rokv user
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes)
            needed = WRITABLE if container["name"] != "gateway" else ("/tmp",)
            for path in needed:
                assert "emptyDir" in volumes[mounts[path]], f"{workload['metadata']['name']}: {path}"


def test_the_dataset_comes_from_a_config_map_mounted_where_rokv_data_points(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    import json

    _, objs = rendered
    worker = named(objs, "Deployment", "rokv-worker")
    container = containers(worker)[0]
    data = env_of(container)["ROKV_DATA"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    folder, _, filename = data.rpartition("/")
    assert mounts[folder]["readOnly"] is True
    volume = next(v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[folder]["name"])
    config = named(objs, "ConfigMap", volume["configMap"]["name"])  # the generated name, hash suffix and all
    dataset = json.loads(config["data"][filename])
    # The example is a part of data/example.json (the README's key among it), not a copy that drifts.
    full = json.loads((REPO / "data" / "example.json").read_text())
    assert len(dataset) == 100 and all(full[k] == v for k, v in dataset.items())
    assert "d13c513a-42f8-4da1-97b1-165f0971b7c4" in dataset


def test_the_curve_component_mounts_each_role_the_key_files_its_variables_name(tmp_path: Path) -> None:
    objs = kustomize(overlay(tmp_path, ["curve"]))
    wanted = {
        ("StatefulSet", "rokv-broker"): {"ROKV_BROKER_SECRET": "broker.key_secret"},
        ("Deployment", "rokv-worker"): {"ROKV_WORKER_SECRET": "worker.key_secret", "ROKV_BROKER_KEY": "broker.key"},
        ("Deployment", "rokv-gateway"): {"ROKV_CLIENT_SECRET": "client.key_secret", "ROKV_BROKER_KEY": "broker.key"},
    }
    allow_lists = {"ROKV_CLIENT_KEYS": "client.key", "ROKV_WORKER_KEYS": "worker.key"}
    for (kind, name), files in wanted.items():
        workload = named(objs, kind, name)
        container = containers(workload)[0]
        env = env_of(container)
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        mounted: dict[str, str] = {}  # path in the container -> key of the Secret
        for mount in container["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret:
                assert secret["secretName"] == "rokv-curve"
                assert secret["defaultMode"] == 0o440  # readable through fsGroup by the image's user
                for item in secret["items"]:
                    mounted[f"{mount['mountPath']}/{item['path']}"] = item["key"]
        for variable, key in files.items():
            assert mounted.get(env[variable]) == key, f"{name}: {variable}={env[variable]}"
        if kind == "StatefulSet":
            for variable, key in allow_lists.items():  # a folder holding that public key
                assert mounted.get(f"{env[variable]}/{key}") == key
        secrets = {k for k in mounted.values() if k.endswith("_secret")}
        assert len(secrets) == 1, f"{name} sees only its own secret key: {secrets}"


def test_the_service_monitor_scrapes_every_metrics_port(tmp_path: Path) -> None:
    objs = kustomize(overlay(tmp_path, ["servicemonitor"]))
    (monitor,) = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]
    port = monitor["spec"]["endpoints"][0]["port"]
    scraped = []
    for service in by_kind(objs, "Service"):
        labels = service["metadata"]["labels"]
        if not selects(selector["matchLabels"], labels):
            continue
        if not all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])):
            continue
        scraped.append(service["metadata"]["name"])
        assert port in {p["name"] for p in service["spec"]["ports"]}
    with_metrics = [
        s["metadata"]["name"] for s in by_kind(objs, "Service") if "metrics" in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert sorted(scraped) == sorted(with_metrics) == ["rokv-broker", "rokv-worker"]
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}


def test_the_image_is_the_one_the_swarm_stack_runs_tagged_with_the_project_version() -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
    images = {c["image"] for w in by_kind(kustomize(BASE), *WORKLOADS) for c in containers(w)}
    assert images == {f"rokv:{version}"}
    # The Swarm stack names the same image by default (tests/test_swarm.py
    # builds it from this Dockerfile and deploys the stack with it).
    stack = yaml.safe_load(STACK.read_text())
    defaults = {re.sub(r"\$\{ROKV_IMAGE:-([^}]+)\}", r"\1", s["image"]) for s in stack["services"].values()}
    assert defaults == images


def test_the_documented_big_dataset_patch_renders_and_validates(tmp_path: Path) -> None:
    """docs/operations.md's overlay for a big .rokv: the workers' dataset from
    a PersistentVolumeClaim instead of the ConfigMap."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("**A big dataset.**") :]
    patch = section[section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)]
    folder = overlay(tmp_path, [])
    (folder / "dataset.yaml").write_text(patch)
    with open(folder / "kustomization.yaml", "a") as out:
        out.write("patches:\n  - path: dataset.yaml\n")
    worker = named(kustomize(folder), "Deployment", "rokv-worker")
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(worker, version, strict=True)
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes["dataset"]) == {"name", "persistentVolumeClaim"}
    data = env_of(containers(worker)[0])["ROKV_DATA"]
    assert data.endswith(".rokv") and data.startswith("/data/")
