"""tfs-bridge: classify image URLs from Kafka with a TensorFlow Serving model, exactly once.

The public API is re-exported here; the exception tree is documented in bridge.errors.
Importing bridge never imports TensorFlow: TF Serving's API comes from the project's own protos.
"""

from bridge.errors import (BridgeError, ConfigError, FatalKafkaError, FetchBlocked, FetchError, ImageError,
                           InvalidRecord, KafkaTransactionError, ModelGone, ModelNotFound, ModelRejectedInput,
                           ModelServerError, ModelServerRefused, ModelServerUnavailable, ModelUnusable, OutputError,
                           PredictionRejected, RecordError, SignatureError, SystemFailure, TransactionAborted,
                           UnexpectedRecordError)
from bridge.kafka.clients import ReadCommittedConsumer, TransactionalProducer
from bridge.model.backend import ModelBackend, ModelTarget, Prediction, VersionStatus, open_backend
from bridge.model.grpc_backend import GrpcBackend
from bridge.model.signature import ImageSignature, InputKind, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "BridgeError", "ConfigError", "FatalKafkaError", "FetchBlocked", "FetchError", "ImageError", "ImageSignature",
    "InputKind", "InvalidRecord", "KafkaTransactionError", "ModelGone", "ModelNotFound", "ModelRejectedInput",
    "GrpcBackend", "ModelBackend", "ModelServerError", "ModelServerRefused", "ModelServerUnavailable", "ModelTarget",
    "ModelUnusable", "OutputError", "Prediction", "PredictionRejected", "ReadCommittedConsumer", "RecordError",
    "SignatureError", "SystemFailure", "TensorSpec", "TransactionAborted", "TransactionalProducer",
    "UnexpectedRecordError", "VersionStatus", "open_backend",
]
