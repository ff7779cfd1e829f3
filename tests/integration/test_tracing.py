"""--tracing against a real OpenTelemetry Collector (scripts/otelcol.sh: OTLP/gRPC in on 127.0.0.1, spans out to a
file): a record's trace context goes through the bridge into its result or dead letter, and the collector holds
the bridge's spans of that trace, parented and linked as bridge/ops/tracing.py says."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from scripts.bridge_process import BridgeProcess
from scripts.otel_collector import OtelCollector
from tests.integration.conftest import LOCAL_IMAGES, read_outcomes

pytestmark = pytest.mark.integration

TRACE_A, PARENT_A = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACE_B, PARENT_B = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def collector(tmp_path):
    with OtelCollector(tmp_path) as running:
        yield running


def traceparent(message) -> str:
    found = [value.decode() for name, value in message.headers() or [] if name == "traceparent"]
    assert len(found) == 1, message.headers()
    return found[0]


def wait_for_spans(collector, wanted, timeout=30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = collector.spans()
        if wanted(spans):
            return spans
        time.sleep(0.2)
    raise AssertionError(f"the collector never held the spans wanted; it holds {json.dumps(collector.spans())[:4000]}"
                         f"\ncollector log: {collector.log()}")


def test_a_records_trace_goes_through_the_bridge_into_its_outcome_and_the_collector(
        kafka, model_server, image_server, held_out, topics, tmp_path, collector):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_SERVICE_NAME": "tfs-bridge-test",
           "OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    flags = ["--bootstrap-servers", kafka.bootstrap_servers, "--model-server", model_server.address,
             *topics.flags(), "--metrics-port", "0", *LOCAL_IMAGES, "--tracing"]
    bridge = BridgeProcess(tmp_path / "bridge.log", *flags, env=env).start()
    try:
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
        good = image_server.url(held_out[0].name)
        producer.produce(topics.input, value=json.dumps({"url": good, "id": "a"}).encode(), key=b"a",
                         headers=[("traceparent", f"00-{TRACE_A}-{PARENT_A}-01".encode()),
                                  ("tracestate", b"vendor=value")])
        producer.produce(topics.input, value=json.dumps({"url": image_server.url("notes.txt"), "id": "b"}).encode(),
                         key=b"b", headers=[("traceparent", f"00-{TRACE_B}-{PARENT_B}-01".encode())])
        producer.produce(topics.input, value=json.dumps({"url": good, "id": "c"}).encode(), key=b"c",
                         headers=[("traceparent", b"00-not-a-valid-traceparent-01")])
        assert producer.flush(30) == 0
        outputs, dead = read_outcomes(kafka, topics, expect=3)
        by_id = {json.loads(m.value())["id"]: m for m in outputs}
        assert sorted(by_id) == ["a", "c"] and len(dead) == 1, bridge.log()[-3000:]

        # The outcomes carry the record span's context: the sender's trace, a new span of the bridge's.
        version, trace_a, record_a, flags_a = traceparent(by_id["a"]).split("-")
        assert (version, trace_a, flags_a) == ("00", TRACE_A, "01") and record_a != PARENT_A
        assert dict(by_id["a"].headers())["tracestate"] == b"vendor=value"
        _, trace_b, record_b, _ = traceparent(dead[0]).split("-")
        assert trace_b == TRACE_B and json.loads(dead[0].value())["error"]["stage"] == "fetch"
        _, trace_c, record_c, _ = traceparent(by_id["c"]).split("-")  # an invalid traceparent: a new trace
        assert trace_c not in (TRACE_A, TRACE_B) and int(trace_c, 16) != 0

        def complete(spans):
            names = {(s["traceId"], s["name"]) for s in spans}
            linked = {(link["traceId"], link["spanId"]) for s in spans if s["name"] == "predict"
                      for link in s.get("links", [])}
            return ({(TRACE_A, "fetch"), (TRACE_A, "preprocess"), (TRACE_B, "fetch")} <= names
                    and {record_a, record_b, record_c} <= {s["spanId"] for s in spans}
                    and (TRACE_A, record_a) in linked and (trace_c, record_c) in linked
                    and any(s["name"] == "commit" for s in spans))

        spans = wait_for_spans(collector, complete)
    finally:
        bridge.kill()
    by_span = {s["spanId"]: s for s in spans}
    assert all(s["service"] == "tfs-bridge-test" for s in spans)

    # The record span: a child of the span the sender named, its children fetch and preprocess.
    span_a = by_span[record_a]
    assert (span_a["traceId"], span_a["parentSpanId"], span_a["name"]) == (TRACE_A, PARENT_A, f"process {topics.input}")
    assert any(event["name"] == "committed" for event in span_a.get("events", []))
    children_a = {s["name"] for s in spans if s.get("parentSpanId") == record_a}
    assert children_a == {"fetch", "preprocess"}
    # The record with an invalid traceparent started a trace of its own: its span is a root.
    assert not by_span[record_c].get("parentSpanId")

    # The model call: one span per batch, linked to the record spans of its batch.
    predicts = [s for s in spans if s["name"] == "predict"]
    assert any((TRACE_A, record_a) in {(link["traceId"], link["spanId"]) for link in s.get("links", [])}
               for s in predicts)
    assert all(s["kind"] == 3 for s in predicts)  # SPAN_KIND_CLIENT

    # The dead letter's trace (notes.txt is text/plain: refused at fetch): the record span (status ERROR, the
    # stage) under the sender's span, and its failed fetch child, alone.
    span_b = by_span[record_b]
    assert (span_b["traceId"], span_b["parentSpanId"]) == (TRACE_B, PARENT_B)
    assert span_b["status"]["code"] == 2  # STATUS_CODE_ERROR
    attributes_b = {a["key"]: a["value"].get("stringValue") for a in span_b.get("attributes", [])}
    assert attributes_b["tfs_bridge.error.stage"] == "fetch"
    children_b = [s for s in spans if s.get("parentSpanId") == record_b]
    assert [s["name"] for s in children_b] == ["fetch"] and children_b[0]["status"]["code"] == 2

    # The commit: a span linked to the records it committed.
    commit_links = {link["spanId"] for s in spans if s["name"] == "commit" for link in s.get("links", [])}
    assert {record_a, record_b, record_c} <= commit_links
