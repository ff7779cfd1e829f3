"""TF Serving's REST API as a model backend (also KServe's v1 protocol, which is the same API).

- status:    GET  /v1/models/NAME[/versions/V | /labels/L]
- signature: GET  .../metadata, protobuf's JSON mapping of GetModelMetadataResponse (camelCase or proto field
  names, int64 values as strings, an "@type" on the SignatureDefMap), parsed into the gRPC API's own protos
- Predict:   POST ...:predict with {"signature_name": ..., "inputs": {NAME: [...]}} (the columnar format), encoded
  images as {"b64": ...}; the answer's "outputs" is a map of outputs, or the output itself when there is one.

Failures map onto the same classes as gRPC's codes (rest_errors). Calls share a pool of keep-alive connections and
each has one wall-clock deadline, however slowly the server answers (the sockets are shut at the deadline).

TF Serving's REST answer does not say which version answered: the bridge reports the version the call named, or
else the newest AVAILABLE version that the last status call saw.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
import numpy as np
import orjson
import requests
from google.protobuf import json_format

from bridge.errors import ModelServerError, ModelServerUnavailable, SignatureError
from bridge.images.http_transport import DeadlineAdapter, SocketReaper, failure_reason, root_cause
from bridge.model.backend import ModelTarget, Prediction, VersionStatus, signature_from_metadata
from bridge.model.pixels_json import uint8_json
from bridge.model.rest_errors import http_error
from bridge.model.signature import ImageSignature, InputKind
from bridge.ops.tracing import outgoing_headers
from bridge.redact import redact_url
from bridge.tfs_api import get_model_metadata_pb2, get_model_status_pb2

JSON = "application/json"
SIGNATURE_DEF_MAP_TYPE = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def model_path(target: ModelTarget) -> str:
    """/v1/models/NAME[/versions/V | /labels/L] for the target."""
    path = f"/v1/models/{quote(target.name, safe='')}"
    if target.version is not None:
        path += f"/versions/{target.version}"
    elif target.version_label:
        path += f"/labels/{quote(target.version_label, safe='')}"
    return path


def predict_body(signature: ImageSignature, images: np.ndarray | Sequence[bytes]) -> bytes:
    """The columnar :predict request for a batch: numbers as JSON arrays, encoded images as {"b64": ...}."""
    if signature.input_kind is InputKind.ENCODED:
        if isinstance(images, np.ndarray):
            raise SignatureError(f"signature {signature.name!r} takes encoded image bytes, not pixels")
        value: Any = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
    elif not isinstance(images, np.ndarray):
        raise SignatureError(f"signature {signature.name!r} takes a pixel array, not encoded bytes")
    else:
        value = orjson.Fragment(uint8_json(np.ascontiguousarray(images)))
    return orjson.dumps({"signature_name": signature.name, "inputs": {signature.input.name: value}},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def predict_outputs(signature: ImageSignature, answer: Any, with_labels: bool = True) -> dict[str, np.ndarray]:
    """The outputs of a columnar :predict answer as arrays: scores as float32, labels as bytes objects (left out
    unless with_labels)."""
    if not isinstance(answer, dict) or "outputs" not in answer:
        raise ModelServerError("the :predict answer has no \"outputs\"")
    outputs = answer["outputs"]
    if not isinstance(outputs, dict):  # one output is not wrapped in its name
        outputs = {signature.scores_output: outputs}
    arrays = {}
    for name, value in outputs.items():
        if name == signature.labels_output and with_labels:
            arrays[name] = _strings(value)
        elif name == signature.scores_output:
            try:
                with np.errstate(over="ignore"):  # beyond float32 is inf, as a float32 tensor over gRPC holds it
                    arrays[name] = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise ModelServerError(f"output {name!r} is not an array of numbers: {exc}") from None
    return arrays


def _strings(value: Any) -> np.ndarray:
    """A JSON array of strings (or {"b64": ...} objects) as an object array of bytes."""
    items = np.array(value, dtype=object)
    flat = items.ravel()
    try:
        encoded = [item.encode("utf-8") for item in flat]
    except AttributeError:  # not all strings: b64 objects, or something that is no string at all
        encoded = [_string(item) for item in flat]
    strings = np.empty(len(encoded), dtype=object)
    strings[:] = encoded
    return strings.reshape(items.shape)


def _string(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except ValueError:
            pass
    raise ModelServerError(f"a string output holds {type(item).__name__}, not a string")


class RestBackend:
    """Talks to TF Serving's REST API at one base URL about one model. Thread-safe."""

    def __init__(self, base_url: str, target: ModelTarget, *, timeout: float = 10.0, ca_cert: Path | None = None,
                 pool_size: int = 8) -> None:
        parts = urlsplit(base_url)
        self.address = redact_url(base_url)
        self.target = target
        self.timeout = timeout
        # User info becomes HTTP basic auth; it never stays in the URL, which errors may show.
        host = parts.netloc.rsplit("@", 1)[-1]
        self._base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy settings or .netrc from the environment
        if parts.username is not None:
            self._session.auth = (parts.username, parts.password or "")
        if ca_cert is not None:
            self._session.verify = str(ca_cert)
        adapter = DeadlineAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._reaper = SocketReaper(name="model-deadlines")
        self._served_version = target.version or 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RestBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def status(self, timeout: float | None = None) -> list[VersionStatus]:
        """GET the model's status; remembers the newest AVAILABLE version as the one Predict answers with."""
        what = f"model status of {self.target.describe()} at {self.address}"
        answer = self._call("GET", model_path(self.target), None, timeout, what)
        response = _parse(answer, get_model_status_pb2.GetModelStatusResponse(), what)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        statuses = [VersionStatus(s.version, state_name(s.state), s.status.error_message)
                    for s in response.model_version_status]
        available = [s.version for s in statuses if s.state == "AVAILABLE"]
        if available and self.target.version is None:
            with self._lock:
                self._served_version = max(available)
        return statuses

    def signature(self, timeout: float | None = None) -> ImageSignature:
        """The target's serving signature, from GET .../metadata."""
        what = f"metadata of {self.target.describe()} at {self.address}"
        answer = self._call("GET", model_path(self.target) + "/metadata", None, timeout, what)
        response = _parse(_with_type(answer), get_model_metadata_pb2.GetModelMetadataResponse(), what)
        if response.model_spec.HasField("version") and self.target.version is None:
            with self._lock:
                self._served_version = response.model_spec.version.value
        return signature_from_metadata(response, self.target)

    def predict_images(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes],
                       with_labels: bool = True, timeout: float | None = None) -> Prediction:
        """POST :predict for the batch. The REST API has no output filter: every output comes back, and
        with_labels=False only leaves the labels undecoded."""
        body = predict_body(signature, images)
        answer = self._call("POST", model_path(self.target) + ":predict", body, timeout,
                            f"Predict on {self.target.describe()}")
        with self._lock:
            version = self._served_version
        return Prediction(predict_outputs(signature, answer, with_labels), self.target.name, version, signature.name)

    def _call(self, method: str, path: str, body: bytes | None, timeout: float | None, what: str) -> Any:
        """One request under one deadline; the parsed JSON answer, or the ModelServerError it maps to."""
        seconds = timeout or self.timeout
        scope = self._reaper.open(time.monotonic() + seconds)
        try:
            headers = {"Content-Type": JSON, **dict(outgoing_headers())} if body is not None else None
            response = self._session.request(method, self._base + path, data=body, timeout=seconds,
                                             headers=headers)
            content = response.content
        except requests.RequestException as exc:
            if scope.expired or isinstance(exc, requests.Timeout):
                raise ModelServerUnavailable(f"{what}: DEADLINE_EXCEEDED: no answer within {seconds:g} s",
                                             grpc.StatusCode.DEADLINE_EXCEEDED) from None
            raise ModelServerUnavailable(f"{what}: UNAVAILABLE: {failure_reason(root_cause(exc))}",
                                         grpc.StatusCode.UNAVAILABLE) from None
        finally:
            self._reaper.close(scope)
        if response.status_code != 200:
            raise http_error(response.status_code, content, what)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ModelServerError(f"{what}: the answer is not JSON: {exc}") from None


def _with_type(answer: Any) -> Any:
    """The metadata answer with the SignatureDefMap's "@type" filled in where a server left it out."""
    signatures = answer.get("metadata", {}).get("signature_def") if isinstance(answer, dict) else None
    if isinstance(signatures, dict) and "@type" not in signatures:
        signatures["@type"] = SIGNATURE_DEF_MAP_TYPE
    return answer


def _parse(answer: Any, message: Any, what: str) -> Any:
    try:
        return json_format.ParseDict(answer, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ModelServerError(f"{what}: cannot read the answer: {exc}") from None
