"""docker-compose.yml, checked without a Docker engine: valid for Compose v2, by its own loader
(compose-spec/compose-go/v2 in scripts/compose_config/, which validates, interpolates and resolves the file as
`docker compose config` does), and consistent with the bridge, serving/, monitoring/
and the scripts: every TFS_BRIDGE_* variable is one the bridge understands, the services start in the right order, the
model TF Serving loads is the one exported and the one the bridge asks for, the bridge's healthcheck asks its /livez
and it has time to shut down, Prometheus scrapes the bridge and TF Serving where they serve their metrics, and
Prometheus and Grafana get the files of monitoring/.
"""

from __future__ import annotations

import ast
import http.server
import os
import functools
import re
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from bridge.config import Settings, known_env_vars, parse_settings
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MODELS = ("imagenet", "digits")
MONITORING = ROOT / "monitoring"


@functools.cache
def compose_config_tool() -> str:
    """scripts/compose_config.sh's program, built on first use (scripts/setup.sh builds it ahead); no skip."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "compose_config.sh"), "--path"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"scripts/compose_config.sh could not build compose-config:\n{result.stderr}"
    return result.stdout.strip()


def compose_config(*args: str, file: Path = COMPOSE_FILE, **variables: str) -> subprocess.CompletedProcess:
    """`docker compose -f FILE config ARGS` with Compose v2's loader, in an environment of these variables only
    (none of the caller's MODEL, PARTITIONS or COMPOSE_*)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "PARTITIONS") and not k.startswith("COMPOSE_")}
    return subprocess.run([compose_config_tool(), "-f", str(file), *args], cwd=file.parent,
                          env={**env, **variables}, capture_output=True, text=True, timeout=60)


def config(**variables: str) -> dict:
    """The compose file as Compose resolves it: variables substituted, YAML merges applied, defaults filled in,
    paths absolute, ports and volumes in their long form."""
    result = compose_config(**variables)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return yaml.safe_load(result.stdout)


def conditions(service: dict) -> dict[str, str]:
    """depends_on as {service: condition}."""
    return {name: dependency["condition"] for name, dependency in service.get("depends_on", {}).items()}


@pytest.fixture(scope="module")
def services() -> dict:
    return config()["services"]


# --- valid -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variables", [{}, {"MODEL": "digits", "PARTITIONS": "6"}])
def test_the_compose_file_is_valid(variables):
    result = compose_config("-q", **variables)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings either (e.g. an unset variable)


@pytest.mark.parametrize("broken, complaint", [
    (("    depends_on:", "    depend_on:"), "depend_on"),
    (("      interval: 5s", "      intervall: 5s"), "intervall"),
    (("condition: service_healthy", "condition: service_healty"), "condition value must be one of"),
    (('      - "8500:8500"', "      - 8500:8500:8500:x"), "Invalid ip address 8500:8500"),
    (("  models:\n", "  modles:\n"), "refers to undefined volume models"),
    (("      - ./serving:/config:ro\n", "      - ./serving:/config:ro:x\n"), "too many colons"),
    (('TFS_BRIDGE_METRICS_PORT: "9464"', "TFS_BRIDGE_METRICS_PORT: [9464]"), "TFS_BRIDGE_METRICS_PORT must be a"),
])
def test_the_validator_rejects_a_broken_copy(tmp_path, broken, complaint):
    old, new = broken
    text = COMPOSE_FILE.read_text()
    assert old in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(old, new))
    result = compose_config("-q", file=copy)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr



def test_the_validator_warns_of_an_unset_variable(tmp_path):
    """What the validity test's empty stderr rules out."""
    text = COMPOSE_FILE.read_text()
    assert "${MODEL:-imagenet}" in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace("${MODEL:-imagenet}", "${MODELL}"))
    result = compose_config("-q", file=copy)
    assert result.returncode == 0 and 'The \\"MODELL\\" variable is not set' in result.stderr, result.stderr

# --- the bridge --------------------------------------------------------------------------------------------

def test_every_variable_handed_to_the_bridge_is_one_it_understands_with_a_valid_value(services):
    handed = {name: str(value) for name, value in services["bridge"]["environment"].items()}
    # The OpenTelemetry SDK reads its own OTEL_* variables (the bridge with --tracing); every other one is the bridge's.
    env = {name: value for name, value in handed.items() if not name.startswith("OTEL_")}
    assert set(handed) - set(env) == {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}
    assert set(env) <= known_env_vars(), sorted(set(env) - known_env_vars())
    settings = parse_settings([], env)  # raises ConfigError for an unknown variable or a bad value
    assert settings.bootstrap_servers == "kafka:29092"
    assert settings.model_server == "tfserving:8500"


def test_a_misspelled_bridge_variable_would_be_caught(services):
    env = {name: str(value) for name, value in services["bridge"]["environment"].items()}
    env["TFS_BRIDGE_MODEL_NAM"] = env.pop("TFS_BRIDGE_MODEL_NAME")
    assert not set(env) <= known_env_vars()
    with pytest.raises(ConfigError, match="did you mean TFS_BRIDGE_MODEL_NAME"):
        parse_settings([], env)


def test_the_bridge_is_built_from_the_root_dockerfile_and_starts_after_kafka_the_topics_and_the_model(services):
    bridge = services["bridge"]
    assert Path(bridge["build"]["context"]) == ROOT and bridge["build"]["dockerfile"] == "Dockerfile"
    assert conditions(bridge) == {"kafka": "service_healthy", "topics": "service_completed_successfully",
                                  "tfserving": "service_healthy"}
    assert conditions(services["topics"]) == {"kafka": "service_healthy"}
    assert conditions(services["tfserving"]) == {"model-export": "service_completed_successfully"}
    assert "depends_on" not in services["model-export"]  # exports while Kafka starts


def test_every_service_waited_on_until_healthy_has_a_healthcheck(services):
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert services[dependency]["healthcheck"]["test"], dependency
            else:
                assert services[dependency].get("restart", "no") == "no", f"{dependency} is one-shot"


def test_the_bridge_can_be_scaled(services):
    bridge = services["bridge"]
    assert "container_name" not in bridge and "ports" not in bridge  # both would clash between replicas
    assert "TFS_BRIDGE_TRANSACTIONAL_ID" not in bridge["environment"]  # derived per replica from its host name


# --- Kafka and the topics ----------------------------------------------------------------------------------

def test_kafka_is_one_kraft_node_where_transactions_work(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("OFFSETS_TOPIC_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                 "TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[f"KAFKA_{name}"] == "1", name


def test_kafka_listens_for_the_compose_network_and_for_the_host(services):
    kafka = services["kafka"]
    env = kafka["environment"]
    advertised = dict(reversed(item.split("://")) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = {name: address.rsplit(":", 1)[1] for name, address in
                 (item.split("://") for item in env["KAFKA_LISTENERS"].split(","))}
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    # Containers (the bridge, the topics service) use kafka:29092; the host (kcat, scripts/) uses localhost:9092.
    assert services["bridge"]["environment"]["TFS_BRIDGE_BOOTSTRAP_SERVERS"] in advertised
    assert "kafka:29092" in services["topics"]["command"][0]
    assert "localhost:9092" in advertised
    published = {(p["published"], p["target"]) for p in kafka["ports"]}
    assert ("9092", 9092) in {(str(a), b) for a, b in published}
    for address, name in advertised.items():
        assert listeners[name] == address.rsplit(":", 1)[1] and protocols[name] == "PLAINTEXT"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    for script in ("send-urls", "read-predictions"):
        assert "localhost:9092" in (ROOT / "scripts" / script).read_text()


def test_the_topics_service_creates_the_bridges_topics_with_the_partitions_asked_for(services):
    topics = services["topics"]
    bridge = services["bridge"]["environment"]
    names = ("TFS_BRIDGE_INPUT_TOPIC", "TFS_BRIDGE_OUTPUT_TOPIC", "TFS_BRIDGE_DEAD_LETTER_TOPIC")
    assert {name: topics["environment"][name] for name in names} == {name: bridge[name] for name in names}
    assert [bridge[name] for name in names] == ["ImageInputTopic", "ImageOutputTopic", "ImageDeadLetterTopic"]
    script = topics["command"][0]
    for name in names:
        # $$ in the file is a literal $: the container's shell expands the variable, Compose does not.
        assert f'"${name}"' in script and f'"$${name}"' in COMPOSE_FILE.read_text()
    assert "--if-not-exists" in script and "--replication-factor 1" in script
    assert str(topics["environment"]["PARTITIONS"]) == "3"
    assert str(config(PARTITIONS="6")["services"]["topics"]["environment"]["PARTITIONS"]) == "6"


# --- the model ---------------------------------------------------------------------------------------------

def export_model_choices() -> list[str]:
    """The --model choices of serving/export_model.py, read from its source (importing it loads TensorFlow)."""
    tree = ast.parse((ROOT / "serving" / "export_model.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                and node.args and getattr(node.args[0], "value", None) == "--model"):
            choices = next(k.value for k in node.keywords if k.arg == "choices")
            return [ast.literal_eval(element) for element in choices.elts]
    raise AssertionError("serving/export_model.py has no --model argument")


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service; a source without a slash is a named volume."""
    pairs = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            pairs.append((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            pairs.append((source, target))
    return pairs


def host_path(service: dict, container_path: str) -> Path:
    """Where a file (or folder) the container sees comes from, through the service's bind mounts."""
    for source, target in mounts(service):
        target = target.rstrip("/")
        if "/" in source and container_path == target:
            return Path(source)
        if "/" in source and container_path.startswith(target + "/"):
            return Path(source) / container_path[len(target) + 1:]
    raise AssertionError(f"{container_path} is not bind-mounted")


def parse_model_config(path: Path) -> list[tuple[str, str, str]]:
    """(name, base_path, platform) of each model in a ModelServerConfig text proto, parsed with TF Serving's own
    message in a subprocess (its descriptors clash with the bridge's protos in one process)."""
    code = ("import sys\nfrom google.protobuf import text_format\n"
            "from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig\n"
            "config = text_format.Parse(open(sys.argv[1]).read(), ModelServerConfig())\n"
            "for m in config.model_config_list.config: print(m.name, m.base_path, m.model_platform)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [tuple(line.split()) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("model", MODELS)
def test_tf_serving_loads_the_exported_model_the_bridge_asks_for(model):
    assert model in export_model_choices()
    variables = {} if model == "imagenet" else {"MODEL": model}  # imagenet is the default
    services = config(**variables)["services"]
    export, serving, bridge = services["model-export"], services["tfserving"], services["bridge"]
    assert export["environment"]["MODEL"] == model
    assert bridge["environment"]["TFS_BRIDGE_MODEL_NAME"] == model
    assert serving["image"].startswith("tensorflow/serving:")
    flags = dict(arg.lstrip("-").partition("=")[::2] for arg in serving["command"])
    assert "enable_batching" in flags
    model_config = host_path(serving, flags["model_config_file"])
    assert model_config.parent == ROOT / "serving"
    # The exporter writes <volume>/<model>/1; TF Serving reads the same volume at the same path.
    models_dir = export["environment"]["MODEL_DIR"]
    named = {service: {s: t for s, t in mounts(services[service]) if "/" not in s}
             for service in ("model-export", "tfserving")}
    assert named["model-export"] == named["tfserving"] == {"models": models_dir}
    assert parse_model_config(model_config) == [(model, f"{models_dir}/{model}", "tensorflow")]
    assert f"GET /v1/models/{model} " in " ".join(serving["healthcheck"]["test"])


def test_the_bridge_batches_fit_the_servers_batches(services):
    serving = services["tfserving"]
    flags = dict(arg.lstrip("-").partition("=")[::2] for arg in serving["command"])
    batching = host_path(serving, flags["batching_parameters_file"]).read_text()
    server_max = int(re.search(r"^max_batch_size\s*\{\s*value:\s*(\d+)", batching, re.MULTILINE).group(1))
    bridge_max = parse_settings([], {k: str(v) for k, v in services["bridge"]["environment"].items()}).max_batch_size
    assert bridge_max <= server_max  # a larger batch is INVALID_ARGUMENT from TF Serving


REGISTRY_IMAGES = {"kafka": "apache/kafka:4.1.1", "topics": "apache/kafka:4.1.1",
                   "tfserving": "tensorflow/serving:2.19.0", "prometheus": "prom/prometheus:v3.16.0",
                   "grafana": "grafana/grafana:13.2.3"}
IMAGE_VARIABLES = {"kafka": "KAFKA_IMAGE", "topics": "KAFKA_IMAGE", "tfserving": "TFSERVING_IMAGE",
                   "prometheus": "PROMETHEUS_IMAGE", "grafana": "GRAFANA_IMAGE"}


def test_images_are_the_registry_images_unless_their_variables_name_others(services):
    assert {name: service["image"] for name, service in services.items() if "image" in service} == REGISTRY_IMAGES
    built = {name: service["build"]["args"] for name, service in services.items() if "build" in service}
    assert built == {"bridge": {"PYTHON_IMAGE": "python:3.11-slim"}, "model-export": {"PYTHON_IMAGE": "python:3.11-slim"}}
    mirror = {variable: f"mirror.example/{variable.lower()}:1" for variable in IMAGE_VARIABLES.values()}
    moved = config(**mirror, PYTHON_IMAGE="mirror.example/python:3.11")["services"]
    assert {name: moved[name]["image"] for name in IMAGE_VARIABLES} == \
        {name: mirror[variable] for name, variable in IMAGE_VARIABLES.items()}
    assert {moved[name]["build"]["args"]["PYTHON_IMAGE"] for name in built} == {"mirror.example/python:3.11"}


def test_the_bridge_runs_on_a_read_only_root_file_system_with_tmp_in_memory(services):
    assert services["bridge"]["read_only"] is True and services["bridge"]["tmpfs"] == ["/tmp"]


def test_the_export_service_runs_the_entrypoint_of_its_image(services):
    export = services["model-export"]
    dockerfile = Path(export["build"]["context"]) / export["build"]["dockerfile"]
    text = dockerfile.read_text()
    assert text.startswith("#") and re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.MULTILINE)
    # TensorFlow and the rest exactly as uv.lock pins them (tests/unit/test_lock.py checks the file is its export).
    assert "pip install --no-cache-dir --require-hashes -r /tmp/serving-requirements.txt" in text
    assert 'ENTRYPOINT ["sh", "/usr/local/bin/export-entrypoint.sh"]' in text
    copied = [word for line in text.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]]
    for name in copied:
        assert (dockerfile.parent / name).is_file(), name
    imported = re.findall(r"^from serving import (\w+)", (ROOT / "serving" / "export_model.py").read_text(), re.M)
    assert {f"{module}.py" for module in imported} <= set(copied)


def run_entrypoint(tmp_path: Path, model: str) -> subprocess.CompletedProcess:
    """serving/export-entrypoint.sh with a stand-in python3 that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/python3-args\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL": model, "MODEL_DIR": str(tmp_path / "models")}
    return subprocess.run(["sh", str(ROOT / "serving" / "export-entrypoint.sh")], env=env, capture_output=True,
                          text=True, timeout=30)


def test_the_export_runs_once_and_is_skipped_when_the_model_exists(tmp_path):
    result = run_entrypoint(tmp_path, "digits")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "python3-args").read_text().split() == [
        "-m", "serving.export_model", "--model", "digits", "--output-dir", str(tmp_path / "models"), "--version", "1"]

    (tmp_path / "python3-args").unlink()
    saved = tmp_path / "models" / "digits" / "1" / "saved_model.pb"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    result = run_entrypoint(tmp_path, "digits")
    assert result.returncode == 0 and "already exported" in result.stdout
    assert not (tmp_path / "python3-args").exists()


# --- health, shutdown and monitoring -----------------------------------------------------------------------

def bridge_env(services: dict) -> dict[str, str]:
    return {name: str(value) for name, value in services["bridge"]["environment"].items()}


def setting_default(name: str):
    defaults = {f.name: f.default for f in fields(Settings)}
    assert name in defaults, f"bridge.config.Settings has no {name}"
    return defaults[name]


def metrics_port(services: dict) -> int:
    """The port of the bridge's /metrics, /livez and /readyz: TFS_BRIDGE_METRICS_PORT, read without
    parse_settings so that this holds while the bridge's settings change."""
    return int(bridge_env(services).get("TFS_BRIDGE_METRICS_PORT", setting_default("metrics_port")))


def duration_seconds(value: str) -> float:
    """A Compose duration (1m30s, 45s, 500ms) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def test_the_bridge_serves_its_metrics_on_the_port_compose_names(services):
    env = bridge_env(services)
    assert env["TFS_BRIDGE_METRICS_PORT"] == "9464"
    # Prometheus scrapes from another container: the port must listen beyond loopback (the default 0.0.0.0).
    assert env.get("TFS_BRIDGE_METRICS_HOST", setting_default("metrics_host")) not in ("127.0.0.1", "localhost")


class Livez(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self):
        Livez.paths.append(self.path)
        self.send_response(Livez.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(test: list[str], served: int, port: int) -> int:
    """The healthcheck's command with this machine's Python, its URL pointed at `port` instead."""
    assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4 and f":{served}/" in test[3], test
    return subprocess.run([sys.executable, "-c", test[3].replace(f":{served}/", f":{port}/")],
                          capture_output=True, timeout=30).returncode


def test_the_bridge_healthcheck_asks_livez_on_the_metrics_port(services):
    test = services["bridge"]["healthcheck"]["test"]
    # CMD: no shell, and python, which the image has (it has no curl).
    assert test[:3] == ["CMD", "python", "-c"], test
    assert re.search(r"^ARG PYTHON_IMAGE=python:", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert f"'http://127.0.0.1:{metrics_port(services)}/livez'" in test[3]
    assert duration_seconds(services["bridge"]["healthcheck"]["timeout"]) > 5  # the urlopen timeout in the command


def test_the_bridge_healthcheck_passes_on_200_and_fails_on_503_or_no_answer(services):
    """The command itself, run against a stand-in /livez: urlopen raises on a 503, so the exit code is 1."""
    test, served = services["bridge"]["healthcheck"]["test"], metrics_port(services)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Livez)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        Livez.paths.clear()
        Livez.status = 200
        assert run_healthcheck(test, served, port) == 0
        Livez.status = 503
        assert run_healthcheck(test, served, port) != 0
        assert Livez.paths == ["/livez", "/livez"]
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck(test, served, port) != 0  # nothing listening


def test_the_bridge_has_time_to_finish_its_batch_when_stopped(services):
    """`docker compose stop` sends SIGTERM, then SIGKILL after stop_grace_period (default 10 s): the bridge's own
    shutdown timeout must run out first, with a margin for closing its clients."""
    env = bridge_env(services)
    timeout = int(env.get("TFS_BRIDGE_SHUTDOWN_TIMEOUT_MS", setting_default("shutdown_timeout_ms"))) / 1000
    assert timeout == 30
    assert duration_seconds(services["bridge"]["stop_grace_period"]) >= timeout + 10


def test_tf_serving_exports_prometheus_metrics_where_prometheus_scrapes(services):
    serving = services["tfserving"]
    flags = dict(arg.lstrip("-").partition("=")[::2] for arg in serving["command"])
    monitoring_config = host_path(serving, flags["monitoring_config_file"])
    assert monitoring_config == MONITORING / "tfserving" / "monitoring.config"
    prometheus = parse_monitoring_config(monitoring_config)
    assert prometheus == {"enable": True, "path": "/monitoring/prometheus/metrics"}
    job = scrape_jobs()["tfserving"]
    assert job["metrics_path"] == prometheus["path"]
    # The image's entrypoint serves REST on 8501 (--rest_api_port), the port published and scraped.
    assert job["static_configs"] == [{"targets": ["tfserving:8501"]}]
    assert {(str(p["published"]), p["target"]) for p in serving["ports"]} >= {("8501", 8501)}


def parse_monitoring_config(path: Path) -> dict:
    """The prometheus_config of a MonitoringConfig text proto, parsed with TF Serving's message definition
    (tensorflow_serving/config/monitoring_config.proto; the tensorflow-serving-api package does not ship it)
    built in a pool of its own: an unknown field or a bad value fails as it would in tensorflow_model_server."""
    proto = descriptor_pb2.FileDescriptorProto(name="monitoring_config.proto", package="tensorflow.serving",
                                               syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
    config = text_format.Parse(path.read_text(), cls())
    return {"enable": config.prometheus_config.enable, "path": config.prometheus_config.path}


def scrape_jobs() -> dict[str, dict]:
    text = (MONITORING / "prometheus" / "prometheus.yml").read_text()
    return {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}


def test_prometheus_finds_every_bridge_replica_on_its_metrics_port(services):
    job = scrape_jobs()["bridge"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Compose's DNS answers a service's name with an A record per container: every replica of --scale bridge=N.
    assert [(sd["names"], sd["type"], sd["port"]) for sd in job["dns_sd_configs"]] == [
        (["bridge"], "A", metrics_port(services))]
    assert "static_configs" not in job
    assert "bridge" in services and "tfserving" in services


def test_prometheus_and_grafana_are_pinned_and_published(services):
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prometheus["image"]), prometheus["image"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), grafana["image"]
    assert {(str(p["published"]), p["target"]) for p in prometheus["ports"]} == {("9090", 9090)}
    assert {(str(p["published"]), p["target"]) for p in grafana["ports"]} == {("3000", 3000)}
    env = {k: str(v) for k, v in grafana["environment"].items()}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "prometheus" not in services["bridge"].get("depends_on", {})  # the bridge runs without monitoring


def test_prometheus_and_grafana_mount_the_files_of_monitoring(services):
    prometheus, grafana = services["prometheus"], services["grafana"]
    flags = dict(arg.lstrip("-").partition("=")[::2] for arg in prometheus["command"])
    assert host_path(prometheus, flags["config.file"]) == MONITORING / "prometheus" / "prometheus.yml"
    assert host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == \
        MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    assert host_path(grafana, "/etc/grafana/provisioning/dashboards/dashboards.yml") == \
        MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
    providers = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    for provider in providers["providers"]:
        assert host_path(grafana, provider["options"]["path"]) == MONITORING / "grafana" / "dashboards"
    for service in (prometheus, grafana):
        for source, _ in mounts(service):
            if "/" in source:  # a bind mount: the file or folder is there, read-only, under monitoring/
                assert Path(source).exists() and Path(source).is_relative_to(MONITORING), source
    assert all(volume["read_only"] for service in (prometheus, grafana) for volume in service["volumes"]
               if volume["type"] == "bind")
