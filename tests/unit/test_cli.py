import logging
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from bridge import cli
from bridge.ops.logs import OneLineFormatter
from bridge.config import Settings
from bridge.errors import FatalKafkaError, ModelGone, ModelNotFound, ModelServerUnavailable
from bridge.model.backend import VersionStatus
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType

ROOT = Path(__file__).resolve().parents[2]


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFS_BRIDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def restore_logging():
    """run and check configure the root logger; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_app(monkeypatch):
    """Stands in for bridge.loop.run, recording the settings run_bridge gets."""
    app = types.SimpleNamespace(calls=[], result=0)

    def run_bridge(settings):
        app.calls.append(settings)
        if isinstance(app.result, BaseException):
            raise app.result
        return app.result

    monkeypatch.setitem(sys.modules, "bridge.loop.run", types.SimpleNamespace(run_bridge=run_bridge))
    return app


def test_a_bad_setting_exits_2_with_one_line_and_no_traceback(capsys, fake_app):
    assert cli.main(["run", "--max-batch-size", "0"], env={}) == 2
    captured = capsys.readouterr()
    assert captured.err == ("tfs-bridge: error: --max-batch-size (TFS_BRIDGE_MAX_BATCH_SIZE) "
                            "must be a positive integer, got '0'\n")
    assert captured.out == "" and fake_app.calls == []


@pytest.mark.parametrize("argv, env", [([], {}), (["serve"], {}), (["run", "--bogus"], {}),
                                       (["run"], {"TFS_BRIDGE_TOPK": "3"})])
def test_usage_errors_exit_2_with_one_line(capsys, argv, env):
    assert cli.main(argv, env=env) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfs-bridge: error: ") and err.count("\n") == 1


def test_run_hands_the_settings_to_run_bridge(fake_app):
    fake_app.result = 3
    assert cli.main(["run", "--top-k", "2"], env={"TFS_BRIDGE_GROUP_ID": "g"}) == 3
    assert fake_app.calls == [Settings(top_k=2, group_id="g")]


def test_a_bridge_error_exits_1_with_one_line(capsys, fake_app):
    fake_app.result = ModelGone("the serving signature\nchanged")
    assert cli.main(["run"], env={}) == 1
    assert capsys.readouterr().err == "tfs-bridge: error: the serving signature changed\n"


def test_a_fatal_kafka_error_exits_1_at_once_without_closing_the_clients(capsys, fake_app):
    fake_app.result = FatalKafkaError("fenced\nby another instance")
    exits = []
    assert cli.main(["run"], env={}, hard_exit=exits.append) == 1
    assert exits == [1]
    assert capsys.readouterr().err == "tfs-bridge: error: fenced by another instance\n"


def test_keyboard_interrupt_exits_130(fake_app):
    fake_app.result = KeyboardInterrupt()
    assert cli.main(["run"], env={}) == 130


def test_help_and_version_exit_0(capsys):
    assert cli.main(["run", "--help"], env={}) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-batch-size" in help_text and "TFS_BRIDGE_MAX_BATCH_SIZE; default 32" in help_text
    assert cli.main(["--version"], env={}) == 0
    assert capsys.readouterr().out.startswith("tfs-bridge ")


def test_json_log_lines_parse_and_carry_the_redacted_message_and_traceback():
    import json

    from bridge.ops.logs import JsonFormatter

    record = logging.LogRecord("bridge.images.fetch", logging.WARNING, __file__, 1,
                               "fetch of %s failed", ("https://user:secret@h/x.png?sig=abc",), None)
    try:
        raise ValueError("boom at https://user:secret@h/y.png?token=t")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert "\n" not in line
    assert parsed["level"] == "WARNING" and parsed["logger"] == "bridge.images.fetch"
    assert parsed["message"].startswith("fetch of https://h/x.png") and "boom" in parsed["exception"]
    assert "secret" not in line and "sig=abc" not in line and "token=t" not in line
    assert parsed["time"].endswith("+00:00")


def test_log_lines_are_one_line_each():
    record = logging.LogRecord("bridge.loop.run", logging.ERROR, __file__, 1, "batch failed", None, None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = OneLineFormatter().format(record)
    assert "\n" not in line and " ERROR bridge.loop.run batch failed | Traceback" in line and "boom" in line


# --- check, with fakes for Kafka and the model server --------------------------------------------------------

class FakeAdmin:
    topics = {"ImageInputTopic": 3, "ImageOutputTopic": 1, "ImageDeadLetterTopic": 1}
    configs = []

    def __init__(self, config):
        self.configs.append(config)

    def list_topics(self, timeout):
        topic = lambda n: types.SimpleNamespace(error=None, partitions=dict.fromkeys(range(n)))  # noqa: E731
        return types.SimpleNamespace(brokers={1: None}, cluster_id="c1",
                                     topics={name: topic(n) for name, n in self.topics.items()})


class FakeModelClient:
    statuses = [VersionStatus(1, "AVAILABLE")]
    signature_error = None

    def __init__(self, settings):
        self.address, self.target = settings.model_server, settings.model_target()

    def close(self):
        pass

    def status(self, timeout=None):
        if isinstance(self.statuses, Exception):
            raise self.statuses
        return self.statuses

    def signature(self, timeout=None):
        if self.signature_error:
            raise self.signature_error
        return ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 8, 8, 3)),
                              InputKind.UINT8, "scores", "classes")


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(cli, "AdminClient", type("Admin", (FakeAdmin,), {"configs": []}))
    client = type("Client", (FakeModelClient,), {})
    monkeypatch.setattr(cli, "open_backend", client)
    return cli.AdminClient, client


def test_check_passes_when_everything_is_ready(capsys, fakes):
    admin, _ = fakes
    assert cli.main(["check", "--kafka-config", "security.protocol=SSL"], env={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "OK   Kafka at 127.0.0.1:9092: 1 broker(s), cluster c1",
        "OK   input topic ImageInputTopic: 3 partition(s)",
        "OK   output topic ImageOutputTopic: 1 partition(s)",
        "OK   dead-letter topic ImageDeadLetterTopic: 1 partition(s)",
        "OK   model 'digits' at 127.0.0.1:8500: version 1 AVAILABLE",
    ]
    assert lines[5].startswith("OK   serving signature serving_default: input images") and len(lines) == 6
    [config] = admin.configs
    assert "group.id" not in config and config["security.protocol"] == "SSL"


def test_check_fails_on_a_missing_topic_and_a_loading_model(capsys, fakes):
    admin, client = fakes
    admin.topics = {"ImageInputTopic": 1}
    client.statuses = [VersionStatus(2, "LOADING")]
    client.signature_error = ModelNotFound("no signature 'x'")
    assert cli.main(["check"], env={}) == 1
    out = capsys.readouterr().out
    assert "FAIL output topic ImageOutputTopic: does not exist" in out
    assert "FAIL model 'digits' at 127.0.0.1:8500: version 2 LOADING" in out
    assert "FAIL serving signature 'serving_default': no signature 'x'" in out


def test_check_skips_the_signature_when_the_model_server_is_down(capsys, fakes):
    _, client = fakes
    client.statuses = ModelServerUnavailable("GetModelStatus: UNAVAILABLE: connection refused")
    assert cli.main(["check"], env={}) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["FAIL model status at 127.0.0.1:8500: GetModelStatus: UNAVAILABLE: connection refused",
                        "FAIL serving signature 'serving_default': not checked (model server unreachable)"]


# --- the real console path -----------------------------------------------------------------------------------

def test_check_against_closed_ports_fails_fast():
    kafka, model = closed_port(), closed_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bridge", "check", "--bootstrap-servers", f"127.0.0.1:{kafka}",
                           "--model-server", f"127.0.0.1:{model}"],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"FAIL Kafka at 127.0.0.1:{kafka}: unreachable")
    assert any(line.startswith(f"FAIL model status at 127.0.0.1:{model}") and "UNAVAILABLE" in line for line in lines)
    assert all(line.startswith("FAIL ") for line in lines) and len(lines) == 6
    assert "Traceback" not in done.stderr
    assert elapsed < 15


def test_console_config_error_and_no_tensorflow():
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['tfs-bridge', 'run', '--top-k', 'x'];"
         "from bridge.cli import main; code = main(); assert 'tensorflow' not in sys.modules; sys.exit(code)"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "tfs-bridge: error: --top-k (TFS_BRIDGE_TOP_K) must be a positive integer, got 'x'\n"


def test_the_cli_refuses_bad_redrive_flags_and_the_bridges_own_group_with_exit_2(capsys):
    assert cli.main(["redrive", "--stage", "nope"], env={}) == 2
    assert cli.main(["redrive", "--redrive-group-id", "g", "--group-id", "g"], env={}) == 2
    assert cli.main(["redrive", "--max-batch-size", "8"], env={}) == 2  # not a redrive flag
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("tfs-bridge: error: ") for line in lines)
    assert "must differ from --group-id" in lines[1]


def test_redrive_help_lists_its_own_flags_and_runs_kafka_settings_only(capsys):
    assert cli.main(["redrive", "--help"], env={}) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--stage", "--type", "--since", "--until", "--max-redrives", "--dry-run", "--redrive-group-id",
                 "--transaction-records", "--deadline-ms", "--bootstrap-servers", "--kafka-config",
                 "--dead-letter-topic", "TFS_BRIDGE_INPUT_TOPIC"):
        assert flag in help_text
    assert "--max-batch-size" not in help_text and "--transactional-id" not in help_text
    assert cli.main(["run", "--help"], env={}) == 0
    assert "--stage" not in capsys.readouterr().out
