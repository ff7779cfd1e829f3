"""Local stand-ins for the registry images docker-compose.yml and the Dockerfiles use, built on this machine where no
image registry can be reached, and the environment that points docker compose at them.

- tfs-bridge-standin/python:3.11 for python:3.11-slim (the bridge's and the export's base): Debian's Python 3.11;
- tfs-bridge-standin/java:17: Debian's Java 17, the base of the Kafka stand-in;
- tfs-bridge-standin/kafka:<version> for apache/kafka (standins/kafka/);
- tfs-bridge-standin/tfserving for tensorflow/serving (standins/tfserving/);
- tfs-bridge-standin/prometheus for prom/prometheus (standins/prometheus/, the binary from scripts/prometheus.sh).

The two Debian bases are root file systems made by mmdebstrap and imported; they trust this machine's CA store, so
pip inside a build reaches PyPI through a proxy with a company CA. Each image is labelled with a digest of what it is
made from and rebuilt only when that changes (the engine caches the layers of the rest).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts.kafka_local import fetch_jars, kafka_version

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SUITE = "bookworm"
RECIPE_LABEL = "tfs-bridge.recipe"
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DebianBase:
    """A minbase Debian root file system with these packages, imported as an image."""

    tag: str
    packages: tuple[str, ...]
    python: bool = False  # pip may install into the system Python, as in python:3.11-slim

    def recipe(self) -> str:
        return digest(DEBIAN_SUITE, *self.packages, str(self.python), HOST_CA_BUNDLE.read_text())


PYTHON_BASE = DebianBase("tfs-bridge-standin/python:3.11",
                         ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates",
                          "passwd"), python=True)
JAVA_BASE = DebianBase("tfs-bridge-standin/java:17", ("openjdk-17-jre-headless", "ca-certificates", "passwd"))


def digest(*parts: str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def tree_digest(*paths: Path) -> str:
    """A digest of the files under these paths (names and contents)."""
    files = sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*"))
                   if p.is_file() and "__pycache__" not in p.parts)
    return digest(*(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files))


def docker(*args: str, env: dict[str, str], timeout: float = 120, stdin: bytes | None = None) -> str:
    result = subprocess.run(["docker", *args], env=env, input=stdin, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {result.stderr.decode(errors='replace')[-3000:]}")
    return result.stdout.decode()


def current_recipe(tag: str, env: dict[str, str]) -> str | None:
    result = subprocess.run(["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}',
                             tag], env=env, capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def build_debian_base(base: DebianBase, env: dict[str, str]) -> None:
    recipe = base.recipe()
    if current_recipe(base.tag, env) == recipe:
        return
    hooks = [f"--customize-hook=upload {HOST_CA_BUNDLE} /etc/ssl/certs/ca-certificates.crt"]
    if base.python:
        hooks.append('--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')
    with tempfile.TemporaryDirectory(prefix="standin-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        result = subprocess.run(["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(base.packages)}",
                                 *hooks, DEBIAN_SUITE, str(rootfs)], capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"mmdebstrap {base.tag}: {result.stderr[-3000:]}")
        docker("import", "--change", "ENV LANG=C.UTF-8", "--change", f"LABEL {RECIPE_LABEL}={recipe}",
               str(rootfs), base.tag, env=env, timeout=600)


def build_image(tag: str, context: Path, recipe: str, env: dict[str, str], **build_args: str) -> None:
    if current_recipe(tag, env) == recipe:
        return
    arguments = [arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    docker("build", "--quiet", "--label", f"{RECIPE_LABEL}={recipe}", *arguments, "--tag", tag, str(context),
           env=env, timeout=BUILD_TIMEOUT_S)


def build_standin(name: str, tag: str, recipe: str, env: dict[str, str], extra: dict[str, Path],
                  **build_args: str) -> str:
    """Build standins/<name>/ with `extra` (name in the context -> file or folder to copy there) added."""
    with tempfile.TemporaryDirectory(prefix=f"standin-{name}-") as scratch:
        context = Path(scratch) / "context"
        shutil.copytree(STANDINS / name, context)
        for target, source in extra.items():
            if source.is_dir():
                shutil.copytree(source, context / target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, context / target)
        build_image(tag, context, recipe, env, **build_args)
    return tag


def build_kafka(env: dict[str, str]) -> str:
    libs = fetch_jars()
    recipe = digest(JAVA_BASE.recipe(), tree_digest(STANDINS / "kafka"), *sorted(p.name for p in libs.iterdir()))
    return build_standin("kafka", f"tfs-bridge-standin/kafka:{kafka_version()}", recipe, env, {"libs": libs},
                         JAVA_IMAGE=JAVA_BASE.tag)


def build_tfserving(env: dict[str, str]) -> str:
    serving = ROOT / "serving"
    recipe = digest(PYTHON_BASE.recipe(), tree_digest(STANDINS / "tfserving", serving))
    return build_standin("tfserving", "tfs-bridge-standin/tfserving:latest", recipe, env,
                         {"serving": serving, "requirements.txt": serving / "requirements.txt"},
                         PYTHON_IMAGE=PYTHON_BASE.tag)


def build_prometheus(env: dict[str, str]) -> str:
    tag = "tfs-bridge-standin/prometheus:latest"
    result = subprocess.run([str(ROOT / "scripts" / "prometheus.sh"), "--path"], capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/prometheus.sh: {result.stderr[-3000:]}")
    binary = Path(result.stdout.strip())
    recipe = digest(PYTHON_BASE.recipe(), tree_digest(STANDINS / "prometheus"), str(binary))
    return build_standin("prometheus", tag, recipe, env, {"prometheus": binary}, BASE_IMAGE=PYTHON_BASE.tag)


def build_standins(env: dict[str, str]) -> dict[str, str]:
    """Build what is missing or stale; the variables that make docker-compose.yml use the stand-ins."""
    for base in (PYTHON_BASE, JAVA_BASE):
        build_debian_base(base, env)
    return {"PYTHON_IMAGE": PYTHON_BASE.tag, "KAFKA_IMAGE": build_kafka(env), "TFSERVING_IMAGE": build_tfserving(env),
            "PROMETHEUS_IMAGE": build_prometheus(env)}
