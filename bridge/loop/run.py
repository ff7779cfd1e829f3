"""Start the bridge: wait for the model, build the transform, the Kafka clients and the run loop
(bridge.loop.bridge_loop), serve the health endpoints, and close everything in order when it stops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge.config import Settings
from bridge.errors import (BridgeError, ConfigError, FatalKafkaError, ModelServerError, ModelServerUnavailable,
                           SignatureError)
from bridge.images.decode_pool import DecodePool
from bridge.images.fetch import FetchLimits, ImageFetcher
from bridge.images.preprocess import Preprocessor, ScaleSpec, probe_png
from bridge.kafka.clients import ReadCommittedConsumer, TransactionalProducer
from bridge.loop.bridge_loop import BridgeLoop
from bridge.loop.pipeline import BatchingPolicy, Pipeline
from bridge.loop.stop_signal import StopSignal
from bridge.model.backend import ModelBackend, open_backend
from bridge.model.predictor import Predictor, RetryPolicy
from bridge.model.signature import ImageSignature
from bridge.ops.health import Health, HealthServer
from bridge.ops.metrics import BridgeMetrics
from bridge.ops.tracing import NOOP, Tracing, open_tracing

log = logging.getLogger(__name__)


def wait_for_model(client: ModelBackend, timeout: float, stop: StopSignal,
                   health: Health | None = None) -> ImageSignature | None:
    """Check the model and read its signature before consuming anything; None if stopped while waiting.

    NOT_FOUND / FAILED_PRECONDITION / INVALID_ARGUMENT (e.g. an unknown version label) / an unusable signature
    are configuration errors; an unreachable or still-loading server is waited for until `timeout`.
    """
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if health is not None:
            health.beat()  # waiting on purpose is not being stuck
        try:
            if any(status.state == "AVAILABLE" for status in client.status()):
                return client.signature()
        except ModelServerUnavailable:
            pass
        except (ModelServerError, SignatureError) as exc:
            raise ConfigError(str(exc)) from None
        if time.monotonic() >= deadline:
            raise BridgeError(f"model server {client.address} has no AVAILABLE version of "
                              f"{client.target.describe()} after {timeout:.0f}s")
        log.info("waiting for %s at %s", client.target.describe(), client.address)
        stop.event.wait(1.0)
    return None


def watch_model_status(client: ModelBackend, health: Health, interval: float, stop: threading.Event) -> None:
    """Until stopped, ask every `interval` whether the model has an AVAILABLE version, for /readyz: an idle
    bridge learns that its model server is down before a record needs it."""
    while not stop.wait(interval):
        try:
            available = any(status.state == "AVAILABLE" for status in client.status(timeout=interval))
            health.problem("model status", None if available else f"{client.target.describe()} is not AVAILABLE")
        except ModelServerError as exc:
            health.problem("model status", str(exc))


def _served_version(client: ModelBackend) -> int | str:
    """The newest AVAILABLE version, for the model info metric ("unknown" if the server does not say)."""
    try:
        versions = [status.version for status in client.status() if status.state == "AVAILABLE"]
    except ModelServerError:
        return "unknown"
    return max(versions) if versions else "unknown"


def build_pipeline(settings: Settings, client: ModelBackend, signature: ImageSignature,
                   interrupt: threading.Event, metrics: BridgeMetrics | None = None,
                   tracing: Tracing = NOOP) -> Pipeline:
    """The transform as the settings describe it: fetcher, preprocessor, predictor and their stages."""
    metrics = metrics or BridgeMetrics()
    scaling = ScaleSpec(settings.input_scale, settings.input_offset)
    preprocessor = Preprocessor(signature, scaling, max_pixels=settings.max_image_pixels,
                                max_decodes=settings.max_decodes)
    decoder: Preprocessor | DecodePool = preprocessor
    if settings.decode_processes:
        decoder = DecodePool(signature, scaling, processes=settings.decode_processes,
                             max_pixels=settings.max_image_pixels)
    fetcher = ImageFetcher(FetchLimits(
        connect_timeout=settings.seconds("fetch_connect_timeout_ms"),
        read_timeout=settings.seconds("fetch_read_timeout_ms"),
        deadline=settings.seconds("fetch_deadline_ms"), max_bytes=settings.fetch_max_bytes,
        max_redirects=settings.fetch_max_redirects), settings.address_policy(), pool_size=settings.fetch_concurrency)
    predictor = Predictor(client, signature, preprocessor.prepare(probe_png()), top_k=settings.top_k, retry=RetryPolicy(
        budget=settings.seconds("retry_budget_ms"), initial_backoff=settings.seconds("retry_initial_backoff_ms"),
        max_backoff=settings.seconds("retry_max_backoff_ms")), interrupt=interrupt,
        on_retry=lambda code: metrics.retries.labels(code).inc())
    return Pipeline(fetcher, decoder, predictor, BatchingPolicy(
        settings.max_batch_size, settings.seconds("batch_linger_ms"), settings.max_in_flight),
        fetch_concurrency=settings.fetch_concurrency, max_message_bytes=settings.max_message_bytes(),
        metrics=metrics, tracing=tracing)


def run_bridge(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Raises ConfigError / BridgeError for the CLI."""
    tracing = open_tracing(settings.tracing)  # first: a missing tracing extra is a ConfigError
    stop = StopSignal(settings.seconds("shutdown_timeout_ms"))
    stop.install()
    metrics = BridgeMetrics()
    health = Health(settings.seconds("liveness_timeout_ms"))
    server = start_health_server(settings, health, metrics)
    try:
        return _run(settings, stop, metrics, health, tracing)
    finally:
        if server is not None:
            server.close()
        tracing.shutdown()  # exports the spans still buffered


def start_health_server(settings: Settings, health: Health, metrics: BridgeMetrics) -> HealthServer | None:
    """/metrics, /livez and /readyz on --metrics-port (none when it is 0)."""
    if not settings.metrics_port:
        return None
    try:
        return HealthServer(settings.metrics_host, settings.metrics_port, health, metrics.registry).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.metrics_host}:{settings.metrics_port} "
                          f"(--metrics-port): {exc.strerror or exc}") from None


def _run(settings: Settings, stop: StopSignal, metrics: BridgeMetrics, health: Health,
         tracing: Tracing = NOOP) -> int:
    client = open_backend(settings)
    signature = wait_for_model(client, settings.seconds("startup_timeout_ms"), stop, health)
    if signature is None:
        client.close()
        return 0
    log.info("model ready: %s", signature.describe())
    metrics.set_model(settings.model_name, _served_version(client), signature.name)
    health.problem("model", None)
    pipeline = build_pipeline(settings, client, signature, stop.event, metrics, tracing)
    threading.Thread(target=watch_model_status, args=(client, health, settings.seconds("resume_check_interval_ms"),
                                                      stop.event), name="model-status", daemon=True).start()
    kafka_timeout = settings.seconds("kafka_timeout_ms")
    producer = TransactionalProducer(settings.producer_config(), settings.derived_transactional_id(), kafka_timeout)

    def consumer_factory(**callbacks: Callable) -> ReadCommittedConsumer:
        return ReadCommittedConsumer(settings.consumer_config(), [settings.input_topic], **callbacks,
                                     close_timeout=kafka_timeout)

    def replace_producer() -> TransactionalProducer:
        return TransactionalProducer(settings.producer_config(), settings.derived_transactional_id(), kafka_timeout)

    loop = None
    kafka_usable = True
    try:
        producer.init()
        loop = BridgeLoop(settings, consumer_factory, producer, pipeline, stop, health, replace_producer)
        health.problem("kafka", None)  # in the group: partitions assigned, or being waited for
        loop.run()
    except FatalKafkaError:
        kafka_usable = False  # closing a fenced or hung client could block: leave that to the process exit
        raise
    finally:
        closers = [pipeline.close, client.close]
        if kafka_usable:
            current = loop.producer if loop is not None else producer  # the loop may have replaced it
            closers = ([loop.consumer.close] if loop is not None else []) + [current.close] + closers
        for close in closers:  # each one, even if another fails; the first error is the one that matters
            try:
                close()
            except Exception as exc:  # noqa: BLE001
                log.warning("while closing: %s", exc)
    log.info("stopped cleanly")
    return 0
