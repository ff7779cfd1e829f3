"""Exactly-once and the failure boundary for the REST and embedded backends (gRPC has its own tests in test_bridge
and test_system_failures), and the three backends agreeing on the same images.

Real broker, real HTTP, the model server on real TensorFlow answering TF Serving's REST API (with fault
injection), and the exported model.tflite run by LiteRT inside the bridge.
"""

import time

import pytest

from scripts.kafka_io import read_topic
from scripts.kafka_local import free_port
from tests.integration.conftest import BridgeTopics, read_outcomes, values
from tests.integration.test_bridge import (FAST_FAILURE, accuracy, assert_exactly_once, count_outputs, send_digits,
                                           wait_for_outputs)

pytestmark = pytest.mark.integration


@pytest.fixture
def rest_model_server(models_dir):
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port(), rest_port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tflite_model(models_dir):
    path = models_dir / "digits" / "1" / "model.tflite"
    assert path.is_file(), "the export writes model.tflite beside the SavedModel"
    return str(path)


def sigkill_and_restart(kafka, topics, image_server, held_out, start_bridge, model_address, records):
    """`records`: enough that the stream still flows when the first bridge is killed (on digits, every backend
    does 400 in well under a second)."""
    truth = send_digits(kafka, topics, image_server, held_out, records)
    first = start_bridge("--transactional-id", f"{topics.group}-instance", "--max-batch-size", "8",
                         model_address=model_address)
    wait_for_outputs(kafka, topics, 40)
    first.kill()  # SIGKILL: no chance to commit or abort
    assert count_outputs(kafka, topics) < records  # it died mid-stream

    second = start_bridge("--transactional-id", f"{topics.group}-instance", model_address=model_address)
    outputs, dead = read_outcomes(kafka, topics, expect=records)
    assert_exactly_once(outputs, dead, truth)
    assert accuracy(outputs, truth) >= 0.9
    assert second.terminate() == 0
    return outputs


def test_rest_a_killed_bridge_restarted_leaves_each_input_exactly_once(
        kafka, topics, image_server, held_out, start_bridge, rest_model_server):
    sigkill_and_restart(kafka, topics, image_server, held_out, start_bridge, rest_model_server.rest_url, 4000)
    assert rest_model_server.running


def test_embedded_a_killed_bridge_restarted_leaves_each_input_exactly_once(
        kafka, topics, image_server, held_out, start_bridge, tflite_model):
    outputs = sigkill_and_restart(kafka, topics, image_server, held_out, start_bridge, tflite_model, 4000)
    assert {o["model"]["name"] for o in values(outputs)} == {"digits"}


def test_rest_model_server_unavailable_then_unauthenticated_then_back_pauses_without_dead_letters(
        kafka, topics, image_server, held_out, start_bridge, rest_model_server):
    truth = send_digits(kafka, topics, image_server, held_out, 30)
    bridge = start_bridge(*FAST_FAILURE, "--max-batch-size", "8", "--max-in-flight", "1",
                          model_address=rest_model_server.rest_url)
    wait_for_outputs(kafka, topics, 30)

    rest_model_server.inject_fault("UNAVAILABLE")  # every :predict answers HTTP 503
    more = send_digits(kafka, topics, image_server, held_out, 60, start=30)
    bridge.wait_for_log("pausing input", timeout=30)
    rest_model_server.inject_fault("UNAUTHENTICATED")  # then HTTP 401: an expired token at a gateway
    bridge.wait_for_log("UNAUTHENTICATED", timeout=30)
    time.sleep(2)
    assert count_outputs(kafka, topics) == 30  # nothing went through while it failed...
    assert read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=1) == []  # ...and nothing was lost
    rest_model_server.inject_fault(None)

    outputs, dead = read_outcomes(kafka, topics, expect=90)
    assert_exactly_once(outputs, dead, {**truth, **more})
    log = bridge.log()
    assert "UNAVAILABLE (HTTP 503)" in log and "UNAUTHENTICATED (HTTP 401)" in log and "resuming input" in log
    assert bridge.terminate() == 0


def classify_with_each(backends, kafka, unique, image_server, held_out, start_bridge, records=300):
    """The same `records` digits through a bridge on each backend ({name: --model-server}), each on topics of its
    own; checks each input exactly once. Returns ({name: outputs}, the true labels by id)."""
    runs = {}
    for name, model_address in backends.items():
        topics = BridgeTopics(f"images-{name}-{unique}", f"predictions-{name}-{unique}", f"dead-{name}-{unique}",
                              f"bridge-{name}-{unique}")
        kafka.create_topics({topics.input: 3, topics.output: 3, topics.dead_letters: 1})
        truth = send_digits(kafka, topics, image_server, held_out, records)
        start_bridge(*topics.flags(), "--instance-name", name, model_address=model_address)
        runs[name] = topics
    answers = {}
    for name, topics in runs.items():
        outputs, dead = read_outcomes(kafka, topics, expect=records)
        assert_exactly_once(outputs, dead, truth)
        answers[name] = outputs
    return answers, truth


def top_labels(outputs) -> dict[str, str]:
    return {o["id"]: o["predictions"][0]["label"] for o in values(outputs)}


def test_the_three_backends_agree_on_the_top_label(kafka, unique, image_server, held_out, start_bridge,
                                                   rest_model_server, tflite_model):
    backends = {"grpc": rest_model_server.address, "rest": rest_model_server.rest_url, "embedded": tflite_model}
    answers, truth = classify_with_each(backends, kafka, unique, image_server, held_out, start_bridge)
    top = {name: top_labels(outputs) for name, outputs in answers.items()}
    for name in ("rest", "embedded"):
        agree = sum(top[name][i] == top["grpc"][i] for i in truth) / len(truth)
        assert agree >= 0.99, f"{name} agrees with gRPC on {agree:.1%} of the images"
