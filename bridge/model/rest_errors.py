"""TF Serving's REST failures as the canonical status codes they come from.

TF Serving answers a failed REST call with {"error": MESSAGE} and the HTTP status of the failure's code
(INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE all give 400). Mapped back, 400 is taken as
INVALID_ARGUMENT: the predictor then bisects the batch and checks with its probe image, so a model that rejects
every input (a missing signature) still pauses the loop instead of dead-lettering the stream. Statuses TF Serving
does not send but proxies in front of it do (502, 408) are mapped to what they mean for a retry.
"""

from __future__ import annotations

import grpc
import orjson

from bridge.errors import ModelServerError
from bridge.model.backend import model_server_error
from bridge.redact import redact_text

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
MAX_MESSAGE_CHARS = 300


def error_message(body: bytes) -> str:
    """The "error" of a TF Serving error body, or the start of a body that is not one (a proxy's page)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        text = parsed["error"]
    else:
        text = body.decode("utf-8", "replace")
    return redact_text(" ".join(text.split()))[:MAX_MESSAGE_CHARS] or "(empty body)"


def http_error(status: int, body: bytes, what: str) -> ModelServerError:
    """The ModelServerError for a non-200 answer (UNKNOWN for a status without a canonical code)."""
    code = CODES.get(status)
    name = code.name if code is not None else "UNKNOWN"
    return model_server_error(code, f"{what}: {name} (HTTP {status}): {error_message(body)}")
