"""`tfs-bridge check` and `run`'s start-up checks against the real broker and model server."""

import subprocess
import sys

import pytest

from scripts.bridge_process import ROOT

pytestmark = pytest.mark.integration


def bridge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def stack_flags(kafka, model_server, topics) -> list[str]:
    return ["--bootstrap-servers", kafka.bootstrap_servers, "--model-server", model_server.address, *topics.flags()]


def test_check_passes_on_a_ready_stack_and_describes_it(kafka, model_server, topics):
    result = bridge("check", *stack_flags(kafka, model_server, topics))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("OK") for line in lines), lines
    assert any(topics.input in line and "3" in line for line in lines)
    assert any("AVAILABLE" in line for line in lines)
    assert any("images" in line and "32,32,3" in line for line in lines)


def test_check_fails_when_a_topic_is_missing(kafka, model_server, topics):
    result = bridge("check", *stack_flags(kafka, model_server, topics), "--output-topic", "no-such-topic")
    assert result.returncode == 1
    assert any(line.startswith("FAIL") and "no-such-topic" in line for line in result.stdout.splitlines())


@pytest.mark.parametrize("flags, message", [
    (["--model-name", "nosuch"], "NOT_FOUND"),
    (["--model-version", "7"], "NOT_FOUND"),
    (["--signature-name", "nosuch"], "nosuch"),
    (["--version-label", "canary"], "INVALID_ARGUMENT"),
])
def test_run_refuses_a_wrong_model_in_one_line_with_exit_2_before_consuming(kafka, model_server, topics,
                                                                            flags, message):
    result = bridge("run", *stack_flags(kafka, model_server, topics), *flags)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfs-bridge: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_run_refuses_a_missing_topic_in_one_line_with_exit_2(kafka, model_server, topics):
    result = bridge("run", *stack_flags(kafka, model_server, topics), "--dead-letter-topic", "no-such-dlq")
    assert result.returncode == 2
    assert "no-such-dlq" in result.stderr and "Traceback" not in result.stderr
