"""Several model servers behind one bridge: calls go round-robin over both, and when one stops mid-stream the
other takes every call, without a pause, a dead letter, a loss or a duplicate."""

from __future__ import annotations

import re

import pytest

from scripts.kafka_local import free_port
from tests.integration.conftest import read_outcomes
from tests.integration.test_bridge import accuracy, assert_exactly_once, send_digits, wait_for_outputs

pytestmark = pytest.mark.integration


def predict_calls(server) -> int:
    """How many Predict calls a stopped server answered (it logs the count when it shuts down)."""
    found = re.findall(r"shutting down after (\d+) Predict calls", server.stderr_tail())
    assert found, server.stderr_tail()[-2000:]
    return int(found[-1])


def test_a_model_server_stopped_mid_stream_leaves_the_other_to_take_every_call(
        kafka, topics, image_server, held_out, start_bridge, models_dir):
    from serving.process import ModelServerProcess

    first, second = (ModelServerProcess(models_dir, free_port()) for _ in range(2))
    try:
        first.start()
        second.start()
        truth = send_digits(kafka, topics, image_server, held_out, 1500)
        bridge = start_bridge("--max-batch-size", "8", "--max-in-flight", "2",
                              model_address=f"{first.address},{second.address}")
        wait_for_outputs(kafka, topics, 200)
        # The second address: the one a client that only fails over (pick_first) would not have used yet.
        second.stop()
        assert predict_calls(second) > 0  # round-robin: it had its share of the calls before it stopped

        outputs, dead = read_outcomes(kafka, topics, expect=1500)
        assert_exactly_once(outputs, dead, truth)
        assert accuracy(outputs, truth) >= 0.9
        assert "pausing input" not in bridge.log()  # failover, not an outage
        assert bridge.terminate() == 0
    finally:
        first.stop()
        second.stop()
    assert predict_calls(first) > 0
