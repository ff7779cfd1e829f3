"""A TensorFlow-Serving-compatible gRPC model server (Python, real TensorFlow, official stubs).

    python -m serving.model_server --model-base-dir DIR [--port 8500] [--host 127.0.0.1]
        [--rest-port PORT] [--max-queued-requests 64] [--workers 2] [--tensor-content] [--fault-file PATH]

Serves the highest version of every DIR/<model>/<version>/ SavedModel over
tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
tensorflow.serving.ModelService (GetModelStatus), answering like TF Serving does.
With --rest-port, TF Serving's REST API (serving/rest_api.py) too, on that port, over the same
Predictor (same queue and worker limits) and fault file.
Prints "ready on HOST:PORT models: name:version ..." once serving (port 0 = pick a free one), or
"ready on HOST:PORT rest HOST:RESTPORT models: ..." with --rest-port.

For tests, --fault-file names a file read before every Predict: when it holds a gRPC status code
name (e.g. "UNAVAILABLE"), Predict answers that code with "injected fault" (REST: the HTTP status
TF Serving maps it to); "CODE hang" first waits until the client's deadline or cancellation (REST:
until the client hangs up). Missing or empty means normal operation.
GetModelStatus and GetModelMetadata never see faults.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, NoReturn, Sequence, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.rest_api import RestApi, RestServer  # noqa: E402
from serving.servables import (  # noqa: E402
    ModelRegistry,
    Predictor,
    ServingError,
    invalid_argument,
    load_model_base_dir,
)

log = logging.getLogger("serving.model_server")

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving accepts messages up to 2 GiB
SIGNATURE_DEF_FIELD = "signature_def"
INJECTED_FAULT_MESSAGE = "injected fault"
MAX_HANG_SECONDS = 3600.0  # a hang without a client deadline ends at cancellation or after this
Response = TypeVar("Response")


def handle(context: grpc.ServicerContext, call: Callable[[], Response]) -> Response:
    """Run a request; turn ServingError into the gRPC status (context.abort raises)."""
    try:
        return call()
    except ServingError as exc:
        context.abort(exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - never leak a stack trace as UNKNOWN
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Fault:
    """A status code every Predict answers, optionally after waiting for the client's deadline."""

    code: grpc.StatusCode
    hang: bool = False
    message: ClassVar[str] = INJECTED_FAULT_MESSAGE

    def answer(self, context: grpc.ServicerContext) -> NoReturn:
        """Abort the call with the code; with hang, first wait until the RPC ends or its deadline passes."""
        if self.hang:
            ended = threading.Event()
            if context.add_callback(ended.set):
                remaining = context.time_remaining()  # huge without a deadline
                # Past the deadline, gRPC ends the call (and runs the callback): wait for that, so the client
                # always sees DEADLINE_EXCEEDED rather than an answer that races it.
                ended.wait(MAX_HANG_SECONDS if remaining is None else min(remaining + 5.0, MAX_HANG_SECONDS))
        context.abort(self.code, self.message)
        raise AssertionError("unreachable")


def parse_fault(text: str) -> Fault | None:
    """Parse "CODE" or "CODE hang" into a Fault; empty text, an unknown code or OK give None."""
    words = text.split()
    if not words:
        return None
    code = grpc.StatusCode.__members__.get(words[0].upper())
    if code is None or code is grpc.StatusCode.OK:
        log.warning("ignoring fault %r: not a gRPC error code name", text.strip())
        return None
    return Fault(code, hang="hang" in words[1:])


class FaultFile:
    """The Fault named in a file, re-parsed only when the file's inode, mtime or size change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[tuple[int, int, int] | None, Fault | None] = (None, None)

    def current(self) -> Fault | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            seen, fault = self._seen
            if key != seen:
                text = self.path.read_text()
                fault = parse_fault(text)
                self._seen = (key, fault)
                log.info("fault file %s now reads %r", self.path, text.strip())
            return fault
        except OSError:  # missing (or vanished between stat and read): no fault
            return None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, predictor: Predictor,
                 faults: FaultFile | None = None) -> None:
        self.registry = registry
        self.predictor = predictor
        self.faults = faults or FaultFile(None)
        # gRPC and REST, answered or not; logged at shutdown (tests check which server got traffic)
        self.predict_calls = 0
        self._count_lock = threading.Lock()

    def arrive(self) -> Fault | None:
        """Count one Predict call (gRPC or REST); returns the fault it must answer, if any."""
        with self._count_lock:
            self.predict_calls += 1
        return self.faults.current()

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        fault = self.arrive()
        if fault is not None:
            fault.answer(context)
        return handle(context, lambda: self.predictor.predict(request))

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return handle(context, lambda: self.metadata(request))

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata's answer; raises ServingError."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for metadata_field in request.metadata_field:
            if metadata_field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {metadata_field} is not supported")
        servable = self.registry.resolve(request.model_spec)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_def_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        return handle(context, lambda: self.status(request))

    def status(self, request: get_model_status_pb2.GetModelStatusRequest
               ) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus's answer (a version label is ignored, as in TF Serving); raises ServingError."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        versions = sorted(self.registry.versions(spec.name))
        if spec.HasField("version"):
            if spec.version.value not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} "
                                   f"of model {spec.name}")
            versions = [spec.version.value]
        elif not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            status.status.SetInParent()  # error_code OK, empty message
        return response


def build_server(registry: ModelRegistry, host: str, port: int, max_queued_requests: int,
                 workers: int, tensor_content: bool,
                 fault_file: Path | None = None) -> tuple[grpc.Server, int, PredictionService]:
    """Create and bind (not start) the server; returns it with the bound port and its PredictionService."""
    predictor = Predictor(registry, max_queued_requests, workers, tensor_content)
    # Admitted Predicts hold at most max_queued_requests threads; the rest answer rejections,
    # metadata and status calls immediately.
    executor = futures.ThreadPoolExecutor(max_workers=max_queued_requests + workers,
                                          thread_name_prefix="grpc")
    server = grpc.server(executor, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),  # fail loudly if the port is taken
    ])
    predictions = PredictionService(registry, predictor, FaultFile(fault_file))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    bound_port = server.add_insecure_port(f"{host}:{port}")
    if bound_port == 0:
        raise RuntimeError(f"cannot bind {host}:{port}")
    return server, bound_port, predictions


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-dir", required=True, type=Path,
                        help="directory holding <model>/<version>/saved_model.pb")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--rest-port", type=int,
                        help="also serve TF Serving's REST API on this port (0 picks a free one); "
                             "default: no REST API")
    parser.add_argument("--max-queued-requests", type=int, default=64,
                        help="Predict calls admitted at once (running + waiting); "
                             "beyond that UNAVAILABLE")
    parser.add_argument("--workers", type=int, default=2, help="concurrent model runs")
    parser.add_argument("--tensor-content", action="store_true",
                        help="serialize outputs as tensor_content "
                             "(like --enable_serialization_as_tensor_content)")
    parser.add_argument("--grace", type=float, default=5.0, help="shutdown grace seconds")
    parser.add_argument("--fault-file", type=Path,
                        help="tests: a file naming a gRPC code (\"CODE\" or \"CODE hang\") "
                             "that every Predict answers while it exists")
    args = parser.parse_args(argv)
    if args.max_queued_requests < 1 or args.workers < 1:
        parser.error("--max-queued-requests and --workers must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.model_base_dir.is_dir():
        print(f"error: model base dir {args.model_base_dir} does not exist", file=sys.stderr)
        return 2
    registry = ModelRegistry(load_model_base_dir(args.model_base_dir))
    if not registry.models:
        print(f"error: no <model>/<version>/saved_model.pb under {args.model_base_dir}",
              file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    try:
        server, port, predictions = build_server(registry, args.host, args.port, args.max_queued_requests,
                                    args.workers, args.tensor_content, args.fault_file)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rest = None
    if args.rest_port is not None:
        try:
            rest = RestServer(RestApi(predictions, ModelService(registry)), args.host, args.rest_port,
                              MAX_HANG_SECONDS)
        except OSError as exc:
            print(f"error: cannot bind REST {args.host}:{args.rest_port}: {exc}", file=sys.stderr)
            return 2
        rest.start()
    server.start()
    rest_address = "" if rest is None else f" rest {args.host}:{rest.port}"
    print(f"ready on {args.host}:{port}{rest_address} models: {registry.describe()}", flush=True)

    while not stop.wait(0.5):
        pass
    log.info("shutting down after %d Predict calls", predictions.predict_calls)
    stopped = server.stop(args.grace)
    if rest is not None:
        rest.stop(args.grace)
    stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
