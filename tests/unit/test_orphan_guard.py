"""A command started through scripts/orphan_guard.py ends when the process that started it dies, even by SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTER = """
import subprocess, sys, time
from scripts.orphan_guard import guarded
child = subprocess.Popen(guarded([sys.executable, "-c", "import time; time.sleep(120)"]))
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"  # a zombie has ended


def test_the_guarded_command_ends_when_its_starter_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", STARTER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
        time.sleep(0.5)
        assert alive(child)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child)
    finally:
        starter.kill()


def test_the_guard_runs_the_command_with_its_arguments_and_exit_code():
    from scripts.orphan_guard import guarded

    result = subprocess.run(guarded([sys.executable, "-c", "import sys; print(sys.argv[1:]); sys.exit(3)", "a", "b c"]),
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (3, "['a', 'b c']")
