"""Failures of the system itself, end to end: they pause or stop the bridge, and never dead-letter a record.

Real broker, real model server (with fault injection), the bridge as a process.
"""

import time

import pytest

from scripts.kafka_io import read_topic
from scripts.kafka_local import LocalKafka, free_port
from tests.integration.conftest import read_outcomes, values
from tests.integration.test_bridge import assert_exactly_once, send_digits, wait_for_outputs

pytestmark = pytest.mark.integration


@pytest.fixture
def own_model_server(models_dir):
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port())
    server.start()
    yield server
    server.stop()


def count_outputs(kafka, topics):
    return len(read_topic(kafka.bootstrap_servers, topics.output, timeout=1))


def test_a_model_server_refusing_then_failing_every_predict_pauses_and_resumes_without_dead_letters(
        kafka, topics, image_server, held_out, start_bridge, own_model_server):
    truth = send_digits(kafka, topics, image_server, held_out, 30)
    bridge = start_bridge("--max-batch-size", "8", "--max-in-flight", "1", "--resume-check-interval-ms", "300",
                          model_address=own_model_server.address)
    wait_for_outputs(kafka, topics, 30)

    # An expired token at a gateway: every Predict UNAUTHENTICATED, while GetModelStatus still says AVAILABLE.
    own_model_server.inject_fault("UNAUTHENTICATED")
    more = send_digits(kafka, topics, image_server, held_out, 60, start=30)
    bridge.wait_for_log("pausing input", timeout=30)
    time.sleep(3)
    own_model_server.inject_fault("INTERNAL")  # a broken server: every Predict INTERNAL
    time.sleep(3)
    assert count_outputs(kafka, topics) == 30  # nothing went through while it failed...
    assert read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=1) == []  # ...and nothing was lost
    own_model_server.inject_fault(None)

    outputs, dead = read_outcomes(kafka, topics, expect=90)
    assert_exactly_once(outputs, dead, {**truth, **more})
    log = bridge.log()
    assert "UNAUTHENTICATED" in log and "INTERNAL" in log and "resuming input" in log
    assert bridge.process.poll() is None
    assert bridge.terminate() == 0


def test_a_model_that_stays_unusable_past_the_limit_exits_1_with_one_line(
        kafka, topics, image_server, held_out, start_bridge, own_model_server):
    send_digits(kafka, topics, image_server, held_out, 30)
    own_model_server.inject_fault("PERMISSION_DENIED")
    bridge = start_bridge("--resume-check-interval-ms", "300", "--max-pause-ms", "3000",
                          model_address=own_model_server.address)
    assert bridge.wait(timeout=60) == 1
    last = bridge.log().strip().splitlines()[-1]
    assert last.startswith("tfs-bridge: error: the model server has not recovered after") and "PERMISSION_DENIED" in last
    assert read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=1) == []


def test_a_bridge_killed_and_restarted_with_default_identity_takes_over_within_seconds(
        kafka, topics, image_server, held_out, start_bridge):
    truth = send_digits(kafka, topics, image_server, held_out, 600)
    # A long commit interval keeps a transaction open (and read_committed readers waiting) when it dies.
    first = start_bridge("--max-batch-size", "8", "--commit-interval-ms", "20000")
    first.wait_for_log("assigned", timeout=60)
    time.sleep(4)
    first.kill()  # SIGKILL: its open transaction and its group membership are left behind

    restarted_at = time.monotonic()
    second = start_bridge()  # same host, same defaults: the same transactional.id and group.instance.id
    outputs, dead = read_outcomes(kafka, topics, expect=600, timeout=60)
    took = time.monotonic() - restarted_at

    assert_exactly_once(outputs, dead, truth)
    # Not transaction.timeout.ms (60 s) for the dead one's transaction, nor session.timeout.ms (45 s) for its
    # partitions: the restarted instance fenced the first and got its partitions back at once.
    assert took < 30, f"took {took:.0f} s"
    assert "revoked" not in second.log()
    assert second.terminate() == 0


def test_a_broker_restart_mid_stream_neither_hangs_nor_exits_nor_loses_or_doubles(tmp_path, image_server, held_out,
                                                                                  unique, model_server):
    """The only broker down for 8 s mid-stream: the bridge carries on by itself (replacing its producer if a call
    outlived its deadline), exactly once, and stops cleanly after."""
    from scripts.bridge_process import BridgeProcess
    from tests.integration.conftest import LOCAL_IMAGES, BridgeTopics

    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    broker.start()
    bridge = None
    try:
        topics = BridgeTopics(f"images-{unique}", f"predictions-{unique}", f"dead-{unique}", f"bridge-{unique}")
        broker.create_topics({topics.input: 3, topics.output: 3, topics.dead_letters: 1})
        truth = send_digits(broker, topics, image_server, held_out, 1500)
        bridge = BridgeProcess(tmp_path / "bridge.log", "--bootstrap-servers", broker.bootstrap_servers,
                               "--model-server", model_server.address, *topics.flags(), *LOCAL_IMAGES,
                               "--max-batch-size", "8", "--max-in-flight", "1", "--kafka-timeout-ms", "10000",
                               "--metrics-port", "0").start()
        wait_for_outputs(broker, topics, 50)
        broker.restart(down_for=8)

        outputs, dead = read_outcomes(broker, topics, expect=1500, timeout=120)
        assert bridge.process.poll() is None, f"the bridge exited:\n{bridge.log()[-3000:]}"
        assert_exactly_once(outputs, dead, truth)
        assert bridge.terminate(timeout=40) == 0
    finally:
        if bridge is not None:
            bridge.kill()
        broker.stop()


def test_sigterm_is_honoured_within_the_shutdown_timeout_while_kafka_is_gone(tmp_path, image_server, held_out, unique,
                                                                              model_server):
    from scripts.bridge_process import BridgeProcess
    from tests.integration.conftest import LOCAL_IMAGES, BridgeTopics

    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    broker.start()
    bridge = None
    try:
        topics = BridgeTopics(f"images-{unique}", f"predictions-{unique}", f"dead-{unique}", f"bridge-{unique}")
        broker.create_topics({topics.input: 3, topics.output: 3, topics.dead_letters: 1})
        send_digits(broker, topics, image_server, held_out, 3000)
        bridge = BridgeProcess(tmp_path / "bridge.log", "--bootstrap-servers", broker.bootstrap_servers,
                               "--model-server", model_server.address, *topics.flags(), *LOCAL_IMAGES,
                               "--max-batch-size", "8", "--shutdown-timeout-ms", "5000", "--metrics-port", "0").start()
        wait_for_outputs(broker, topics, 50)
        broker.stop()  # gone for good: every Kafka call from now on waits on a broker that never answers
        time.sleep(3)
        assert " bridge.librdkafka " in bridge.log()  # librdkafka's own errors reach the bridge's log
        began = time.monotonic()
        code = bridge.terminate(timeout=30)
        took = time.monotonic() - began
        assert took < 5 + 3, f"took {took:.1f} s"  # the shutdown timeout, plus a margin for the exit itself
        assert code in (0, 1), bridge.log()[-2000:]  # a clean stop, or the forced exit once the timeout passed
    finally:
        if bridge is not None:
            bridge.kill()
        broker.stop()
