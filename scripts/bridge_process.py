"""`tfs-bridge run` as a real child process, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts.orphan_guard import guarded

ROOT = Path(__file__).resolve().parents[2]


class BridgeProcess:
    def __init__(self, log_path: Path, *flags: str, env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        """flags: what follows `tfs-bridge run`; stdout and stderr go to log_path. root: the checkout whose
        bridge package runs (another one, such as a git worktree of an older commit, for comparisons)."""
        self.log_path = log_path
        self.root = root
        self.flags = list(flags)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> BridgeProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(guarded([sys.executable, "-m", "bridge", "run", *self.flags]),
                                            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"bridge exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"bridge never logged {text!r}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as docker stop sends; returns the exit code (SIGKILL if it does not exit in time)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)
