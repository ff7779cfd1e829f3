"""serving/rest_api.py's fast JSON path (large dense numeric arrays parsed by numpy) gives exactly what its exact
path (json, then nested lists to arrays) gives: the same tensors, or the same TF Serving error.

The checks import TensorFlow, so they run in a subprocess (rest_json_checks.py, one run for the module); each
test here reads its check's result. "fast" counts the examples the fast path answered by itself, so none of
these passes without the fast path at work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.process import PROJECT_ROOT

pytestmark = pytest.mark.integration

CHECKS = Path(__file__).with_name("rest_json_checks.py")


@pytest.fixture(scope="module")
def checks() -> dict[str, dict]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(CHECKS)], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=900, check=False)
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            answer = json.loads(line)
            found[answer["check"]] = answer
    assert result.returncode == 0 and found, result.stderr[-3000:]
    return found


def passed(checks: dict[str, dict], name: str) -> dict:
    """The check's stats, once it passed."""
    assert name in checks, f"check {name} did not run"
    assert checks[name]["ok"], checks[name]["report"]
    return checks[name]["stats"]


def test_fast_json_path_matches_the_exact_path_on_dense_arrays(checks):
    """Random shapes; integers, floats or both; every layout (inputs, named inputs, instances, instance objects,
    two inputs) in every JSON style; every dtype, strings, bools and half included."""
    stats = passed(checks, "dense_bodies")
    assert stats["fast"] >= stats["examples"] // 10 and stats["error"] > 0


def test_fast_json_path_matches_the_exact_path_on_ragged_and_mixed_values(checks):
    """Ragged lists, deeper lists in places, strings, bools, nulls and objects among numbers."""
    stats = passed(checks, "ragged_and_mixed_bodies")
    assert stats["error"] > stats["examples"] // 4 and stats["fast"] > 0


def test_fast_json_path_matches_the_exact_path_on_mutated_bodies(checks):
    """Valid dense bodies with bytes inserted, deleted or replaced inside their arrays."""
    stats = passed(checks, "mutated_bodies")
    assert stats["error"] > stats["examples"] // 2 and stats["fast"] > 0


def test_fast_json_path_matches_the_exact_path_around_its_arrays(checks):
    """Strings holding brackets, digits, quotes and backslashes, a second "inputs", arrays no tensor is read
    from, the fast path's placeholder written by the client (literally and by escapes), trailing bytes,
    unterminated strings."""
    stats = passed(checks, "documents_around_arrays")
    assert stats["fast"] > 0 and stats["error"] > 0


def test_fast_json_path_on_every_small_number_token(checks):
    """Every string of up to 4 of "01-+.eE " in small arrays: the same outcome, and the fast path takes
    every JSON number among them ("+1", "01", ".5", "1.", "- 1", "-" and "1 1" go the exact way)."""
    stats = passed(checks, "small_tokens")
    assert stats["fast"] > 1000


def test_fast_json_path_on_every_small_bracket_structure(checks):
    """Every string of up to 6 of "1,[] " in brackets (ragged, empty, unbalanced, empty fields): the same
    outcome, the dense ones by the fast path."""
    stats = passed(checks, "small_structures")
    assert stats["fast"] > 100


def test_fast_json_path_at_integer_and_float_boundaries(checks):
    """int32/int64/uint64 edges, overflows, 400-digit numbers, subnormals, float32 rounding, -0, "- 1" and
    empty fields, client-written placeholders with a key twice, nesting past numpy's 64 dimensions."""
    stats = passed(checks, "boundaries")
    assert stats["fast"] > 0 and stats["exception"] > 0  # json's own errors (a 5000-digit integer) too


def test_fast_json_path_on_image_sized_bodies(checks):
    """8x32x32x3 uint8 (orjson's, the bridge's padded to 3 characters, json.dumps's) and float32 bodies by
    the fast path; 256 and -1 in uint8 wrap (TF Serving's int_val),
    2**31, 0.5, a string, null, a short row and a leading zero get the exact path's errors."""
    stats = passed(checks, "large_bodies")
    assert stats["fast"] >= 7 and stats["error"] >= 5


def test_answers_written_by_orjson_have_json_dumps_values(checks):
    """answer_bytes: the values json.dumps writes, NaN, Infinity and ints beyond 64 bits included."""
    stats = passed(checks, "answers")
    assert stats["orjson"] > 0
