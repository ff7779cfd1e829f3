"""W3C trace context and OpenTelemetry spans (--tracing; the tracing extra). The only module that imports OTel.

What the bridge traces, when --tracing is on:
    process TOPIC   one span per record (kind CONSUMER), from the moment the loop hands it to the pipeline until
                    the transaction holding its result or dead letter commits (event "committed"), or is given
                    up (status ERROR "transaction aborted": the record is redone, under a new span of the same
                    trace). Its parent is the record's `traceparent` header (and `tracestate`); a record without a
                    valid one starts a new trace. A dead letter's span has status ERROR and its stage and type.
    fetch, preprocess   its children, one each
    predict         one span per model call on a batch (kind CLIENT), linked to the span of each record in the
                    batch; its context goes to the model server (gRPC metadata, HTTP headers: `traceparent`,
                    `tracestate`), so a tracing model server joins the trace
    commit          one span per transaction commit, linked to the records it commits
The result or dead letter carries the record span's context in its own `traceparent` (and `tracestate`)
headers, so consumers downstream continue the trace.

Sampling, exporter and resource come from the standard OTEL_* environment variables (OTEL_TRACES_SAMPLER,
OTEL_TRACES_SAMPLER_ARG, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_BSP_*...); the exporter is
OTLP over gRPC. A batch or commit span is sampled when any record it links to is, whatever the sampler says of
a new trace: a sampled record's model call is always in the collector.

With tracing off, NOOP stands in: every call returns at once, and nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from bridge.errors import ConfigError
from bridge.records import DeadLetter, Header, OutputMessage, Record

log = logging.getLogger(__name__)
T = TypeVar("T")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
INSTALL_HINT = "--tracing (TFS_BRIDGE_TRACING) needs the tracing extra: pip install 'tfs-bridge[tracing]'"
DEFAULT_SERVICE_NAME = "tfs-bridge"

_outgoing = threading.local()  # .headers: the trace context of the model call this thread is making


def outgoing_headers() -> Sequence[tuple[str, str]]:
    """The trace context the current thread's model call carries (`traceparent`, `tracestate`), as gRPC
    metadata or HTTP headers; empty when tracing is off or no batch span is current."""
    return getattr(_outgoing, "headers", ())


class RecordTrace:
    """One record's span; `headers` is its context as Kafka headers, for the record's result or dead letter."""

    __slots__ = ("span", "context", "headers", "ended")

    def __init__(self, span: Any, context: Any, headers: list[tuple[str, bytes]]) -> None:
        self.span = span
        self.context = context  # an OTel Context holding the span: its children's parent
        self.headers = headers
        self.ended = False


class Tracing:
    """Tracing off: the interface the pipeline and the loop call, doing nothing."""

    enabled = False

    def record(self, record: Record) -> RecordTrace | None:
        """Start the record's span, its parent read from the record's headers."""
        return None

    def stage(self, trace: RecordTrace | None, name: str, step: Callable[[], T]) -> T:
        """step()'s value; traced as a child span of the record's (status ERROR if it became a dead letter)."""
        return step()

    def batch(self, traces: Sequence[RecordTrace | None]) -> contextlib.AbstractContextManager[None]:
        """Around one model call on a batch: its span, linked to the records', current for outgoing_headers()."""
        return _NULL

    def commit(self, messages: Sequence[OutputMessage]) -> contextlib.AbstractContextManager[None]:
        """Around a transaction commit: its span; once it succeeded, the committed records' spans end."""
        return _NULL

    def abandon(self, messages: Iterable[OutputMessage], reason: str) -> None:
        """The records' transaction was given up (aborted, or its producer replaced): their spans end so."""

    def shutdown(self) -> None:
        """Export what is left (bounded by OTEL_BSP_EXPORT_TIMEOUT)."""


NOOP = Tracing()
_NULL = contextlib.nullcontext()


def open_tracing(enabled: bool) -> Tracing:
    """The tracing the settings ask for: NOOP when off; ConfigError (one line) when on without the extra."""
    if not enabled:
        return NOOP
    try:
        return _OtelTracing()
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc.name or exc} is missing)") from None


def parent_headers(headers: Iterable[Header] | None) -> dict[str, str]:
    """The record's `traceparent` and `tracestate` headers (names in any case, the first of each), as text for
    the W3C propagator; a value that is not ASCII, or missing, is left out (the propagator then starts a new
    trace)."""
    found: dict[str, str] = {}
    for name, value in headers or ():
        key = name.lower() if isinstance(name, str) else None
        if key not in (TRACEPARENT, TRACESTATE) or key in found or value is None:
            continue
        try:
            found[key] = bytes(value).decode("ascii")
        except (UnicodeDecodeError, TypeError):
            continue
    return found


class _OtelTracing(Tracing):
    enabled = True

    def __init__(self, exporter: Any = None) -> None:
        """exporter: None for OTLP/gRPC as OTEL_* says, batched; another SpanExporter (tests) gets each span."""
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create()
        if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        provider.sampler = _linked_sampler(provider.sampler)  # before get_tracer: tracers copy it
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()) if exporter is None
                                    else SimpleSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("tfs-bridge")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._link, self._kind, self._status, self._code = Link, SpanKind, Status, StatusCode
        log.info("tracing on: %s", self._describe())

    def _describe(self) -> str:
        import os

        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317"
        return f"OTLP/gRPC to {endpoint}, sampler {self._provider.sampler.get_description()}"

    def record(self, record: Record) -> RecordTrace:
        parent = self._propagator.extract(parent_headers(record.headers))
        span = self._tracer.start_span(
            f"process {record.topic}", context=parent, kind=self._kind.CONSUMER, attributes={
                "messaging.system": "kafka", "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset})
        context = self._trace.set_span_in_context(span)
        return RecordTrace(span, context, [(k, v.encode("ascii")) for k, v in self._inject(context)])

    def _inject(self, context: Any) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=context)
        return sorted(carrier.items())

    def stage(self, trace: RecordTrace | None, name: str, step: Callable[[], T]) -> T:
        if trace is None:
            return step()
        span = self._tracer.start_span(name, context=trace.context)
        try:
            result = step()
            if isinstance(result, DeadLetter):
                self._failed(span, result.stage, result.error_type)
            return result
        except BaseException as exc:  # a SystemFailure going up: the span says so, the loop handles it
            span.set_status(self._status(self._code.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def batch(self, traces: Sequence[RecordTrace | None]) -> Iterator[None]:
        links = [self._link(t.span.get_span_context()) for t in traces if t is not None]
        span = self._tracer.start_span("predict", kind=self._kind.CLIENT, links=links,
                                       attributes={"tfs_bridge.batch.size": len(traces)})
        previous = outgoing_headers()
        _outgoing.headers = self._inject(self._trace.set_span_in_context(span))
        try:
            yield
        except BaseException as exc:
            span.set_status(self._status(self._code.ERROR, type(exc).__name__))
            raise
        finally:
            _outgoing.headers = previous
            span.end()

    @contextlib.contextmanager
    def commit(self, messages: Sequence[OutputMessage]) -> Iterator[None]:
        traces = [m.trace for m in messages if isinstance(m.trace, RecordTrace)]
        span = self._tracer.start_span(
            "commit", links=[self._link(t.span.get_span_context()) for t in traces],
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(messages)})
        try:
            yield
        except BaseException as exc:
            span.set_status(self._status(self._code.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
        for message in messages:
            self._end(message, None)

    def abandon(self, messages: Iterable[OutputMessage], reason: str) -> None:
        for message in messages:
            self._end(message, reason)

    def _end(self, message: OutputMessage, abandoned: str | None) -> None:
        trace = message.trace
        if not isinstance(trace, RecordTrace) or trace.ended:
            return
        trace.ended = True
        span = trace.span
        if message.failure is not None:
            self._failed(span, *message.failure)
        if abandoned is not None:
            span.set_status(self._status(self._code.ERROR, abandoned))
        else:
            span.add_event("committed", {"tfs_bridge.outcome": "result" if message.is_result else "dead letter"})
        span.end()

    def _failed(self, span: Any, stage: str, error_type: str) -> None:
        span.set_attributes({"tfs_bridge.error.stage": stage, "tfs_bridge.error.type": error_type})
        span.set_status(self._status(self._code.ERROR, f"dead-lettered at {stage}: {error_type}"))

    def shutdown(self) -> None:
        self._provider.shutdown()


def _linked_sampler(base: Any) -> Any:
    """The environment's sampler, except that a new trace linked to a sampled span is sampled."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class LinkedSampler(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            new_trace = not get_current_span(parent_context).get_span_context().is_valid
            if new_trace and links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"LinkedSampler{{{base.get_description()}}}"

    return LinkedSampler()
