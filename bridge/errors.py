"""Every exception tfs-bridge raises, in one tree.

The tree is also the failure boundary: a RecordError is about one record and becomes that record's dead letter;
a SystemFailure is about the bridge as a whole and pauses or stops the loop, and nothing is dead-lettered
because of it. Any other exception raised while handling one record is that record's UnexpectedRecordError.

    BridgeError                      root: catch this to catch anything the bridge raises on purpose
    ├── ConfigError                  a bad setting; the CLI prints one line and exits 2
    ├── RecordError                  one record cannot be classified; it becomes a dead letter (.stage)
    │   ├── InvalidRecord            stage "parse": not a URL or JSON with a "url"
    │   ├── FetchError               stage "fetch": scheme, HTTP status, timeout, size, not an image
    │   │   └── FetchBlocked         type "blocked": the address policy refuses where the URL leads
    │   ├── ImageError               stage "preprocess": Pillow cannot decode or convert it
    │   ├── PredictionRejected       stage "predict": the model rejected this image alone
    │   ├── OutputError              stage "output": the result cannot be encoded or is too large for Kafka
    │   └── UnexpectedRecordError    any other exception while handling the record, at the stage it happened
    ├── ModelServerError             one model-backend call failed (.code: its canonical gRPC status code,
    │   │                            also for REST and embedded); the predictor decides what it means
    │   ├── ModelServerUnavailable   UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED...: retry, then pause
    │   ├── ModelServerRefused       UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED: the server refuses every call
    │   ├── ModelNotFound            NOT_FOUND, FAILED_PRECONDITION: wrong or unloaded model, version or signature
    │   └── ModelRejectedInput       INVALID_ARGUMENT: the request (or one image in it) is bad
    ├── SignatureError               the serving signature is not one the bridge can feed or read
    └── SystemFailure                the bridge as a whole cannot go on right now; never a dead letter
        ├── ModelUnusable            the model server fails as a whole: pause input until a real Predict succeeds
        ├── ModelGone                the model changed its signature or stayed unusable too long: exit 1
        └── KafkaTransactionError    a Kafka transaction call failed
            ├── TransactionAborted   txn_requires_abort() (or the state error after it): abort, rewind, redo
            └── FatalKafkaError      fatal(), e.g. a fenced producer, or a call past its deadline: exit 1
                └── ProducerUnusable this producer cannot go on, but a new one with its transactional.id can: the
                    │                loop replaces it (the new one fences it) and redoes from the group's offsets;
                    │                exit 1 if that does not help. Also librdkafka's fatal INVALID_TXN_STATE,
                    │                and a commit or abort still unfinished at its deadline
                    └── KafkaCallHung  a call past its deadline: the client is stuck in librdkafka
"""

from __future__ import annotations

import grpc


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters ("" if it has none)."""
    return " ".join(str(exc).split())[:limit]


class BridgeError(Exception):
    """Root of every exception tfs-bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing or invalid."""


# --- one record ------------------------------------------------------------------------------------------------

class RecordError(BridgeError):
    """One input record cannot be classified. `stage` names where it failed, `error_type` what went wrong
    (the class name, unless the class names its type)."""

    stage = "record"
    type_name: str | None = None

    @property
    def error_type(self) -> str:
        return self.type_name or type(self).__name__


class InvalidRecord(RecordError):
    stage = "parse"


class FetchError(RecordError):
    stage = "fetch"


class FetchBlocked(FetchError):
    """The URL (or a redirect) leads to an address the address policy refuses; nothing was connected to."""

    type_name = "blocked"


class ImageError(RecordError):
    stage = "preprocess"


class PredictionRejected(RecordError):
    stage = "predict"


class OutputError(RecordError):
    stage = "output"


class UnexpectedRecordError(RecordError):
    """An exception the bridge did not foresee, raised while handling one record at `stage`."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        detail = one_line(cause)
        super().__init__(f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__)
        self.stage = stage
        self.cause_type = type(cause).__name__


# --- one model-server call -------------------------------------------------------------------------------------

class ModelServerError(BridgeError):
    """A call to the model backend failed; `code` is the canonical status code that names the failure."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModelServerUnavailable(ModelServerError):
    """The model server is down, overloaded or too slow; worth retrying later."""


class ModelServerRefused(ModelServerError):
    """The model server refuses the bridge itself (credentials, permissions, method): every call would fail."""


class ModelNotFound(ModelServerError):
    """The model, version, version label or signature does not exist on the server."""


class ModelRejectedInput(ModelServerError):
    """The model server refused the request's inputs (INVALID_ARGUMENT)."""


class SignatureError(BridgeError):
    """The serving signature has inputs or outputs the bridge cannot use."""


# --- the bridge as a whole -------------------------------------------------------------------------------------

class SystemFailure(BridgeError):
    """The bridge as a whole cannot go on right now; the records in hand are redone later, never dead-lettered."""


class ModelUnusable(SystemFailure):
    """The model server fails as a whole (down, refusing, failing every call): pause until a Predict succeeds."""


class ModelGone(SystemFailure):
    """The model is no longer the one the bridge started with, or stayed unusable for too long: exit non-zero."""


class KafkaTransactionError(SystemFailure):
    """A transactional producer call failed."""


class TransactionAborted(KafkaTransactionError):
    """The transaction had to be aborted; the batch must be redone from the committed offsets."""


class FatalKafkaError(KafkaTransactionError):
    """The producer or consumer cannot continue (fenced, fatal error, or a call that did not return in time)."""


class ProducerUnusable(FatalKafkaError):
    """This producer cannot go on, but a new one with the same transactional.id can (it fences this one)."""


class KafkaCallHung(ProducerUnusable):
    """A Kafka client call did not return within its deadline: that client is stuck in librdkafka for good."""
