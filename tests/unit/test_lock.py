"""The lock is what runs: the venv holds exactly uv.lock, requirements.txt (the image's pins) is uv.lock's export,
the build backend is the locked one, and the generated protos ask no more of grpcio and protobuf than
pyproject.toml's ranges promise to people who install the package elsewhere."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The same export as scripts/lock.sh writes, without its header.
EXPORT = ["export", "--frozen", "--quiet", "--no-dev", "--group", "build", "--no-emit-project",
          "--format", "requirements.txt", "--no-header"]


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "uv.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def floor(name: str) -> Version:
    """The lowest version pyproject.toml's dependencies allow for the package."""
    [requirement] = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]
                     if Requirement(text).name == name]
    [lowest] = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return lowest


def test_the_venv_holds_exactly_the_lock():
    result = uv("sync", "--locked", "--check", "--offline", "--extra", "server", "--extra", "embedded",
                "--extra", "test")
    assert result.returncode == 0, f"the venv is not uv.lock (run scripts/setup.sh): {result.stderr[-2000:]}"


def test_requirements_txt_is_the_export_of_the_lock():
    result = uv(*EXPORT)
    assert result.returncode == 0, result.stderr
    checked_in = "\n".join(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                           if not line.startswith("#  ") and not line.startswith("# This file"))
    assert checked_in.strip() == result.stdout.strip(), "requirements.txt is stale: run scripts/lock.sh"


def test_requirements_txt_pins_every_package_by_hash():
    text = (ROOT / "requirements.txt").read_text()
    pins = re.findall(r"^([a-z0-9._-]+)==(\S+)", text, re.MULTILINE)
    assert {"confluent-kafka", "grpcio", "protobuf", "pillow", "requests", "setuptools"} <= {n for n, _ in pins}
    for name, version in pins:
        assert version in locked_versions()[name]
    entries = re.split(r"\n(?=[a-z0-9])", text[text.index(pins[0][0]):])
    assert all("--hash=sha256:" in entry for entry in entries)
    assert not re.search(r"tensorflow|keras", text), "the image's runtime needs no TensorFlow"


def test_the_build_backend_is_the_locked_setuptools():
    [constraint] = PYPROJECT["tool"]["uv"]["build-constraint-dependencies"]
    assert constraint == f"setuptools=={''.join(locked_versions()['setuptools'])}", "run scripts/lock.sh"


def test_generated_protos_need_no_newer_runtime_than_pyproject_allows():
    """A pip user with the lowest grpcio and protobuf pyproject.toml allows can import the generated modules."""
    api = ROOT / "bridge" / "tfs_api"
    grpc_needs = {Version(v) for path in api.glob("*_pb2_grpc.py")
                  for v in re.findall(r"GRPC_GENERATED_VERSION = '([^']+)'", path.read_text())}
    protobuf_needs = {Version(".".join(v)) for path in api.glob("*_pb2.py") for v in re.findall(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())}
    assert grpc_needs and protobuf_needs
    assert max(grpc_needs) <= floor("grpcio"), "raise grpcio's floor in pyproject.toml to the generator's version"
    assert max(protobuf_needs) <= floor("protobuf"), "raise protobuf's floor in pyproject.toml"
    assert max(protobuf_needs).major == floor("protobuf").major
