"""The Open Inference Protocol backend (oip://) against two independent real servers, Seldon MLServer and KServe's
Python model server, each running the exported model.tflite with LiteRT in its own venv (serving/oip_servers.py):
each input exactly once with the top label of TF Serving's gRPC backend, a SIGKILLed bridge restarted, the server
stopped for 10 s and back, and an image the model rejects alone becoming its dead letter.
"""

from __future__ import annotations

import time
from io import BytesIO

import pytest

from scripts.kafka_io import produce, read_topic
from scripts.kafka_local import free_port
from tests.integration.conftest import read_outcomes, values
from tests.integration.test_backends import classify_with_each, sigkill_and_restart, top_labels
from tests.integration.test_bridge import (FAST_FAILURE, accuracy, assert_exactly_once, count_outputs, send_digits,
                                           wait_for_outputs)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["mlserver", "kserve"])
def oip_server(request, models_dir):
    from serving.oip_servers import OipServerProcess

    server = OipServerProcess(request.param, models_dir / "digits" / "1" / "model.tflite", free_port(), free_port())
    server.start()
    yield server
    server.stop()


def oip(server) -> str:
    return f"oip://{server.address}"


def test_each_input_once_with_the_top_label_tf_serving_gives(kafka, unique, image_server, held_out, start_bridge,
                                                            model_server, oip_server):
    backends = {"grpc": model_server.address, "oip": oip(oip_server)}
    answers, truth = classify_with_each(backends, kafka, unique, image_server, held_out, start_bridge)
    top = {name: top_labels(outputs) for name, outputs in answers.items()}
    assert {(o["model"]["name"], o["model"]["version"]) for o in values(answers["oip"])} == {("digits", 1)}
    assert accuracy(answers["oip"], truth) >= 0.9
    agree = sum(top["oip"][i] == top["grpc"][i] for i in truth) / len(truth)
    assert agree >= 0.99, f"{oip_server.kind} agrees with TF Serving on {agree:.1%} of the images"


def test_a_killed_bridge_restarted_leaves_each_input_exactly_once(kafka, topics, image_server, held_out,
                                                                  start_bridge, oip_server):
    sigkill_and_restart(kafka, topics, image_server, held_out, start_bridge, oip(oip_server), 3000)
    assert oip_server.running


def test_the_server_stopped_for_10_s_pauses_input_and_dead_letters_nothing(kafka, topics, image_server, held_out,
                                                                            start_bridge, oip_server):
    truth = send_digits(kafka, topics, image_server, held_out, 300)
    bridge = start_bridge(*FAST_FAILURE, "--max-batch-size", "8", "--max-in-flight", "1",
                          model_address=oip(oip_server))
    wait_for_outputs(kafka, topics, 300)
    oip_server.kill()
    try:
        more = send_digits(kafka, topics, image_server, held_out, 30, start=300)
        bridge.wait_for_log("pausing input", timeout=30)
        time.sleep(10)
        assert count_outputs(kafka, topics) == 300  # nothing went through while it was gone...
        assert read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=1) == []  # ...and nothing was lost
    finally:
        oip_server.start_again()

    outputs, dead = read_outcomes(kafka, topics, expect=330)
    assert_exactly_once(outputs, dead, {**truth, **more})
    log = bridge.log()
    assert "resuming input" in log and "revoked" not in log
    assert bridge.terminate() == 0


def test_an_image_the_model_rejects_alone_becomes_its_dead_letter(kafka, topics, image_server, held_out,
                                                                   start_bridge, oip_server):
    # "digits-bytes" takes encoded images and decodes them in the server: a JPEG whose scan is cut short has
    # headers Pillow accepts in the bridge, but the server cannot decode it (INVALID_ARGUMENT for that image only).
    from PIL import Image

    jpeg = BytesIO()
    Image.fromarray(held_out[0].pixels).resize((32, 32)).save(jpeg, format="JPEG")
    data = jpeg.getvalue()
    cut_url = image_server.add(f"cut-{oip_server.kind}.jpg", data[:data.index(b"\xff\xda") + 20], "image/jpeg")
    good = [image_server.url(image.name) for image in held_out[:7]]
    lines = good[:3] + [cut_url] + good[3:]
    produce(kafka.bootstrap_servers, topics.input, lines, partition=0)
    start_bridge("--model-name", "digits-bytes", "--batch-linger-ms", "500", model_address=oip(oip_server))

    outputs, dead = read_outcomes(kafka, topics, expect=len(lines))

    assert sorted(r["url"] for r in values(outputs)) == sorted(good)
    assert [(d["value"], d["error"]["stage"]) for d in values(dead)] == [(cut_url, "predict")]
    assert "INVALID_ARGUMENT" in values(dead)[0]["error"]["message"]
