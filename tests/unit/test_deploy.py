"""deploy/, checked without a cluster: kustomize (built by scripts/kustomize.sh) renders the base and the example
overlay; every object it renders is valid for Kubernetes TARGET by the API's own schemas (kubernetes-validate,
strict: no unknown fields), plus the name and label rules the API server checks beyond them; KEDA's ScaledObject,
a custom resource those schemas do not know, uses only the fields KEDA documents; and the manifests agree with the
bridge and with each other: every TFS_BRIDGE_* variable is one the bridge understands, with a value it accepts,
the instance name is the pod's name, the probes ask the port and the paths the bridge serves, the pods have time to
shut down, KEDA watches the group and topic the bridge consumes and scales no further than the partitions, TF
Serving loads the model the bridge asks for from the config in serving/, the bridge reaches every TF Serving pod
through the headless Service, and the Services and PodDisruptionBudgets select the pods of their workloads.
"""

from __future__ import annotations

import copy
import functools
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from bridge.config import known_env_vars, parse_settings
from tests.unit.test_compose import parse_monitoring_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
EXAMPLE = DEPLOY / "overlays" / "example"
KUSTOMIZATIONS = (BASE, EXAMPLE)
KUSTOMIZE = ROOT / "scripts" / "kustomize.sh"
README = ROOT / "README.md"

# The Kubernetes version the manifests are written for: kubernetes-validate's newest schemas (it ships 1.37.0).
TARGET = "1.37"
# The annotation of the ScaledObject that says how many partitions the input topic has.
PARTITIONS_ANNOTATION = "tfs-bridge/input-topic-partitions"
DOCKERFILE_USER = 10001  # the root Dockerfile's USER (test_runs_as_the_dockerfiles_user checks it)

MiB = 2**20


# --- rendering ---------------------------------------------------------------------------------------------

@functools.cache
def kustomize_tool() -> str:
    """scripts/kustomize.sh's program, built on first use (scripts/setup.sh builds it ahead); no skip."""
    result = subprocess.run(["bash", str(KUSTOMIZE), "--path"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"scripts/kustomize.sh could not build kustomize:\n{result.stderr}"
    return result.stdout.strip()


def kustomize_build(directory: Path) -> list[dict]:
    result = subprocess.run([kustomize_tool(), "build", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize build {directory.relative_to(ROOT)}:\n{result.stderr}"
    assert result.stderr == "", result.stderr  # no warnings either
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def rendered(directory: Path) -> tuple[dict, ...]:
    return tuple(kustomize_build(directory))


@pytest.fixture(params=KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(DEPLOY)))
def docs(request) -> list[dict]:
    """The objects one kustomization renders (a deep copy: tests may change it)."""
    return copy.deepcopy(list(rendered(request.param)))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    """The object of this kind (and name, if given); for a generated ConfigMap, name is the name before its hash."""
    found = [doc for doc in of_kind(docs, kind) if name is None or doc["metadata"]["name"] == name
             or (kind == "ConfigMap" and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", doc["metadata"]["name"]))]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def bridge(docs: list[dict]) -> dict:
    return one(docs, "StatefulSet", "tfs-bridge")


def tfserving(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "tfserving")


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def bridge_container(docs: list[dict]) -> dict:
    return container(bridge(docs), "bridge")


def tfserving_container(docs: list[dict]) -> dict:
    return container(tfserving(docs), "tfserving")


def pod_names(statefulset: dict, replicas: int) -> list[str]:
    return [f"{statefulset['metadata']['name']}-{ordinal}" for ordinal in range(replicas)]


def container_env(docs: list[dict], pod: dict, cont: dict, pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives the container, as far as the manifests say: envFrom ConfigMaps (the
    optional Secret holds nothing here), then env entries, which win; the downward API's metadata.name is the pod's
    name."""
    env: dict[str, str] = {}
    for source in cont.get("envFrom", []):
        if "configMapRef" in source:
            data = configmap_by_name(docs, source["configMapRef"]["name"])["data"]
            env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        else:
            assert source["secretRef"].get("optional") is True, "a Secret the manifests do not create must be optional"
    for entry in cont.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, entry
            env[entry["name"]] = pod_name
    return env


def configmap_by_name(docs: list[dict], name: str) -> dict:
    """A ConfigMap by the name a reference uses (after kustomize's hash suffix)."""
    found = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"no ConfigMap {name} in the render (kustomize rewrites references to generated names)"
    return found[0]


def bridge_env(docs: list[dict], pod_name: str = "tfs-bridge-0") -> dict[str, str]:
    sts = bridge(docs)
    return container_env(docs, sts["spec"]["template"]["spec"], bridge_container(docs), pod_name)


def bridge_settings(docs: list[dict], pod_name: str = "tfs-bridge-0"):
    return parse_settings([], bridge_env(docs, pod_name))


def container_port(cont: dict, port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in cont["ports"]], f"{cont['name']} does not listen on {port}"
        return port
    named = [p["containerPort"] for p in cont["ports"] if p.get("name") == port]
    assert named, f"{cont['name']} has no port named {port}"
    return named[0]


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity (500m, 256Mi, 2) as a number; fails on a malformed one, which the schemas
    let through (they accept any string)."""
    suffixes = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|m|k|M|G|T)?", str(value))
    assert match, f"not a resource quantity: {value!r}"
    return float(match.group(1)) * suffixes[match.group(2) or ""]


def workloads(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in ("StatefulSet", "Deployment")]


def all_containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


# --- kustomize ---------------------------------------------------------------------------------------------

def test_scripts_kustomize_builds_the_pinned_version():
    result = subprocess.run([kustomize_tool(), "version"], capture_output=True, text=True, timeout=30)
    version = re.search(r"^VERSION=\$\{KUSTOMIZE_VERSION:-(v[\d.]+)\}$", KUSTOMIZE.read_text(), re.MULTILINE).group(1)
    assert result.returncode == 0 and result.stdout.strip() == version, result.stdout + result.stderr


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_file_beside_a_kustomization_is_in_it(directory):
    """What kubectl apply -k applies is what kustomization.yaml lists: no manifest lies unused beside it."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = {resource for resource in kustomization["resources"] if (directory / resource).is_file()}
    for generator in kustomization["configMapGenerator"]:
        listed |= set(generator.get("envs", [])) | set(generator.get("files", []))
    present = {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}
    assert present - {"kustomization.yaml"} == listed


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(DEPLOY)))
def test_kustomize_renders(directory):
    kinds = sorted(doc["kind"] for doc in rendered(directory))
    expected = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "PodDisruptionBudget", "ScaledObject",
                "Service", "Service", "Service", "StatefulSet"]
    assert kinds == sorted(expected + (["Namespace"] if directory == EXAMPLE else []))


def test_the_base_names_no_namespace_and_the_overlay_one_for_every_object():
    for path in BASE.rglob("*.yaml"):
        assert not re.search(r"^\s*namespace:", path.read_text(), re.MULTILINE), path
    assert all("namespace" not in doc["metadata"] for doc in rendered(BASE))
    namespace = one(list(rendered(EXAMPLE)), "Namespace")["metadata"]["name"]
    assert all(doc["metadata"].get("namespace") == namespace for doc in rendered(EXAMPLE) if doc["kind"] != "Namespace")


def test_the_overlay_pins_every_image():
    for workload in workloads(list(rendered(EXAMPLE))):
        for cont in all_containers(workload):
            image = cont["image"]
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image.rsplit("/", 1)[-1]), image
            assert not image.endswith(":latest"), image


# --- valid for Kubernetes ----------------------------------------------------------------------------------

def validate(doc: dict) -> None:
    """kubernetes-validate against TARGET's schemas, strict (an unknown field is an error); fails, saying why, when
    the package is missing."""
    try:
        import kubernetes_validate
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")
    version = kubernetes_validate.validate(doc, TARGET, strict=True)
    assert version == TARGET, f"validated against {version}, not {TARGET}: is kubernetes-validate too old?"


def test_every_object_but_the_scaledobject_is_valid_for_the_target_kubernetes(docs):
    import kubernetes_validate
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            continue
        try:
            validate(doc)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {path}: {error.message}")


@pytest.mark.parametrize("break_it", [
    lambda sts: sts["spec"]["template"]["spec"].update(terminationGracePeriodSecond=45),
    lambda sts: container(sts, "bridge").update(readinesProbe=container(sts, "bridge").pop("readinessProbe")),
    lambda sts: sts["spec"].update(replicas="2"),
    lambda sts: container(sts, "bridge")["env"][0]["valueFrom"]["fieldRef"].update(fieldPath=["metadata.name"]),
], ids=["misspelled field", "misspelled probe", "string for an integer", "list for a string"])
def test_the_validator_rejects_a_broken_statefulset(break_it):
    import kubernetes_validate
    sts = copy.deepcopy(bridge(list(rendered(BASE))))
    break_it(sts)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)


DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def qualified_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, prefix))) and \
        len(name) <= 63 and bool(re.fullmatch(LABEL_NAME, name))


def iana_service_name(name: str) -> bool:
    return len(name) <= 15 and bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name)) and \
        "--" not in name and bool(re.search(r"[a-z]", name))


def test_names_and_labels_follow_the_api_servers_rules(docs):
    """What the API server refuses although the schemas accept it: object, container, port and volume names,
    label and annotation keys and values, and a StatefulSet name short enough for its pods' labels."""
    for doc in docs:
        name, kind = doc["metadata"]["name"], doc["kind"]
        assert len(name) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, name), f"{kind} {name}"
        if kind in ("Service", "Namespace"):
            assert len(name) <= 63 and re.fullmatch(DNS1035_LABEL if kind == "Service" else DNS1123_LABEL, name)
        metas = [doc["metadata"]] + ([doc["spec"]["template"]["metadata"]] if kind in ("StatefulSet", "Deployment")
                                     else [])
        for meta in metas:
            for key, value in meta.get("labels", {}).items():
                assert qualified_key(key) and isinstance(value, str), (kind, name, key)
                assert value == "" or (len(value) <= 63 and re.fullmatch(LABEL_NAME, value)), (kind, name, value)
            for key, value in meta.get("annotations", {}).items():
                assert qualified_key(key) and isinstance(value, str), (kind, name, key)
        if kind == "ConfigMap":
            assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) for key in doc["data"])
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        for cont in all_containers(workload):
            assert len(cont["name"]) <= 63 and re.fullmatch(DNS1123_LABEL, cont["name"])
            assert all(iana_service_name(port["name"]) for port in cont.get("ports", []))
            assert all(re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", entry["name"]) for entry in cont.get("env", []))
            assert {mount["name"] for mount in cont.get("volumeMounts", [])} <= {v["name"] for v in spec["volumes"]}
        assert all(len(v["name"]) <= 63 and re.fullmatch(DNS1123_LABEL, v["name"]) for v in spec["volumes"])
    # The StatefulSet controller labels each pod controller-revision-hash=NAME-<10 characters>, at most 63.
    assert len(bridge(docs)["metadata"]["name"]) <= 52


def test_every_configmap_a_pod_uses_is_rendered(docs):
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        for volume in spec["volumes"]:
            if "configMap" in volume:
                configmap_by_name(docs, volume["configMap"]["name"])
        for cont in all_containers(workload):
            for source in cont.get("envFrom", []):
                if "configMapRef" in source:
                    configmap_by_name(docs, source["configMapRef"]["name"])


# --- KEDA's ScaledObject -----------------------------------------------------------------------------------

# ScaledObject's fields, from KEDA's documentation (keda-docs, content/docs/2.21: reference/scaledobject-spec.md
# and scalers/apache-kafka.md; authenticationRef's kind from concepts/authentication.md). A dict: the fields
# allowed below a field; None: a value (its type checked below).
SCALED_OBJECT_FIELDS: dict[str, Any] = {
    "apiVersion": None, "kind": None, "metadata": None,
    "spec": {
        "scaleTargetRef": {"apiVersion": None, "kind": None, "name": None, "envSourceContainerName": None},
        "pollingInterval": None, "cooldownPeriod": None, "initialCooldownPeriod": None, "idleReplicaCount": None,
        "minReplicaCount": None, "maxReplicaCount": None,
        "fallback": {"failureThreshold": None, "replicas": None, "behavior": None},
        "advanced": {
            "restoreToOriginalReplicaCount": None,
            "horizontalPodAutoscalerConfig": {"name": None, "behavior": None},  # behavior: checked as an HPA's
            "scalingModifiers": {"target": None, "activationTarget": None, "metricType": None, "formula": None},
        },
        "triggers": {"type": None, "metadata": None, "name": None, "useCachedMetrics": None,
                     "authenticationRef": {"name": None, "kind": None}, "metricType": None},
    },
}
SCALED_OBJECT_INTEGERS = ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
                          "minReplicaCount", "maxReplicaCount")
# The kafka trigger's metadata (scalers/apache-kafka.md, "Parameter list"). Trigger metadata is a map of strings.
KAFKA_TRIGGER_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "fullMetadata", "partitionLimitation", "sasl",
    "saslTokenProvider", "tls", "unsafeSsl", "awsRegion",
}
KAFKA_TRIGGER_BOOLEANS = {"allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
                          "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "fullMetadata",
                          "unsafeSsl"}


def unknown_fields(value: Any, allowed: Any, path: str = "") -> list[str]:
    if allowed is None:
        return []
    if isinstance(value, list):
        return [problem for i, item in enumerate(value) for problem in unknown_fields(item, allowed, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path} must be an object"]
    problems = [f"{path}.{key}" for key in value if key not in allowed]
    return problems + [p for key, item in value.items() if key in allowed
                       for p in unknown_fields(item, allowed[key], f"{path}.{key}")]


def scaled_object_problems(so: dict) -> list[str]:
    """Where a ScaledObject strays from KEDA's documented fields and the kafka trigger's metadata."""
    problems = unknown_fields(so, SCALED_OBJECT_FIELDS)
    spec = so.get("spec", {})
    if so.get("apiVersion") != "keda.sh/v1alpha1" or so.get("kind") != "ScaledObject":
        problems.append("apiVersion/kind must be keda.sh/v1alpha1 ScaledObject")
    if "name" not in spec.get("scaleTargetRef", {}):
        problems.append("spec.scaleTargetRef.name is mandatory")
    problems += [f"spec.{key} must be an integer" for key in SCALED_OBJECT_INTEGERS
                 if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool))]
    if not spec.get("triggers"):
        problems.append("spec.triggers must list a trigger")
    for i, trigger in enumerate(spec.get("triggers", [])):
        metadata = trigger.get("metadata")
        if not isinstance(trigger.get("type"), str) or not isinstance(metadata, dict):
            problems.append(f"spec.triggers[{i}] needs a type and metadata (both mandatory)")
            continue
        problems += [f"spec.triggers[{i}].metadata.{key} must be a string" for key, value in metadata.items()
                     if not isinstance(value, str)]
        if trigger["type"] == "kafka":
            problems += [f"spec.triggers[{i}].metadata.{key} is not a kafka scaler parameter"
                         for key in metadata if key not in KAFKA_TRIGGER_METADATA]
            problems += [f"spec.triggers[{i}].metadata.{key} must be 'true' or 'false'"
                         for key in KAFKA_TRIGGER_BOOLEANS & set(metadata) if metadata[key] not in ("true", "false")]
            if metadata.get("offsetResetPolicy", "latest") not in ("latest", "earliest"):
                problems.append(f"spec.triggers[{i}].metadata.offsetResetPolicy must be latest or earliest")
            for key in ("lagThreshold", "activationLagThreshold"):
                if key in metadata and not re.fullmatch(r"\d+", str(metadata[key])):
                    problems.append(f"spec.triggers[{i}].metadata.{key} must be a whole number")
            if "consumerGroup" not in metadata or "bootstrapServers" not in metadata:
                problems.append(f"spec.triggers[{i}].metadata needs bootstrapServers and consumerGroup")
    return problems


def scaled_object(docs: list[dict]) -> dict:
    return one(docs, "ScaledObject", "tfs-bridge")


def kafka_trigger(docs: list[dict]) -> dict:
    triggers = [t for t in scaled_object(docs)["spec"]["triggers"] if t["type"] == "kafka"]
    assert len(triggers) == 1
    return triggers[0]["metadata"]


def test_the_scaledobject_uses_only_fields_keda_documents(docs):
    assert scaled_object_problems(scaled_object(docs)) == []


@pytest.mark.parametrize("break_it, complaint", [
    (lambda so: so["spec"].update(maxReplicas=3), "spec.maxReplicas"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(lagTreshold="5"), "lagTreshold is not a kafka"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(lagThreshold=5), "lagThreshold must be a string"),
    (lambda so: so["spec"].update(maxReplicaCount="3"), "maxReplicaCount must be an integer"),
    (lambda so: so["spec"]["scaleTargetRef"].pop("name"), "scaleTargetRef.name is mandatory"),
], ids=["unknown spec field", "misspelled trigger parameter", "number for a string", "string for a number",
        "no target name"])
def test_the_scaledobject_check_rejects_a_broken_copy(break_it, complaint):
    so = copy.deepcopy(scaled_object(list(rendered(BASE))))
    break_it(so)
    assert any(complaint in problem for problem in scaled_object_problems(so)), scaled_object_problems(so)


def test_the_scaledobjects_metadata_and_hpa_behavior_are_valid_for_kubernetes(docs):
    """KEDA hands advanced.horizontalPodAutoscalerConfig.behavior to the HPA it creates: valid as an
    autoscaling/v2 HorizontalPodAutoscaler's behavior, and the ScaledObject's metadata as any object's."""
    so = scaled_object(docs)
    spec = so["spec"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": so["metadata"],
           "spec": {"scaleTargetRef": spec["scaleTargetRef"], "minReplicas": spec["minReplicaCount"],
                    "maxReplicas": spec["maxReplicaCount"],
                    "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]}}
    validate(hpa)


def test_keda_scales_the_bridge_statefulset_from_one_up_to_the_partition_count(docs):
    so, sts = scaled_object(docs), bridge(docs)
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                            "name": sts["metadata"]["name"]}
    partitions = int(so["metadata"]["annotations"][PARTITIONS_ANNOTATION])
    assert so["spec"]["minReplicaCount"] == 1
    assert so["spec"]["maxReplicaCount"] == partitions  # more replicas than partitions would sit idle
    assert kafka_trigger(docs).get("allowIdleConsumers", "false") == "false"  # KEDA's own cap at the partitions
    assert "replicas" not in sts["spec"]  # the HPA that KEDA makes owns it; kubectl apply would reset it


def test_keda_watches_the_brokers_group_and_topic_the_bridge_consumes(docs):
    settings, trigger = bridge_settings(docs), kafka_trigger(docs)
    assert trigger["bootstrapServers"] == settings.bootstrap_servers
    assert trigger["consumerGroup"] == settings.group_id
    assert trigger["topic"] == settings.input_topic
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+:\d+", broker) for broker in trigger["bootstrapServers"].split(","))
    # The lag of a group without committed offsets counts as the bridge's consumer starts: from the earliest.
    clients = (ROOT / "bridge" / "kafka" / "clients.py").read_text()
    reset = re.search(r'"auto\.offset\.reset":\s*"(\w+)"', clients)
    assert reset, "bridge/kafka/clients.py no longer sets auto.offset.reset: check offsetResetPolicy"
    assert trigger["offsetResetPolicy"] == reset.group(1)


def test_the_example_overlays_kafka_address_reaches_the_trigger():
    """The overlay changes TFS_BRIDGE_BOOTSTRAP_SERVERS; its own replacements carry it into the ScaledObject."""
    base, example = list(rendered(BASE)), list(rendered(EXAMPLE))
    assert bridge_settings(example).bootstrap_servers != bridge_settings(base).bootstrap_servers
    assert kafka_trigger(example)["bootstrapServers"] == bridge_settings(example).bootstrap_servers


# --- the bridge --------------------------------------------------------------------------------------------

def test_every_bridge_variable_is_one_it_understands_with_a_valid_value(docs):
    sts = bridge(docs)
    cont = bridge_container(docs)
    configmap_names = {key for source in cont["envFrom"] if "configMapRef" in source
                       for key in configmap_by_name(docs, source["configMapRef"]["name"])["data"]}
    env_names = {entry["name"] for entry in cont.get("env", [])}
    assert configmap_names | env_names <= known_env_vars(), sorted((configmap_names | env_names) - known_env_vars())
    for pod_name in pod_names(sts, 3):
        parse_settings([], bridge_env(docs, pod_name))  # raises ConfigError for an unknown variable or a bad value


def test_the_bridge_gets_its_settings_from_the_configmap_and_secrets_from_an_optional_secret(docs):
    sources = bridge_container(docs)["envFrom"]
    assert [next(iter(source)) for source in sources] == ["configMapRef", "secretRef"]
    assert sources[1]["secretRef"] == {"name": "tfs-bridge", "optional": True}
    data = one(docs, "ConfigMap", "tfs-bridge")["data"]
    assert "TFS_BRIDGE_KAFKA_CONFIG" not in data  # may hold passwords: the Secret's


def test_each_bridge_is_named_after_its_pod(docs):
    """The instance name comes from the downward API's metadata.name: tfs-bridge-0, -1, ... are stable across
    restarts and unique, and so are the transactional ids and group instance ids made of them."""
    cont = bridge_container(docs)
    entries = [entry for entry in cont["env"] if entry["name"] == "TFS_BRIDGE_INSTANCE_NAME"]
    assert entries == [{"name": "TFS_BRIDGE_INSTANCE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    data = one(docs, "ConfigMap", "tfs-bridge")["data"]
    assert "TFS_BRIDGE_INSTANCE_NAME" not in data and "TFS_BRIDGE_TRANSACTIONAL_ID" not in data  # one for all: fenced
    sts = bridge(docs)
    partitions = scaled_object(docs)["spec"]["maxReplicaCount"]
    settings = [bridge_settings(docs, pod) for pod in pod_names(sts, partitions)]
    assert [s.instance() for s in settings] == pod_names(sts, partitions)
    assert all(s.static_membership for s in settings)
    assert len({s.derived_transactional_id() for s in settings}) == partitions
    assert len({s.consumer_config()["group.instance.id"] for s in settings}) == partitions


def test_no_service_variables_reach_the_bridge(docs):
    """Kubernetes would give the bridge NAME_SERVICE_HOST, NAME_PORT, ... for every Service with a cluster IP in
    its namespace: for a Service named tfs-bridge-*, TFS_BRIDGE_* variables the bridge refuses as unknown (or
    TFS_BRIDGE_METRICS_PORT=tcp://...)."""
    assert bridge(docs)["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_probes_ask_the_bridges_health_endpoints_on_its_metrics_port(docs):
    cont, settings = bridge_container(docs), bridge_settings(docs)
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = cont[probe]["httpGet"]
        assert get["path"] == path and container_port(cont, get["port"]) == settings.metrics_port, probe
        assert get.get("scheme", "HTTP") == "HTTP"
    assert settings.metrics_host not in ("127.0.0.1", "localhost", "::1")  # the kubelet probes the pod's IP


def test_the_startup_probe_outlasts_the_wait_for_the_model(docs):
    probe, settings = bridge_container(docs)["startupProbe"], bridge_settings(docs)
    assert probe["failureThreshold"] * probe["periodSeconds"] > settings.seconds("startup_timeout_ms")


def test_the_bridge_has_time_to_finish_its_batch_when_stopped(docs):
    grace = bridge(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= bridge_settings(docs).seconds("shutdown_timeout_ms") + 10


def test_the_bridge_is_sized_from_the_benchmark(docs):
    resources, settings = bridge_container(docs)["resources"], bridge_settings(docs)
    assert quantity(resources["requests"]["cpu"]) >= 0.5
    assert quantity(resources["requests"]["memory"]) >= 210 * MiB  # the peak RSS measured on photos
    assert "cpu" not in resources.get("limits", {})  # throttling turns into stalls of the poll loop
    # README.md (Security, Memory): the bound on the bridge's memory under a burst of worst-case images.
    worst = 200 * MiB + settings.fetch_concurrency * settings.fetch_max_bytes + \
        settings.max_decodes * settings.max_image_pixels * 16
    assert quantity(resources["limits"]["memory"]) >= worst


def test_the_bridge_is_served_by_its_image_as_built(docs):
    cont = bridge_container(docs)
    assert "command" not in cont  # the Dockerfile's ENTRYPOINT, tfs-bridge
    assert cont.get("args", ["run"]) == ["run"]
    assert re.search(r"^EXPOSE 9464$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)


def test_the_statefulset_starts_its_pods_in_parallel_and_keeps_no_volumes(docs):
    sts = bridge(docs)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert "volumeClaimTemplates" not in sts["spec"]


# --- security ----------------------------------------------------------------------------------------------

def test_runs_as_the_dockerfiles_user():
    assert re.search(rf"^USER {DOCKERFILE_USER}$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert re.search(r"--uid 10001", (ROOT / "Dockerfile").read_text())


def test_every_container_runs_as_non_root_read_only_without_capabilities(docs):
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == DOCKERFILE_USER, workload["metadata"]["name"]
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for cont in all_containers(workload):
            context = cont["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, cont["name"]
            assert context["readOnlyRootFilesystem"] is True, cont["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, cont["name"]
            assert not context.get("privileged", False) and "runAsUser" not in context, cont["name"]
            assert "memory" in cont["resources"]["limits"] and "cpu" in cont["resources"]["requests"], cont["name"]
            for value in (*cont["resources"]["requests"].values(), *cont["resources"]["limits"].values()):
                quantity(value)


def test_the_bridges_one_writable_place_is_a_small_tmp(docs):
    """The forkserver of TFS_BRIDGE_DECODE_PROCESSES makes its socket in a temporary directory."""
    sts = bridge(docs)
    mounts = {m["mountPath"]: m["name"] for m in bridge_container(docs)["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp")
    assert quantity(volume["emptyDir"]["sizeLimit"]) <= 64 * MiB


# --- selectors ---------------------------------------------------------------------------------------------

def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def selected_workloads(docs: list[dict], selector: dict[str, str]) -> list[str]:
    return [w["metadata"]["name"] for w in workloads(docs)
            if selects(selector, w["spec"]["template"]["metadata"]["labels"])]


def test_each_workload_selects_its_own_pods(docs):
    for workload in workloads(docs):
        selector = workload["spec"]["selector"]
        assert set(selector) == {"matchLabels"}
        assert selected_workloads(docs, selector["matchLabels"]) == [workload["metadata"]["name"]]


@pytest.mark.parametrize("kind, name, workload", [
    ("Service", "tfs-bridge", "tfs-bridge"),
    ("PodDisruptionBudget", "tfs-bridge", "tfs-bridge"),
    ("Service", "tfserving", "tfserving"),
    ("Service", "tfserving-headless", "tfserving"),
    ("PodDisruptionBudget", "tfserving", "tfserving"),
])
def test_services_and_disruption_budgets_select_their_workloads_pods(docs, kind, name, workload):
    obj = one(docs, kind, name)
    selector = obj["spec"]["selector"]
    if kind == "PodDisruptionBudget":
        assert set(selector) == {"matchLabels"}
        selector = selector["matchLabels"]
    assert selected_workloads(docs, selector) == [workload]


def test_disruptions_take_one_pod_at_a_time(docs):
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    # A bridge unready because TF Serving is down must not block a node drain.
    assert one(docs, "PodDisruptionBudget", "tfs-bridge")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_bridges_headless_service_names_its_pods_and_publishes_its_metrics_port(docs):
    sts, service = bridge(docs), one(docs, "Service", "tfs-bridge")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # scraped while unready too
    port = bridge_settings(docs).metrics_port
    assert [(p["name"], p["port"], container_port(bridge_container(docs), p["targetPort"]))
            for p in service["spec"]["ports"]] == [("metrics", port, port)]
    for found in (service["metadata"]["annotations"], sts["spec"]["template"]["metadata"]["annotations"]):
        assert found == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                               "prometheus.io/path": "/metrics"}


# --- TF Serving --------------------------------------------------------------------------------------------

def tfserving_flags(docs: list[dict]) -> dict[str, str]:
    return dict(arg.lstrip("-").partition("=")[::2] for arg in tfserving_container(docs)["args"])


def config_file(docs: list[dict], path: str) -> str:
    """The content of a file TF Serving reads under a ConfigMap volume's mount path."""
    deployment, cont = tfserving(docs), tfserving_container(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in cont["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/") and "configMap" in volumes[mount["name"]]:
            data = configmap_by_name(docs, volumes[mount["name"]]["configMap"]["name"])["data"]
            key = path[len(mount["mountPath"].rstrip("/")) + 1:]
            assert key in data, f"{path}: no key {key} in the ConfigMap"
            return data[key]
    raise AssertionError(f"{path} is not in a ConfigMap volume")


def normalized_model_config(text: str, tmp_path: Path) -> str:
    """A ModelServerConfig text proto parsed by TF Serving's own message and printed back (in a subprocess: its
    descriptors clash with the bridge's protos in one process)."""
    path = tmp_path / "models.config"
    path.write_text(text)
    code = ("import sys\nfrom google.protobuf import text_format\n"
            "from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig\n"
            "print(text_format.MessageToString(text_format.Parse(open(sys.argv[1]).read(), ModelServerConfig())))\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def model_names(text: str) -> list[str]:
    return re.findall(r'^\s*name:\s*"([^"]+)"', text, re.MULTILINE)


def test_tf_serving_is_the_image_and_flags_of_docker_compose(docs):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["tfserving"]
    cont = tfserving_container(docs)
    registry_image = re.sub(r"\$\{TFSERVING_IMAGE:-([^}]+)\}", r"\1", compose["image"])  # the variable's default
    assert cont["image"] == registry_image and re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", cont["image"])
    compose_flags = {arg.lstrip("-").partition("=")[0] for arg in compose["command"]}
    flags = tfserving_flags(docs)
    assert compose_flags <= set(flags) and "enable_batching" in flags
    assert "command" not in cont  # the image's entrypoint adds --port=8500 --rest_api_port=8501
    assert {p["name"]: p["containerPort"] for p in cont["ports"]} == {"grpc": 8500, "http": 8501}


def test_tf_serving_loads_serving_s_model_config_for_the_model_the_bridge_asks_for(docs, tmp_path):
    text = config_file(docs, tfserving_flags(docs)["model_config_file"])
    assert normalized_model_config(text, tmp_path) == \
        normalized_model_config((ROOT / "serving" / "models.imagenet.config").read_text(), tmp_path)
    name = bridge_settings(docs).model_name
    assert model_names(text) == [name]
    base_path = re.search(r'base_path:\s*"([^"]+)"', text).group(1)
    models_mount = next(m for m in tfserving_container(docs)["volumeMounts"] if m["name"] == "models")
    assert base_path == f"{models_mount['mountPath']}/{name}" and models_mount["readOnly"] is True


def test_tf_serving_batches_as_serving_s_batching_config_and_the_bridges_batches_fit(docs):
    text = config_file(docs, tfserving_flags(docs)["batching_parameters_file"])
    assert text == (ROOT / "serving" / "batching.config").read_text()
    server_max = int(re.search(r"^max_batch_size\s*\{\s*value:\s*(\d+)", text, re.MULTILINE).group(1))
    assert bridge_settings(docs).max_batch_size <= server_max  # a larger batch is INVALID_ARGUMENT
    threads = int(re.search(r"^num_batch_threads\s*\{\s*value:\s*(\d+)", text, re.MULTILINE).group(1))
    assert quantity(tfserving_container(docs)["resources"]["requests"]["cpu"]) == threads  # "match the CPU cores"


def test_tf_serving_exports_its_metrics_where_the_pods_annotations_say(docs, tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text(config_file(docs, tfserving_flags(docs)["monitoring_config_file"]))
    prometheus = parse_monitoring_config(path)
    assert prometheus == parse_monitoring_config(ROOT / "monitoring" / "tfserving" / "monitoring.config")
    annotations = tfserving(docs)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8501",
                           "prometheus.io/path": prometheus["path"]}
    assert prometheus["enable"] is True


def test_the_bridge_reaches_every_ready_tf_serving_pod_through_the_headless_service(docs):
    """dns:///NAME:PORT: gRPC resolves NAME to every pod's address and connects to PORT on each, so PORT is the
    container's gRPC port (a headless Service maps no ports); only ready pods are in the answer."""
    server = bridge_settings(docs).model_server
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", server)
    assert match, f"TFS_BRIDGE_MODEL_SERVER={server} is not dns:///SERVICE:PORT"
    service = one(docs, "Service", match.group(1))
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    assert selected_workloads(docs, service["spec"]["selector"]) == ["tfserving"]
    grpc_port = container_port(tfserving_container(docs), "grpc")
    assert int(match.group(2)) == grpc_port
    assert [(p["port"], container_port(tfserving_container(docs), p["targetPort"]))
            for p in service["spec"]["ports"]] == [(grpc_port, grpc_port)]


def test_tf_serving_closes_connections_so_that_the_bridges_find_new_replicas(docs):
    arguments = dict(item.split("=") for item in tfserving_flags(docs)["grpc_channel_arguments"].split(","))
    assert 60_000 <= int(arguments["grpc.max_connection_age_ms"]) <= 3_600_000
    # In-flight Predict calls finish on the old connection: the grace exceeds their deadline.
    assert int(arguments["grpc.max_connection_age_grace_ms"]) > bridge_settings(docs).grpc_timeout_ms


def test_tf_serving_rolls_without_losing_capacity(docs):
    deployment = tfserving(docs)
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


class ModelStatus(http.server.BaseHTTPRequestHandler):
    """A stand-in for TF Serving's REST API: GET /v1/models/NAME answers with `body` and `status`."""
    status = 200
    body = ""
    paths: ClassVar[list[str]] = []

    def do_GET(self):
        ModelStatus.paths.append(self.path)
        payload = ModelStatus.body.encode()
        self.send_response(ModelStatus.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def status_body(state: str, error_code: str = "OK") -> str:
    """TF Serving's answer to GET /v1/models/NAME, as its REST API formats it."""
    return ('{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "STATE",\n   "status": {\n'
            '    "error_code": "CODE",\n    "error_message": ""\n   }\n  }\n ]\n}\n').replace(
                "STATE", state).replace("CODE", error_code)


def test_tf_serving_is_ready_only_once_the_model_is_available(docs):
    """The readiness probe's command itself, with bash, against a stand-in REST API."""
    command = tfserving_container(docs)["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["bash", "-c"] and "/dev/tcp/127.0.0.1/8501" in command[2]
    assert container_port(tfserving_container(docs), "http") == 8501
    name = bridge_settings(docs).model_name
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelStatus)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def probe() -> int:
        script = command[2].replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}")
        return subprocess.run(["bash", "-c", script], capture_output=True, timeout=30).returncode

    try:
        ModelStatus.paths.clear()
        answers = [(200, status_body("AVAILABLE"), 0), (200, status_body("LOADING"), 1),
                   (200, status_body("END", "UNAVAILABLE"), 1), (404, '{"error": "Servable not found"}', 1)]
        for status, body, ready in answers:
            ModelStatus.status, ModelStatus.body = status, body
            assert (probe() == 0) == (ready == 0), body
        assert ModelStatus.paths == [f"/v1/models/{name}"] * len(answers)
    finally:
        server.shutdown()
        server.server_close()
    assert probe() != 0  # nothing listening


def test_the_init_container_copies_the_model_image_and_fails_without_the_model(docs, tmp_path):
    """The initContainer's command, run with sh on copies of its two folders: the model image's /models and the
    models volume (mounted at /models in TF Serving)."""
    deployment = tfserving(docs)
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    target = next(m for m in init["volumeMounts"] if m["name"] == "models")["mountPath"]
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][2]
    name = bridge_settings(docs).model_name
    assert f"{target}/{name}/" in script
    for has_model in (True, False):
        image, volume = tmp_path / f"image-{has_model}", tmp_path / f"volume-{has_model}"
        (image / (name if has_model else "other") / "1" / "variables").mkdir(parents=True)
        (image / (name if has_model else "other") / "1" / "saved_model.pb").write_bytes(b"pb")
        volume.mkdir()
        local = script.replace("/models/", f"{image}/").replace(f"{target}/", f"{volume}/")
        result = subprocess.run(["sh", "-c", local], capture_output=True, text=True, timeout=30)
        assert (result.returncode == 0) == has_model, result.stderr
        assert (volume / (name if has_model else "other") / "1" / "saved_model.pb").is_file()
    model_image = (DEPLOY / "model.Dockerfile").read_text()
    assert re.search(r"^COPY \. /models/$", model_image, re.MULTILINE)  # the image's layout, as copied


def test_the_model_image_dockerfile_passes_hadolint():
    from tests.unit.test_dockerfile import hadolint
    result = subprocess.run([hadolint(), str(DEPLOY / "model.Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- README ------------------------------------------------------------------------------------------------

def test_the_readme_says_how_to_deploy_just_before_running_it():
    text = README.read_text()
    headings = re.findall(r"^## .+$", text, re.MULTILINE)
    assert headings[headings.index("## Running it") - 1] == "## Deploying on Kubernetes"
    section = text[text.index("## Deploying on Kubernetes"):text.index("## Running it")]
    version = re.search(r"^VERSION=\$\{KUSTOMIZE_VERSION:-(v[\d.]+)\}$", KUSTOMIZE.read_text(), re.MULTILINE).group(1)
    assert f"Kubernetes {TARGET}" in section and f"kustomize {version}" in section
    assert "kubectl apply -k deploy/overlays/example" in section
