"""Every exception tfs-bridge raises, in one tree.

    BridgeError                      root: catch this to catch anything the bridge raises on purpose
    ├── ConfigError                  a bad setting; the CLI prints one line and exits 2
    ├── ModelServerError             a model-server gRPC call failed (.code is the grpc.StatusCode)
    │   ├── ModelServerUnavailable   UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: retry, then back off
    │   ├── ModelNotFound            NOT_FOUND, FAILED_PRECONDITION: wrong model, version or signature
    │   └── ModelRejectedInput       INVALID_ARGUMENT: the request (or one image in it) is bad
    ├── SignatureError               the serving signature is not one the bridge can feed or read
    ├── RecordError                  one record cannot be classified; it becomes a dead letter
    │   ├── InvalidRecord            stage "parse": not a URL or JSON with a "url"
    │   ├── FetchError               stage "fetch": scheme, HTTP status, timeout, size, not an image
    │   ├── ImageError               stage "preprocess": Pillow cannot decode or convert it
    │   └── PredictionRejected       stage "predict": the model rejected this image (INVALID_ARGUMENT)
    └── KafkaTransactionError        a Kafka transaction call failed
        ├── TransactionAborted       txn_requires_abort(): abort, rewind to the committed offsets, redo
        └── FatalKafkaError          fatal(), e.g. a fenced producer: exit non-zero
"""

from __future__ import annotations

import grpc


class BridgeError(Exception):
    """Root of every exception tfs-bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing or invalid."""


class ModelServerError(BridgeError):
    """A call to the model server failed."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModelServerUnavailable(ModelServerError):
    """The model server is down, overloaded or too slow; worth retrying later."""


class ModelNotFound(ModelServerError):
    """The model, version, version label or signature does not exist on the server."""


class ModelRejectedInput(ModelServerError):
    """The model server refused the request's inputs (INVALID_ARGUMENT)."""


class SignatureError(BridgeError):
    """The serving signature has inputs or outputs the bridge cannot use."""


class RecordError(BridgeError):
    """One input record cannot be classified. `stage` names where it failed."""

    stage = "record"

    @property
    def error_type(self) -> str:
        return type(self).__name__


class InvalidRecord(RecordError):
    stage = "parse"


class FetchError(RecordError):
    stage = "fetch"


class ImageError(RecordError):
    stage = "preprocess"


class PredictionRejected(RecordError):
    stage = "predict"


class KafkaTransactionError(BridgeError):
    """A transactional producer call failed."""


class TransactionAborted(KafkaTransactionError):
    """The transaction had to be aborted; the batch must be redone from the committed offsets."""


class FatalKafkaError(KafkaTransactionError):
    """The producer cannot continue (for example, another instance fenced it)."""
