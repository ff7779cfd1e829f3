"""serving.model_server --fault-file: Predict answers an injected gRPC code while status and metadata stay normal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.process import ModelServerProcess

pytestmark = pytest.mark.integration

DIGITS = {"name": "digits"}
ONE_DIGIT = {"images": {"digits": 1, "encoding": "uint8"}}


@pytest.fixture(scope="module")
def faulty_server(exported_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ModelServerProcess]:
    fault_file = tmp_path_factory.mktemp("faults") / "fault"
    with ModelServerProcess(exported_models_dir, port=0, fault_file=fault_file) as server:
        yield server


@pytest.fixture
def server(faulty_server: ModelServerProcess) -> Iterator[ModelServerProcess]:
    """The module's server, back to normal after each test."""
    yield faulty_server
    faulty_server.inject_fault(None)


def predict(official_client, server: ModelServerProcess, timeout: float = 30) -> dict:
    return official_client("predict", server.address, model_spec=DIGITS, inputs=ONE_DIGIT, timeout=timeout)


def assert_status_and_metadata_normal(official_client, server: ModelServerProcess) -> None:
    status = official_client("status", server.address, model_spec=DIGITS)
    assert status["code"] == "OK", status
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE"]
    assert official_client("metadata", server.address, model_spec=DIGITS)["code"] == "OK"


def test_switching_faults_while_the_server_runs(server, official_client) -> None:
    assert predict(official_client, server)["code"] == "OK"
    for code in ["UNAUTHENTICATED", "INTERNAL"]:
        server.inject_fault(code)
        answer = predict(official_client, server)
        assert (answer["code"], answer["details"]) == (code, "injected fault")
        assert_status_and_metadata_normal(official_client, server)
    server.inject_fault(None)
    assert predict(official_client, server)["code"] == "OK"
    assert_status_and_metadata_normal(official_client, server)


@pytest.mark.parametrize("code", ["UNKNOWN", "PERMISSION_DENIED", "UNIMPLEMENTED", "UNAVAILABLE"])
def test_each_injected_code_is_answered(server, official_client, code) -> None:
    server.inject_fault(code)
    assert predict(official_client, server)["code"] == code


def test_hang_waits_for_the_clients_deadline(server, official_client) -> None:
    server.inject_fault("UNAVAILABLE", hang=True)
    started = time.monotonic()
    assert predict(official_client, server, timeout=1)["code"] == "DEADLINE_EXCEEDED"
    assert 0.9 < time.monotonic() - started < 10
    assert_status_and_metadata_normal(official_client, server)


def test_an_empty_or_unreadable_fault_file_means_normal_operation(server, official_client) -> None:
    server.fault_file.write_text("")
    assert predict(official_client, server)["code"] == "OK"
    server.fault_file.write_text("NOT_A_CODE\n")
    assert predict(official_client, server)["code"] == "OK"
    with pytest.raises(ValueError, match="not a gRPC error code"):
        server.inject_fault("NOT_A_CODE")
