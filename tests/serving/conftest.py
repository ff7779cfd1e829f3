"""Session fixtures for the serving/ tests: one digits export, model servers and an official-stub client.

Everything that imports TensorFlow runs in subprocesses; this process never does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.process import PROJECT_ROOT, ModelServerProcess

CLIENT_SCRIPT = Path(__file__).with_name("official_client.py")


class OfficialClient:
    """JSON-lines front end of official_client.py (a long-lived subprocess using the official stubs)."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        self._proc = subprocess.Popen([sys.executable, str(CLIENT_SCRIPT)], cwd=PROJECT_ROOT, env=env,
                                      text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        assert json.loads(self._readline()) == {"ready": True}

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"official client died (exit {self._proc.poll()})")
        return line

    def __call__(self, op: str, address: str, **fields: object) -> dict:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, "address": address, **fields}) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._readline())

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="session")
def export_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Export the digits model once for the session; keeps the export's stdout and duration."""
    output_dir = tmp_path_factory.mktemp("serving_models")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "serving.export_model", "--output-dir", str(output_dir)],
                            cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": output_dir, "stdout": result.stdout, "seconds": time.monotonic() - started}


@pytest.fixture(scope="session")
def exported_models_dir(export_result: dict) -> Path:
    return export_result["dir"]


@pytest.fixture(scope="session")
def serving_server(exported_models_dir: Path) -> Iterator[ModelServerProcess]:
    """The model server with default settings on a free port."""
    with ModelServerProcess(exported_models_dir, port=0) as server:
        yield server


@pytest.fixture(scope="session")
def official_client() -> Iterator[OfficialClient]:
    client = OfficialClient()
    yield client
    client.close()

