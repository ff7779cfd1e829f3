"""docker-compose.yml, checked without a Docker engine: valid for a real Compose implementation (docker-compose, which
validates against the compose-spec schema without an engine), and consistent with the bridge, serving/ and the
scripts: every TFS_BRIDGE_* variable is one the bridge understands, the services start in the right order, the model
TF Serving loads is the one exported and the one the bridge asks for.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.config import known_env_vars, parse_settings
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MODELS = ("imagenet", "digits")


def docker_compose(*args: str, file: Path = COMPOSE_FILE, **variables: str) -> subprocess.CompletedProcess:
    executable = shutil.which("docker-compose")
    assert executable, "docker-compose not found: run scripts/setup.sh (Debian package docker-compose)"
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "PARTITIONS") and not k.startswith("COMPOSE_")}
    return subprocess.run([executable, "-f", str(file), *args], cwd=file.parent, env={**env, **variables},
                          capture_output=True, text=True, timeout=60)


def config(**variables: str) -> dict:
    """The compose file as Compose resolves it: variables substituted, YAML merges applied, paths absolute."""
    result = docker_compose("config", **variables)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services() -> dict:
    return config()["services"]


# --- valid -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variables", [{}, {"MODEL": "digits", "PARTITIONS": "6"}])
def test_the_compose_file_is_valid(variables):
    result = docker_compose("config", "-q", **variables)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings either (e.g. an unset variable)


@pytest.mark.parametrize("broken, complaint", [
    (("    depends_on:", "    depend_on:"), "depend_on"),
    (("      interval: 5s", "      intervall: 5s"), "intervall"),
    (("condition: service_healthy", "condition: service_healty"), "service_healty"),
    (('      - "8500:8500"', "      - 8500:8500:8500:x"), "ports"),
    (("  models:\n", "  modles:\n"), "models"),
])
def test_the_validator_rejects_a_broken_copy(tmp_path, broken, complaint):
    old, new = broken
    text = COMPOSE_FILE.read_text()
    assert old in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(old, new))
    (tmp_path / "serving").symlink_to(ROOT / "serving")  # docker-compose checks that build contexts exist
    result = docker_compose("config", "-q", file=copy)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


# --- the bridge --------------------------------------------------------------------------------------------

def test_every_variable_handed_to_the_bridge_is_one_it_understands_with_a_valid_value(services):
    env = {name: str(value) for name, value in services["bridge"]["environment"].items()}
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
    assert Path(bridge["build"]["context"]) == ROOT and "dockerfile" not in bridge["build"]
    assert bridge["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                    "topics": {"condition": "service_completed_successfully"},
                                    "tfserving": {"condition": "service_healthy"}}
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["tfserving"]["depends_on"] == {"model-export": {"condition": "service_completed_successfully"}}
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
        assert f'"$${name}"' in script  # $$: a literal $ for the container's shell
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
    """Where a file the container sees comes from, through the service's bind mounts."""
    for source, target in mounts(service):
        if "/" in source and container_path.startswith(target.rstrip("/") + "/"):
            return Path(source) / container_path[len(target.rstrip("/")) + 1:]
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


def test_the_export_service_runs_the_entrypoint_of_its_image(services):
    export = services["model-export"]
    dockerfile = Path(export["build"]["context"]) / export["build"]["dockerfile"]
    text = dockerfile.read_text()
    assert text.startswith("#") and re.search(r"^FROM tensorflow/tensorflow:\S+$", text, re.MULTILINE)
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
