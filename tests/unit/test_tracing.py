"""bridge/ops/tracing.py: the trace context read from a record's headers (never crashing on what a producer sent),
written into its outcome and into the model call; nothing of OpenTelemetry when tracing is off."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.errors import FetchError
from bridge.model.backend import ModelTarget
from bridge.model.oip_backend import OipBackend
from bridge.oip_api import open_inference_pb2_grpc
from bridge.ops.tracing import NOOP, _OtelTracing, open_tracing, outgoing_headers, parent_headers
from bridge.records import DeadLetter, Record, encode
from tests.unit.test_oip_backend import ScriptedServer

ROOT = Path(__file__).resolve().parents[2]
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01".encode()


@pytest.fixture(scope="module")
def exported():
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracing(exported):
    tracing = _OtelTracing(exported)
    yield tracing
    tracing.shutdown()


def record(headers) -> Record:
    return Record("images", 0, 7, None, b"http://images/1.png", None, headers)


def split(header: bytes) -> list[str]:
    return header.decode("ascii").split("-")


def test_a_valid_traceparent_is_the_record_spans_parent_and_goes_on_in_the_outcome(tracing):
    trace = tracing.record(record((("TraceParent", VALID), ("tracestate", b"vendor=value"))))
    context = trace.span.get_span_context()
    assert (f"{context.trace_id:032x}", f"{trace.span.parent.span_id:016x}") == (TRACE, PARENT)
    headers = dict(trace.headers)
    version, trace_id, span_id, flags = split(headers["traceparent"])
    assert (version, trace_id, span_id, flags) == ("00", TRACE, f"{context.span_id:016x}", "01")
    assert headers["tracestate"] == b"vendor=value"
    letter = DeadLetter.from_error(record(()), FetchError("gone"))
    message = encode(letter, trace=trace)
    assert ("traceparent", headers["traceparent"]) in message.headers and message.trace is trace
    assert encode(letter).headers == letter.headers()  # tracing off: the headers of before


INVALID = [b"", b"00", VALID.upper(), VALID + b"-", b"ff" + VALID[2:], VALID.replace(TRACE.encode(), b"0" * 32),
           VALID.replace(PARENT.encode(), b"0" * 16), VALID.replace(b"-01", b"-1x"), "00-é".encode(), b"\xff\xfe",
           VALID.replace(b"-", b"_")]


@pytest.mark.parametrize("value", INVALID + [None])
def test_an_invalid_traceparent_starts_a_new_trace(tracing, value):
    trace = tracing.record(record((("traceparent", value),)))
    context = trace.span.get_span_context()
    assert trace.span.parent is None and context.is_valid and f"{context.trace_id:032x}" != TRACE
    assert split(dict(trace.headers)["traceparent"])[1] == f"{context.trace_id:032x}"


headers_strategy = st.one_of(st.none(), st.lists(st.tuples(
    st.one_of(st.sampled_from(["traceparent", "tracestate", "TRACEPARENT", "other"]), st.text(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=80), st.sampled_from(INVALID + [VALID]),
              st.text(alphabet="0123456789abcdef-", max_size=60).map(str.encode))), max_size=6).map(tuple))


@settings(max_examples=300, deadline=None)
@given(headers_strategy)
def test_arbitrary_headers_never_crash_and_a_parent_is_only_ever_a_valid_traceparent(tracing, headers):
    trace = tracing.record(record(headers))
    first = parent_headers(headers).get("traceparent")
    if trace.span.parent is not None:  # continued: only from the first traceparent, exactly valid
        assert first is not None and first.encode() == VALID
    context = trace.span.get_span_context()
    assert context.is_valid and split(dict(trace.headers)["traceparent"])[1] == f"{context.trace_id:032x}"
    trace.span.end()


def test_a_batch_span_links_its_records_and_is_the_model_calls_context(tracing, exported):
    traces = [tracing.record(record((("traceparent", VALID),))), tracing.record(record(())), None]
    assert outgoing_headers() == ()
    with tracing.batch(traces):
        sent = dict(outgoing_headers())
    assert outgoing_headers() == ()
    [batch] = [s for s in exported.get_finished_spans() if s.name == "predict"]
    assert split(sent["traceparent"].encode())[2] == f"{batch.context.span_id:016x}"
    assert [link.context.span_id for link in batch.links] == [t.span.get_span_context().span_id for t in traces[:2]]
    assert batch.context.trace_flags.sampled


class Recording(ScriptedServer):
    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's name)
        self.metadata = dict(context.invocation_metadata())
        return super().ModelInfer(request, context)


def test_the_oip_backend_sends_the_batch_spans_context_as_grpc_metadata(tracing):
    scripted = Recording()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = OipBackend(f"127.0.0.1:{port}", ModelTarget("digits"), timeout=5)
        images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
        client.predict_images(client.signature(), images)
        assert "traceparent" not in scripted.metadata  # no batch span: nothing sent
        with tracing.batch([tracing.record(record((("traceparent", VALID),)))]):
            sent = dict(outgoing_headers())["traceparent"]
            client.predict_images(client.signature(), images)
        assert scripted.metadata["traceparent"] == sent and split(sent.encode())[1] != TRACE  # the batch's trace
        client.close()
    finally:
        server.stop(None)


def test_tracing_off_is_noop_and_imports_no_opentelemetry():
    assert open_tracing(False) is NOOP
    code = ("import sys; import bridge.loop.run, bridge.model.grpc_backend, bridge.model.rest_backend, "
            "bridge.model.oip_backend; from bridge.ops.tracing import open_tracing; open_tracing(False); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_tracing_on_without_the_extra_is_a_one_line_config_error():
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "from bridge.errors import ConfigError\nfrom bridge.ops.tracing import open_tracing\n"
            "try:\n    open_tracing(True)\nexcept ConfigError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("--tracing (TFS_BRIDGE_TRACING) needs the tracing extra: pip install "
                                  "'tfs-bridge[tracing]'") and done.stdout.count("\n") == 1


def test_the_rest_backend_sends_the_batch_spans_context_as_http_headers(tracing):
    from bridge.errors import ModelServerError
    from bridge.model.rest_backend import RestBackend
    from bridge.model.signature import ImageSignature
    from tests.unit.test_rest_backend import FakeTFServing, signature_def

    server = FakeTFServing()
    server.reply(503, {"error": "scripted"})  # the request and its headers are all this test looks at
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = RestBackend(server.url, ModelTarget("digits"), timeout=5)
        signature = ImageSignature.from_proto("serving_default", signature_def())
        images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
        with tracing.batch([tracing.record(record((("traceparent", VALID),)))]):
            sent = dict(outgoing_headers())["traceparent"]
            with pytest.raises(ModelServerError):
                client.predict_images(signature, images)
        headers = {name.lower(): value for name, value in server.requests[-1][3].items()}
        assert headers["traceparent"] == sent and split(sent.encode())[1] != TRACE  # the batch's trace
        client.close()
    finally:
        server.shutdown()
        server.server_close()
