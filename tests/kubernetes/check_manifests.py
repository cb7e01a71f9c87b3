"""Offline checks of the Kubernetes manifests (deploy/kubernetes), run by scripts/check-k8s.

Each overlay is rendered with `kubectl kustomize` (kubectl's own kustomize, no cluster needed),
then every object is validated against the Kubernetes API schemas that the
`kubernetes-validate` package ships (nothing is fetched), in strict mode (an unknown field is an
error), for the oldest and the newest Kubernetes version named below. Custom resources
(Strimzi's) have no schema there and are only checked for their shape.

Then the rules this project holds its manifests to (`policy_violations`), so that they stay
true as the manifests change: probes, requests and limits, the restricted security context, a
PodDisruptionBudget for every Deployment, one replica where a pod owns a ReadWriteOnce volume,
the worker's autoscaler within the topic's partitions, Collector memory limits below the
container's, every --config file present in a mounted ConfigMap, the Collector and Jaeger
images at the versions .env pins, only variables the services read (the README's
configuration tables), and the public-edge settings of the production overlay.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]

# The oldest and the newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Custom resources: no schema in kubernetes-validate; only these are accepted without one.
CUSTOM_RESOURCES = {
    ("kafka.strimzi.io/v1", "Kafka"),
    ("kafka.strimzi.io/v1", "KafkaNodePool"),
    ("kafka.strimzi.io/v1", "KafkaTopic"),
}

# Overlays that put the gateway at a public edge.
PUBLIC_EDGE_OVERLAYS = {"production"}

# Set on the services only to build OTEL_RESOURCE_ATTRIBUTES (base/service-telemetry.yaml).
RESOURCE_ATTRIBUTE_INPUTS = {
    "K8S_NAMESPACE_NAME",
    "K8S_POD_NAME",
    "K8S_NODE_NAME",
    "DEPLOYMENT_ENVIRONMENT",
}

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}


def render(kubectl: str, overlay: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def schema_errors(objects: list[dict], versions=KUBERNETES_VERSIONS) -> list[str]:
    errors = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_RESOURCES:
            if not obj.get("metadata", {}).get("name") or not isinstance(obj.get("spec"), dict):
                errors.append(f"{name_of(obj)}: a custom resource needs metadata.name and a spec")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{name_of(obj)} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(
                    f"{name_of(obj)}: no schema for {obj.get('apiVersion')} in Kubernetes {version}"
                )
    return errors


def readme_variables(readme: Path = REPO / "README.md") -> set[str]:
    """Every variable named in the README's Configuration tables."""
    text = readme.read_text()
    start = text.index("\n## Configuration")
    end = text.index("\n## ", start + 1)
    names = set()
    for line in text[start:end].splitlines():
        if line.startswith("|"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line))
    return names


CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
MEMORY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(resource: str, value) -> float:
    text = str(value)
    if resource == "cpu":
        m = CPU.match(text)
        if not m:
            raise ValueError(f"cpu quantity {text!r}")
        return float(m.group(1)) / (1000 if m.group(2) else 1)
    m = MEMORY.match(text)
    if not m:
        raise ValueError(f"memory quantity {text!r}")
    return int(m.group(1)) * MEMORY_UNITS[m.group(2)]


def env_value(container: dict, name: str, config_maps: dict[str, dict]):
    """A container's variable: its value, or the ConfigMap key it refers to; None if unset."""
    value = None
    for source in container.get("envFrom", []):
        data = config_maps.get(source.get("configMapRef", {}).get("name"), {})
        if name in data:
            value = data[name]
    for var in container.get("env", []):
        if var["name"] != name:
            continue
        if "value" in var:
            value = var["value"]
        ref = var.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            value = config_maps.get(ref["name"], {}).get(ref["key"])
    return value


def env_names(container: dict, config_maps: dict[str, dict]) -> set[str]:
    names = {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        names.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
    return names


def selects(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def container_violations(where: str, container: dict) -> list[str]:
    found = []
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in container:
            found.append(f"{where}: no {probe}")
            continue
        port = container[probe].get("httpGet", container[probe].get("grpc", {})).get("port")
        declared = {p.get("name") for p in container.get("ports", [])} | {
            p["containerPort"] for p in container.get("ports", [])
        }
        if port is not None and port not in declared:
            found.append(f"{where}: {probe} port {port!r} is not a port of the container")
    resources = container.get("resources", {})
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(bound, {}):
                found.append(f"{where}: no resources.{bound}.{resource}")
    for resource in ("cpu", "memory"):
        request = resources.get("requests", {}).get(resource)
        limit = resources.get("limits", {}).get(resource)
        if request is not None and limit is not None:
            if quantity(resource, request) > quantity(resource, limit):
                found.append(f"{where}: {resource} request {request} above its limit {limit}")
    security = container.get("securityContext", {})
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation must be false")
    if security.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: readOnlyRootFilesystem must be true")
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        found.append(f"{where}: capabilities must drop ALL")
    if security.get("capabilities", {}).get("add"):
        found.append(f"{where}: adds capabilities")
    if security.get("privileged"):
        found.append(f"{where}: privileged")
    if any("hostPort" in p for p in container.get("ports", [])):
        found.append(f"{where}: hostPort")
    return found


def pod_violations(where: str, pod: dict) -> list[str]:
    found = []
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        found.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if security.get("runAsUser") == 0:
        found.append(f"{where}: runs as root")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(f"{where}: {host}")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        found.append(f"{where}: hostPath volume")
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{where}: automountServiceAccountToken must be false (no pod here calls the API)")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        found += container_violations(f"{where} container {container['name']}", container)
    return found


def pinned_images(env_file: Path = REPO / ".env") -> dict[str, str]:
    """The images docker compose pins (.env: *_IMAGE=repository:tag), by repository."""
    pins = {}
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.endswith("_IMAGE") and ":" in value:
            repository, _, tag = value.rpartition(":")
            pins[repository] = tag
    return pins


def image_violations(where: str, container: dict, pins: dict[str, str]) -> list[str]:
    """Kafka, the Collector and Jaeger at the versions compose and the native stack run."""
    repository, _, tag = container["image"].rpartition(":")
    if repository in pins and tag != pins[repository]:
        return [f"{where}: {container['image']}, but .env pins {repository}:{pins[repository]}"]
    return []


def config_file_violations(where: str, pod: dict, container: dict, config_maps) -> list[str]:
    """Every --config file a container is started with is a key of a mounted ConfigMap."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    found = []
    for arg in container.get("args", []):
        if not arg.startswith("--config="):
            continue
        path = arg.removeprefix("--config=").removeprefix("file:")
        directory, _, key = path.rpartition("/")
        config_map = volumes.get(mounts.get(directory), {}).get("configMap", {}).get("name")
        if config_map is None:
            found.append(f"{where}: {arg}: no ConfigMap is mounted at {directory}")
        elif key not in config_maps.get(config_map, {}):
            found.append(f"{where}: {arg}: ConfigMap {config_map} has no key {key}")
    return found


def collector_memory_violations(where: str, container: dict, config_maps) -> list[str]:
    """The memory_limiter must refuse data before the container reaches its memory limit."""
    limit_mib = env_value(container, "COLLECTOR_MEMORY_LIMIT_MIB", config_maps)
    if limit_mib is None:
        return []
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit is None:
        return []  # reported as a missing limit already
    if int(limit_mib) * 2**20 >= quantity("memory", limit):
        return [f"{where}: COLLECTOR_MEMORY_LIMIT_MIB={limit_mib} is not below the memory limit {limit}"]
    return []


def policy_violations(
    objects: list[dict], overlay: str, readme_vars: set[str], pins: dict[str, str] | None = None
) -> list[str]:
    pins = pinned_images() if pins is None else pins
    found = []
    by_kind: dict[str, list[dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in by_kind.get("ConfigMap", [])}
    claims = {pvc["metadata"]["name"]: pvc for pvc in by_kind.get("PersistentVolumeClaim", [])}
    workloads = [o for o in objects if o["kind"] in WORKLOAD_KINDS]
    pdbs = by_kind.get("PodDisruptionBudget", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])

    for workload in workloads:
        where = name_of(workload)
        pod = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        found += pod_violations(where, pod)
        for container in pod["containers"]:
            at = f"{where} container {container['name']}"
            found += collector_memory_violations(at, container, config_maps)
            found += image_violations(at, container, pins)
            found += config_file_violations(at, pod, container, config_maps)

        if workload["kind"] == "Deployment":
            if not any(selects(pdb["spec"]["selector"], labels) for pdb in pdbs):
                found.append(f"{where}: no PodDisruptionBudget selects its pods")
            owned = [
                v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            ]
            for claim in owned:
                modes = claims.get(claim, {}).get("spec", {}).get("accessModes", [])
                if "ReadWriteOnce" in modes or "ReadWriteOncePod" in modes:
                    if workload["spec"].get("replicas", 1) != 1:
                        found.append(f"{where}: owns the ReadWriteOnce volume {claim}, so one replica only")
                    if workload["spec"].get("strategy", {}).get("type") != "Recreate":
                        found.append(f"{where}: owns the ReadWriteOnce volume {claim}: strategy must be Recreate")
                    if any(h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"] for h in hpas):
                        found.append(f"{where}: owns the ReadWriteOnce volume {claim}: it cannot be autoscaled")

        for container in pod["containers"]:
            if container["name"] != "service":
                continue
            unknown = env_names(container, config_maps) - readme_vars - RESOURCE_ATTRIBUTE_INPUTS
            for name in sorted(unknown):
                found.append(f"{where}: sets {name}, which is not in the README's configuration tables")
            if str(env_value(container, "W3C_TEST_ENDPOINT", config_maps)).lower() == "true":
                found.append(f"{where}: W3C_TEST_ENDPOINT=true in a cluster")
            if overlay in PUBLIC_EDGE_OVERLAYS:
                fault = env_value(container, "FAULT_INJECTION", config_maps)
                if fault not in (None, "off"):
                    found.append(f"{where}: FAULT_INJECTION={fault} at a public edge")
                if workload["metadata"]["name"] == "gateway":
                    inbound = env_value(container, "INBOUND_TRACE_CONTEXT", config_maps)
                    if inbound != "restart":
                        found.append(f"{where}: INBOUND_TRACE_CONTEXT={inbound}, a public edge needs restart")

    names = {(w["kind"], w["metadata"]["name"]): w for w in workloads}
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        workload = names.get((target["kind"], target["name"]))
        if workload is None:
            found.append(f"{name_of(hpa)}: scales {target['kind']}/{target['name']}, which does not exist")
            continue
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            found.append(f"{name_of(hpa)}: minReplicas above maxReplicas")
        container = workload["spec"]["template"]["spec"]["containers"][0]
        if env_value(container, "KAFKA_GROUP_ID", config_maps) is not None:
            partitions = topic_partitions(workloads, config_maps)
            if partitions is None:
                found.append(f"{name_of(hpa)}: scales a consumer, but no KAFKA_TOPIC_PARTITIONS is set")
            elif hpa["spec"]["maxReplicas"] > partitions:
                found.append(
                    f"{name_of(hpa)}: maxReplicas {hpa['spec']['maxReplicas']} exceeds the topic's "
                    f"{partitions} partitions (the extra consumers would sit idle)"
                )

    partitions = topic_partitions(workloads, config_maps)
    for topic in by_kind.get("KafkaTopic", []):
        if topic["spec"].get("topicName", topic["metadata"]["name"]) == "orders" and partitions is not None:
            if topic["spec"].get("partitions") != partitions:
                found.append(f"{name_of(topic)}: {topic['spec'].get('partitions')} partitions, "
                             f"but KAFKA_TOPIC_PARTITIONS is {partitions}")

    for service in by_kind.get("Service", []):
        selector = {"matchLabels": service["spec"].get("selector", {})}
        if not any(selects(selector, w["spec"]["template"]["metadata"].get("labels", {})) for w in workloads):
            found.append(f"{name_of(service)}: selects no pods")
    return found


def topic_partitions(workloads: list[dict], config_maps) -> int | None:
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            value = env_value(container, "KAFKA_TOPIC_PARTITIONS", config_maps)
            if value is not None:
                return int(value)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("overlays", nargs="+", type=Path)
    args = parser.parse_args()
    readme_vars = readme_variables()
    failed = 0
    for overlay in args.overlays:
        objects = render(args.kubectl, overlay)
        problems = schema_errors(objects) + policy_violations(objects, overlay.name, readme_vars)
        custom = sum((o.get("apiVersion"), o.get("kind")) in CUSTOM_RESOURCES for o in objects)
        for problem in problems:
            print(f"FAIL {overlay}: {problem}")
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(
            f"{overlay}: {len(objects)} objects, {len(objects) - custom} validated against the "
            f"Kubernetes {' and '.join(KUBERNETES_VERSIONS)} schemas (strict), {custom} custom "
            f"resources by shape; policy checked: {status}"
        )
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
