"""What an operator sees of a running bridge: /metrics agrees with what was committed, /readyz follows the model
server, /livez fails when the loop is stuck, and JSON log lines parse."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from scripts.kafka_io import produce
from scripts.kafka_local import free_port
from tests.integration.conftest import read_outcomes
from tests.integration.test_bridge import send_digits

pytestmark = pytest.mark.integration


def metrics_flags(port: int) -> tuple[str, ...]:
    return ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # not listening yet
        return 0, str(error)


def wait_for(port: int, path: str, status: int, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    last = (0, "")
    while time.monotonic() < deadline:
        last = get(port, path)
        if last[0] == status:
            return last[1]
        time.sleep(0.2)
    raise AssertionError(f"{path} never answered {status}; last: {last}")


Series = dict[tuple[str, frozenset], float]


def samples(text: str) -> Series:
    """Prometheus text format -> {(name, labels): value}, with the parser prometheus_client ships."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def total(series: Series, name: str) -> float:
    return sum(number for (sample, _), number in series.items() if sample == name)


def test_the_counters_agree_with_what_a_read_committed_reader_sees(kafka, topics, image_server, held_out,
                                                                   start_bridge):
    port = free_port()
    truth = send_digits(kafka, topics, image_server, held_out, 40)
    bad = ["not a url", image_server.url("status/404"), "ftp://h/x.png"]
    produce(kafka.bootstrap_servers, topics.input, bad, partition=0)
    bridge = start_bridge(*metrics_flags(port))
    outputs, dead = read_outcomes(kafka, topics, expect=len(truth) + len(bad))
    assert (len(outputs), len(dead)) == (len(truth), len(bad))

    lag = ("kafka_consumergroup_lag", frozenset({"consumergroup": topics.group, "topic": topics.input,
                                                 "partition": "0"}.items()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the lag gauge is refreshed every few seconds
        series = samples(wait_for(port, "/metrics", 200))
        if series.get(lag) == 0 and total(series, "tfs_bridge_window_records") == 0:
            break
        time.sleep(1)
    assert total(series, "tfs_bridge_results_total") == len(outputs)
    assert total(series, "tfs_bridge_dead_letters_total") == len(dead)
    assert value(series, "tfs_bridge_dead_letters_total", stage="parse", type="InvalidRecord") == 1
    assert value(series, "tfs_bridge_dead_letters_total", stage="fetch", type="FetchError") == 2
    assert total(series, "tfs_bridge_records_consumed_total") == len(truth) + len(bad)
    assert value(series, "tfs_bridge_transactions_total", outcome="committed") >= 1
    assert value(series, "tfs_bridge_transactions_total", outcome="aborted") == 0
    assert value(series, "tfs_bridge_end_to_end_seconds_count") == len(outputs) + len(dead)
    assert value(series, "tfs_bridge_stage_seconds_count", stage="fetch") == len(truth) + 2  # 404 and ftp too
    assert value(series, "tfs_bridge_stage_seconds_count", stage="predict") >= 1
    assert value(series, "tfs_bridge_predict_batch_size_images_sum") == len(truth)
    assert value(series, "tfs_bridge_rebalances_total", kind="assigned") >= 1
    assert series[lag] == 0 and total(series, "kafka_consumergroup_lag") == 0
    assert value(series, "tfs_bridge_model_info", model_name="digits", model_version="1",
                 signature_name="serving_default") == 1
    assert get(port, "/readyz") == (200, json.dumps({"ready": True, "reasons": []}))
    assert get(port, "/livez")[0] == 200
    assert bridge.terminate() == 0
    assert_the_dashboards_series_are_served(series)


def assert_the_dashboards_series_are_served(series: Series) -> None:
    """Every series the dashboard may query (the contract tests/unit/test_monitoring.py checks the dashboard
    against) is on a running bridge's /metrics, with the contract's labels and allowed values."""
    from tests.unit.test_monitoring import EXPECTED_SERIES

    for name, labels in EXPECTED_SERIES.items():
        found = [dict(label_set) for sample, label_set in series if sample == name]
        assert found, f"{name} is not on /metrics"
        for label_set in found:
            assert set(label_set) == set(labels), (name, label_set)
            for label, allowed in labels.items():
                assert not allowed or label_set[label] in allowed, (name, label, label_set[label])


def test_readyz_is_not_ready_while_the_model_server_is_down_and_ready_again_after(kafka, topics, start_bridge,
                                                                                  models_dir):
    from serving.process import ModelServerProcess

    port = free_port()
    server = ModelServerProcess(models_dir, free_port()).start()
    try:
        start_bridge(*metrics_flags(port), "--resume-check-interval-ms", "500", model_address=server.address)
        wait_for(port, "/readyz", 200)
        server.stop()
        body = json.loads(wait_for(port, "/readyz", 503, timeout=30))
        assert body["ready"] is False and any(reason.startswith("model status: ") for reason in body["reasons"])
        assert get(port, "/livez")[0] == 200  # not ready is not stuck: no reason to restart it
        server.start()  # on the same port
        wait_for(port, "/readyz", 200, timeout=60)
    finally:
        server.stop()


def test_livez_fails_while_the_loop_is_blocked_and_recovers_when_it_turns_again(kafka, topics, start_bridge,
                                                                                tmp_path, monkeypatch):
    port = free_port()
    block = tmp_path / "block-the-loop"
    monkeypatch.setenv("BRIDGE_TEST_BLOCK_LOOP_FILE", str(block))
    bridge = start_bridge(*metrics_flags(port), "--kafka-timeout-ms", "2000", "--liveness-timeout-ms", "3000")
    bridge.wait_for_log("assigned")
    assert wait_for(port, "/livez", 200) == "ok\n"
    block.touch()
    started = time.monotonic()
    assert "has not turned for" in wait_for(port, "/livez", 503, timeout=30)
    assert time.monotonic() - started >= 2.5  # it is the liveness timeout that failed it, not something sooner
    block.unlink()
    wait_for(port, "/livez", 200, timeout=10)
    assert bridge.terminate() == 0


def test_json_log_lines_each_parse_with_time_level_logger_and_message(kafka, topics, image_server, held_out,
                                                                      start_bridge):
    send_digits(kafka, topics, image_server, held_out, 10)
    bridge = start_bridge("--log-format", "json", "--metrics-port", "0")
    read_outcomes(kafka, topics, expect=10)
    bridge.wait_for_log("lag ")  # a progress line (every 2 s here)
    assert bridge.terminate() == 0
    lines = bridge.log().splitlines()
    assert len(lines) >= 5
    parsed = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in parsed)
    assert any(line["message"].startswith("assigned ") for line in parsed)
    assert any(line["message"].startswith("committed ") and "lag" in line["message"] for line in parsed)
