"""The lock is what runs: the venv holds exactly uv.lock, requirements.txt (the image's pins) is uv.lock's export,
the build backend is the locked one, and the generated protos ask no more of grpcio and protobuf than
pyproject.toml's ranges promise to people who install the package elsewhere."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The exports scripts/lock.sh writes (without their headers): the bridge image's runtime and build backend, and the
# model export image's TensorFlow (the server extra).
# The bridge's image carries the tracing extra (off unless --tracing; nothing imported then).
EXPORTS = {"requirements.txt": ["--group", "build", "--extra", "tracing"], "serving/requirements.txt": ["--extra", "server"]}


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


@pytest.mark.parametrize("path", EXPORTS)
def test_each_requirements_file_is_the_export_of_the_lock(path):
    result = uv("export", "--frozen", "--quiet", "--no-dev", "--no-emit-project", *EXPORTS[path],
                "--format", "requirements.txt", "--no-header")
    assert result.returncode == 0, result.stderr
    checked_in = "\n".join(line for line in (ROOT / path).read_text().splitlines()
                           if not line.startswith("#  ") and not line.startswith("# This file"))
    assert checked_in.strip() == result.stdout.strip(), f"{path} is stale: run scripts/lock.sh"


def pins(path: str) -> dict[str, str]:
    """{package: version} of a requirements file, after checking that every entry carries a hash."""
    text = (ROOT / path).read_text()
    found = re.findall(r"^([a-z0-9._-]+)==(\S+)", text, re.MULTILINE)
    entries = re.split(r"\n(?=[a-z0-9])", text[text.index(found[0][0]):])
    assert len(entries) == len(found) and all("--hash=sha256:" in entry for entry in entries)
    return dict(found)


def test_the_bridge_images_requirements_pin_the_locked_runtime_without_tensorflow():
    pinned = pins("requirements.txt")
    assert {"confluent-kafka", "grpcio", "protobuf", "pillow", "requests", "setuptools"} <= set(pinned)
    assert all(version in locked_versions()[name] for name, version in pinned.items())
    assert not {"tensorflow", "keras", "tensorflow-serving-api"} & set(pinned), "the bridge needs no TensorFlow"


def test_the_export_images_requirements_pin_the_locked_tensorflow():
    pinned = pins("serving/requirements.txt")
    assert {"tensorflow", "scikit-learn", "pillow", "numpy"} <= set(pinned)
    assert all(version in locked_versions()[name] for name, version in pinned.items())


def test_the_build_backend_is_the_locked_setuptools():
    [constraint] = PYPROJECT["tool"]["uv"]["build-constraint-dependencies"]
    assert constraint == f"setuptools=={''.join(locked_versions()['setuptools'])}", "run scripts/lock.sh"


def test_generated_protos_need_no_newer_runtime_than_pyproject_allows():
    """A pip user with the lowest grpcio and protobuf pyproject.toml allows can import the generated modules."""
    generated = [path for api in ("tfs_api", "oip_api") for path in (ROOT / "bridge" / api).glob("*_pb2*.py")]
    grpc_needs = {Version(v) for path in generated if path.name.endswith("_pb2_grpc.py")
                  for v in re.findall(r"GRPC_GENERATED_VERSION = '([^']+)'", path.read_text())}
    protobuf_needs = {Version(".".join(v)) for path in generated for v in re.findall(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())}
    assert grpc_needs and protobuf_needs
    assert max(grpc_needs) <= floor("grpcio"), "raise grpcio's floor in pyproject.toml to the generator's version"
    assert max(protobuf_needs) <= floor("protobuf"), "raise protobuf's floor in pyproject.toml"
    assert max(protobuf_needs).major == floor("protobuf").major
