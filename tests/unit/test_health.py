"""/metrics, /livez and /readyz over real HTTP on 127.0.0.1, with the Health the run loop updates."""

import json
import urllib.error
import urllib.request

import pytest

from bridge.ops.health import Health, HealthServer
from bridge.ops.metrics import BridgeMetrics, Progress
from bridge.records import OutputMessage, Record


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def served():
    clock, metrics = Clock(), BridgeMetrics()
    health = Health(liveness_timeout=60, clock=clock)
    server = HealthServer("127.0.0.1", 0, health, metrics.registry).start()
    yield server, health, metrics, clock
    server.close()


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_livez_fails_once_the_loop_has_not_turned_for_the_liveness_timeout(served):
    server, health, _, clock = served
    assert get(server, "/livez")[0] == 200
    clock.now += 59
    assert get(server, "/livez")[0] == 200
    clock.now += 2
    status, body = get(server, "/livez")
    assert status == 503 and "has not turned for 61 s" in body
    health.beat()
    assert get(server, "/livez")[0] == 200


def test_readyz_lists_what_is_not_ready_until_nothing_is(served):
    server, health, _, _ = served
    status, body = get(server, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "reasons": ["kafka: not started", "model: waiting for the model server"]}
    health.problem("model", None)
    health.problem("kafka", None)
    assert get(server, "/readyz") == (200, json.dumps({"ready": True, "reasons": []}))


def test_metrics_are_served_in_prometheus_text_format_with_every_series_from_the_start(served):
    server, _, metrics, _ = served
    metrics.set_model("digits", 3, "serving_default")
    status, text = get(server, "/metrics")
    assert status == 200
    for series in ('tfs_bridge_results_total 0.0', 'tfs_bridge_dead_letters_total{stage="fetch",type="blocked"} 0.0',
                   'tfs_bridge_predict_retries_total{code="UNAVAILABLE"} 0.0',
                   'tfs_bridge_input_paused{reason="model_unusable"} 0.0',
                   'tfs_bridge_model_info{model_name="digits",model_version="3",signature_name="serving_default"} 1.0',
                   'tfs_bridge_stage_seconds_bucket{le="0.005",stage="commit"} 0.0', "process_cpu_seconds_total"):
        assert series in text
    assert get(server, "/nothing")[0] == 404


def test_the_progress_line_says_rate_totals_lag_and_why_input_is_paused(caplog):
    clock, metrics = Clock(), BridgeMetrics()
    progress = Progress(metrics, interval=10, clock=clock)
    record = Record("in", 0, 0, None, b"u")
    metrics.committed([OutputMessage(record, True, b"{}")] * 30 + [OutputMessage(record, False, b"{}", None,
                                                                                ("fetch", "FetchError"))] * 10)
    metrics.set_lag("g", {("in", 0): 7, ("in", 1): 5})
    metrics.set_paused("model_unusable", True)
    clock.now += 10
    with caplog.at_level("INFO", logger="bridge.ops.metrics"):
        progress.maybe_log()
    assert caplog.messages == ["committed 40 records (4.0/s): 30 results, 10 dead letters; lag 12; "
                               "paused (model_unusable)"]
