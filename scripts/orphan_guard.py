"""Run a command that ends with the process that started it (Linux):

    python scripts/orphan_guard.py -- COMMAND ARGS...

The brokers, model servers and bridges that tests and scripts start must not outlive them, even when the
starting process crashes and never runs its teardown. PR_SET_PDEATHSIG has the kernel send SIGTERM to this
process when the thread that started it ends; it survives exec, so COMMAND inherits it. Elsewhere than on
Linux, COMMAND just runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def guarded(command: list[str]) -> list[str]:
    """`command`, run through this guard."""
    return [sys.executable, str(Path(__file__).resolve()), "--", *command]


def main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print("usage: orphan_guard.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the request took effect
            return 1
    os.execvp(command[0], command)
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
