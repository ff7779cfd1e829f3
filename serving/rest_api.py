"""TensorFlow Serving's REST API (/v1/models/...) on a port of its own, over the gRPC server's services.

    GET  /v1/models/NAME[/versions/V | /labels/L]            model status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/V | /labels/L]:predict    {"inputs": ...} or {"instances": [...]}

Paths, JSON shapes, error messages and the gRPC-code-to-HTTP-status mapping follow TF Serving's
http_server.cc, http_rest_api_handler.cc, http_rest_api_util.cc and json_tensor.cc. Predict runs on the
gRPC server's Predictor (same admission queue and worker limits), answers its fault file and is counted
with its Predict calls. Errors answer {"error": message}; paths outside /v1/ answer libevent's HTML 404.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import re
import secrets
import select
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
import numpy as np
import orjson
import tensorflow as tf
from google.protobuf.json_format import MessageToDict
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving.servables import (
    DEFAULT_SIGNATURE,
    ServingError,
    dtype_name,
    invalid_argument,
    shape_str,
    tensor_proto_to_ndarray,
)

if TYPE_CHECKING:
    from serving.model_server import ModelService, PredictionService

log = logging.getLogger("serving.rest_api")

# http_server.cc ToHTTPStatusCode.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
REASONS = {499: "Client Closed Request"}  # not in http.server's table

# http_rest_api_util: RE2 full matches, case-insensitive.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.ASCII)
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE | re.ASCII)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE | re.ASCII)
ORIGIN = re.compile(r"https?://")
JSON_SPACE = re.compile(r"[ \t\n\r]*")

# libevent's evhttp_send_error page, sent for paths the REST handler does not take.
NOT_FOUND_PAGE = (b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n"
                  b"<H1>Not Found</H1>\n</BODY></HTML>\n")
JSON_TYPE = "application/json"
SIGNATURE_DEF_FIELD = "signature_def"
BYTES_SUFFIX = "_bytes"
MAX_DEBUG_CHARS = 256  # json_tensor.cc truncates the JSON it quotes in messages

# Which JSON values each dtype takes (rapidjson's IsNumber / IsInt / IsInt64 / IsUint / IsUint64 / IsBool).
_INT32 = (-2**31, 2**31 - 1)
_INT_RANGES: dict[int, tuple[int, int]] = {
    types_pb2.DT_INT32: _INT32, types_pb2.DT_INT16: _INT32, types_pb2.DT_INT8: _INT32,
    types_pb2.DT_UINT8: _INT32, types_pb2.DT_INT64: (-2**63, 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1), types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
# Leaves are collected as these first, then cast: ints wrap into narrower types, as int_val does.
_WIDE = {**dict.fromkeys(_INT_RANGES, np.int64), types_pb2.DT_UINT64: np.uint64, types_pb2.DT_FLOAT: np.float64}
# Output dtypes json_tensor.cc can write.
_WRITABLE = {*_FLOATS, *_INT_RANGES, types_pb2.DT_STRING, types_pb2.DT_BOOL}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None = JSON_TYPE


def answer_bytes(answer: Any) -> bytes:
    """The JSON values json.dumps(answer, ensure_ascii=False) writes, UTF-8: by orjson (8x faster on a batch of
    scores), unless it wrote a null (its NaN and Infinity; our answers hold no None) or could not (ints beyond
    64 bits)."""
    try:
        text = orjson.dumps(answer)
    except TypeError:  # orjson.JSONEncodeError included
        text = b"null"
    return json.dumps(answer, ensure_ascii=False).encode() if b"null" in text else text


def error_reply(code: grpc.StatusCode, message: str) -> Reply:
    return Reply(HTTP_STATUS.get(code, 500), json.dumps({"error": message}, ensure_ascii=False).encode())


# --------------------------------------------------------------------------- JSON -> tensors


def _debug_tokens(value: Any, depth: int = 0) -> Iterator[str]:
    """rapidjson PrettyWriter output (4-space indent, single-line arrays), token by token."""
    if isinstance(value, dict) and value:
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield ("," if index else "") + "\n" + "    " * (depth + 1) + json.dumps(key, ensure_ascii=False) + ": "
            yield from _debug_tokens(item, depth + 1)
        yield "\n" + "    " * depth + "}"
    elif isinstance(value, list) and value:
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ", "
            yield from _debug_tokens(item, depth)
        yield "]"
    else:
        yield json.dumps(value, ensure_ascii=False)


def debug_string(value: Any) -> str:
    """The JSON text of value as TF Serving quotes it in errors: cut off once MAX_DEBUG_CHARS are written."""
    parts: list[str] = []
    size = 0
    for token in _debug_tokens(value):
        if size >= MAX_DEBUG_CHARS:
            break
        parts.append(token)
        size += len(token)
    return "".join(parts)


def json_type(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "Null", False: "False", True: "True"}[value]
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
                            f"is not of expected type: {dtype_name(dtype)}")


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    if not is_b64(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def dense_shape(value: Any) -> list[int]:
    """The shape the first elements imply, at every nesting level (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def leaf_value(value: Any, dtype: int) -> Any:
    """One JSON leaf as a value of dtype (AddValueToTensor), or the error TF Serving answers."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return decode_b64(value)
        raise type_error(value, dtype)
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode()
    elif dtype in _FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {debug_string(value)} "
                                                           f"to type: {dtype_name(dtype)}")
    raise type_error(value, dtype)


def collect_leaves(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    """Check value against shape level by level and append its leaves to out (FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} "
                                   f"in the JSON DOM. Expected at level: {rank}")
        out.append(leaf_value(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                               f"expected size: {shape[level]}")
    for item in value:
        collect_leaves(item, level + 1, shape, dtype, out)


def _numpy_kinds(dtype: int) -> str:
    if dtype in _FLOATS:
        return "iuf"
    return "b" if dtype == types_pb2.DT_BOOL else "iu"


def _fast_array(value: Any, dtype: int, shape: list[int]) -> np.ndarray | None:
    """np.asarray(value) when it is plainly a dense numeric tensor of dtype's JSON kind; None otherwise."""
    if dtype == types_pb2.DT_STRING or dtype not in _WRITABLE:
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged, or not numbers
        return None
    if list(array.shape) != shape:
        return None
    if array.size and array.dtype.kind not in _numpy_kinds(dtype):
        return None
    if array.size and dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if array.min() < low or array.max() > high:
            return None
    return array


def json_to_array(value: Any, dtype: int) -> np.ndarray:
    """A JSON value (nested lists of numbers, strings or {"b64": ...}) as an array of dtype."""
    if isinstance(value, _Dense):
        return value.to_array(dtype)
    np_dtype = object if dtype == types_pb2.DT_STRING else tf.as_dtype(dtype).as_numpy_dtype
    shape = dense_shape(value)
    array = _fast_array(value, dtype, shape)
    if array is None:
        leaves: list[Any] = []
        collect_leaves(value, 0, shape, dtype, leaves)
        array = np.array(leaves, dtype=_WIDE.get(dtype, np_dtype)).reshape(shape)
    return array.astype(np_dtype, copy=False)


def to_tensor_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(array, dtype=dtype, shape=array.shape)


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body's top-level JSON object (trailing bytes are ignored, as rapidjson does)."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    try:
        doc, _ = json.JSONDecoder().raw_decode(text, JSON_SPACE.match(text).end())
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: nested too deeply at offset: 0") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


# --------------------------------------------------------------------------- large numeric arrays at C speed
#
# json.loads and np.asarray cost 300-500 ns a number: a 32x224x224x3 uint8 body (4.8 million numbers) spent
# 1.5-2.5 s here where TF Serving's RapidJSON takes a small fraction of that. So in a large body, each large array
# of plain numbers is checked to be the JSON text of a dense array (the exact nesting of one shape, every
# number in JSON's grammar) and parsed by numpy's C parser, and a placeholder string stands in for it while
# json parses the rest; the tensor then comes from the numpy array. Anything the checks are unsure of is left
# to json, and any error at all makes the whole body go the exact way (parse_json), so every answer and error
# message stays what the exact path gives.

FAST_MIN_BYTES = 4096  # arrays (and bodies) shorter than this go the exact way: json is quick enough there
_LEAD = re.compile(rb"[\[ \t\n\r]*")  # an array's opening brackets and spaces
_RUN_BYTES = bytes(c in b"0123456789+-.eE,[] \t\n\r" for c in range(256))  # 1 for the bytes a numeric array holds
_SCAN_HOPS, _SCAN_HOPS_PER_RUN = 1000, 100  # strings and small arrays the scan passes before it gives up
_MAX_RANK = 64  # numpy's
_NOT_STRUCTURE = b"0123456789+-.eE \t\n\r"
_AFTER_LAST_NUMBER = b"], \t\n\r"
_BRACKETS_AS_SPACES = bytes.maketrans(b"[]", b"  ")
# The last number of an array (from its last comma): numpy's parser stops at junk only between numbers.
_LAST_NUMBER = re.compile(rb"[\[ \t\n\r]*-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[\] \t\n\r]*")
# Byte classes for the grammar check: digits are <= _DIGIT.
_ZERO, _DIGIT, _DOT, _EXP, _MINUS, _PLUS, _SEP = range(7)
_CLASSES = bytes({**dict.fromkeys(b"123456789", _DIGIT), ord("0"): _ZERO, ord("."): _DOT, ord("e"): _EXP,
                  ord("E"): _EXP, ord("-"): _MINUS, ord("+"): _PLUS}.get(c, _SEP) for c in range(256))
_CHUNK = 1 << 16  # bytes per step of the grammar check (stays in cache)
_INT64_MAX = np.iinfo(np.int64).max  # PyOS_strtol's answer to an overflow, of either sign
_EXACT_FLOAT_INTS = 2.0 ** 53
_NONCE = secrets.token_hex(8)  # placeholders are "\u0000<nonce>:<n>"


class _Unsure(Exception):
    """The fast path cannot vouch for the result: the exact path decides."""


@dataclass(frozen=True, eq=False)
class _Dense:
    """A dense array of JSON numbers, parsed by numpy, standing where json would have put nested lists."""

    values: np.ndarray  # flat: int64 when every number is an integer, else float64
    shape: tuple[int, ...]
    integral: bool
    int_minus_zero: bool  # an integer -0 among non-integers: json makes it 0, numpy -0.0
    low: Any
    high: Any

    def to_array(self, dtype: int) -> np.ndarray:
        """What json_to_array makes of these numbers as dtype (and of each row); _Unsure if not plainly that."""
        if dtype in _FLOATS:
            if self.int_minus_zero:
                raise _Unsure("an integer -0 among floats")
        elif dtype in _INT_RANGES:
            low, high = _INT_RANGES[dtype]
            if not self.integral or self.low < low or self.high > high:  # json_to_array's type errors
                raise _Unsure(f"not all {dtype_name(dtype)} values")
        else:  # strings, bools: errors; other types: UNIMPLEMENTED
            raise _Unsure(f"numbers for {dtype_name(dtype)}")
        # as json_to_array: integers from int64, the others from float64 (float32 rounded once, from there)
        return self.values.astype(tf.as_dtype(dtype).as_numpy_dtype).reshape(self.shape)


def _skeleton(dims: list[int]) -> bytes:
    """The brackets and commas of the dense nesting of shape dims (numbers left out)."""
    text = b""
    for size in reversed(dims):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def _dense_dims(skeleton: bytes, rank: int) -> list[int] | None:
    """The shape whose dense nesting has exactly this skeleton, or None.

    The first list at level k (from 1) starts at skeleton[k - 1] and ends at the first rank - k + 1 closing
    brackets in a row; its length gives its size from the length of one element. The shape is then checked by
    building its skeleton and comparing it with the whole text.
    """
    if rank > _MAX_RANK:
        return None
    dims: list[int] = []
    inner = 0  # skeleton length of one element of the current level (a number: 0)
    for level in range(rank, 0, -1):
        closes = rank - level + 1
        at = skeleton.find(b"]" * closes)
        if at < 0:
            return None
        length = at + closes - level + 1
        size, rest = divmod(length - 1, inner + 1)
        if rest or size < 1:
            return None
        dims.insert(0, size)
        inner = length
    if inner != len(skeleton) or _skeleton(dims) != skeleton:
        return None
    return dims


def _windows(codes: np.ndarray) -> Iterator[np.ndarray]:
    """codes in steps of _CHUNK positions, each with the 3 codes before and 1 after (_SEP beyond the ends)."""
    size = len(codes)
    for start in range(0, size, _CHUNK):
        stop = min(start + _CHUNK, size)
        if start >= 3 and stop < size:
            yield codes[start - 3:stop + 1]
        else:
            yield np.concatenate((np.full(3 - min(start, 3), _SEP, np.uint8), codes[max(start - 3, 0):stop + 1],
                                  np.full(stop + 1 - size if stop == size else 0, _SEP, np.uint8)))


def _check_numbers(text: bytes, count: int) -> bool | None:
    """None unless text holds exactly count numbers (runs of number bytes) and each is in JSON's grammar as
    far as bytes next to each other tell: no leading '+' or zeros, digits on both sides of '.', a digit after
    '-'; else whether an integer -0 is among them.

    numpy's parser takes "+1", "01", ".5", "1.", "1.e5", a field of spaces (as -1 or 0) and, for integers,
    "- 1" and a lone "-" (as 0); json rejects them all. What it does not take ("1e", "1.2.3", "--1", two
    numbers in one field) stops it with an error. With one number per field there are as many fields as
    numbers, so the count rules out empty fields. Each byte's class is checked against the classes of the
    three bytes before it and the one after.
    """
    minus, plus, dot = b"-" in text, b"+" in text, b"." in text
    numbers = 0
    if not (minus or plus or dot or b"e" in text or b"E" in text):  # digits and separators only
        for window in _windows(np.frombuffer(text, np.uint8)):  # the bytes themselves, no classes needed
            digit = (window - ord("0")) < 10
            here, before = digit[3:-1], digit[2:-2]
            if (here & (window[2:-2] == ord("0")) & ~digit[1:-3]).any():  # a 0 after a non-digit, then a digit
                return None
            numbers += np.count_nonzero(here & ~before)
        return False if numbers == count else None
    codes = np.frombuffer(text.translate(_CLASSES), np.uint8)
    int_minus_zero = False
    for window in _windows(codes):
        here, before, before2, before3, after = window[3:-1], window[2:-2], window[1:-3], window[:-4], window[4:]
        numbers += np.count_nonzero((here < _SEP) & (before == _SEP))
        after_zero = before == _ZERO
        number_start = before2 == _SEP  # before2..before: a number starting with 0
        if minus:
            sign_start = (before2 == _MINUS) & (before3 != _EXP)
            number_start |= sign_start
        bad = (here <= _DIGIT) & after_zero & number_start  # a leading zero
        if minus:
            bad |= (here == _MINUS) & ((after > _DIGIT) | ((before != _SEP) & (before != _EXP)))
            int_minus_zero = int_minus_zero or bool(((here == _SEP) & after_zero & sign_start).any())
        if plus:
            bad |= (here == _PLUS) & (before != _EXP)
        if dot:
            bad |= (here == _DOT) & ((before > _DIGIT) | (after > _DIGIT))
        if bad.any():
            return None
    return int_minus_zero if numbers == count else None


def _dense_array(body: bytes, start: int, stop: int, rank: int) -> tuple[_Dense, int] | None:
    """The dense numeric array at body[start:] and where it ends, or None.

    body[start:stop] is a stretch of number, bracket, comma and space bytes with rank '['s before its first
    number: the array ends at the rank-th ']' after the stretch's last number. Its skeleton must be the dense
    nesting of one shape (so it has one field between commas per element), the last field must be one JSON
    number, _check_numbers must find one JSON number per element, and numpy must parse them all.
    """
    tail = body[max(stop - 64, start):stop]
    kept = tail.rstrip(_AFTER_LAST_NUMBER)
    end = stop - len(tail) + len(kept) if kept else start + len(body[start:stop].rstrip(_AFTER_LAST_NUMBER))
    for _ in range(rank):
        end = body.find(b"]", end, stop) + 1
        if not end:
            return None
    text = body[start:end]
    dims = _dense_dims(text.translate(None, _NOT_STRUCTURE), rank)
    if dims is None or not _LAST_NUMBER.fullmatch(text, text.rfind(b",") + 1):
        return None
    count = math.prod(dims)
    int_minus_zero = _check_numbers(text, count)
    if int_minus_zero is None:
        return None
    integral = b"." not in text and b"e" not in text and b"E" not in text
    try:
        values = np.fromstring(text.translate(_BRACKETS_AS_SPACES), dtype=np.int64 if integral else np.float64,
                               sep=",")
    except ValueError:  # numpy's parser met something that is not a number where one belongs
        return None
    if values.size != count:
        return None
    low, high = values.min(), values.max()
    if integral:
        if high == _INT64_MAX:  # an overflow, or exactly 2**63 - 1: json's exact integers decide
            return None
    elif not -_EXACT_FLOAT_INTS < low <= high < _EXACT_FLOAT_INTS:  # inf, or beyond exact integers
        return None
    return _Dense(values, tuple(dims), integral, int_minus_zero and not integral, low, high), end


def _string_end(body: bytes, quote: int) -> int:
    """Where the JSON string opened at body[quote] ends (after its closing quote; the end if unterminated)."""
    at = quote
    while (at := body.find(b'"', at + 1)) >= 0:
        escapes = at  # the backslashes right before this quote start here: looked for 64 bytes at a time
        while escapes > quote + 1:
            window = max(quote + 1, escapes - 64)
            kept = len(body[window:escapes].rstrip(b"\\"))
            escapes = window + kept
            if kept:
                break
        if (at - escapes) % 2 == 0:
            return at + 1
    return len(body)


def _numeric_runs(body: bytes, min_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(start, first number, stop) of each stretch of at least min_bytes number, bracket, comma and space bytes
    outside strings that opens with '['s (and spaces) then a number: where large dense numeric arrays may be.

    It hops between quotes and brackets at memchr speed, and classifies bytes (one translate of the body) only
    once it meets a number. A body of many strings or small arrays is json's: past _SCAN_HOPS of those (plus
    _SCAN_HOPS_PER_RUN for each stretch found), _Unsure, so the scan costs little where it does not pay.
    """
    size = len(body)
    position, quote, bracket = 0, -1, -1
    hops, found = 0, 0
    runs = b""
    while True:
        if hops > _SCAN_HOPS + _SCAN_HOPS_PER_RUN * found:
            raise _Unsure("many strings or small arrays")
        if bracket < position and (bracket := body.find(b"[", position)) < 0:
            return
        if quote < position and (quote := body.find(b'"', position)) < 0:
            quote = size
        hops += 1
        if quote < bracket:  # a string first: skip it whole
            position = _string_end(body, quote)
            continue
        lead = _LEAD.match(body, bracket).end()
        if body[lead:lead + 1].isdigit() or (body[lead:lead + 1] == b"-" and body[lead + 1:lead + 2].isdigit()):
            runs = runs or body.translate(_RUN_BYTES)
            stop = runs.find(b"\0", lead)
            stop = size if stop < 0 else stop
            if stop - bracket >= min_bytes:
                found += 1
                yield bracket, lead, stop
            position = stop
        else:
            position = lead


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as json makes it, but _Unsure if a key is there twice."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Unsure("a key twice in an object")
    return found


def _fast_doc(body: bytes, min_bytes: int) -> dict[str, Any] | None:
    """The body's JSON object with its large dense numeric arrays as _Dense where tensors are read from
    ("inputs", its values, "instances", the values of its objects); None if there is none, or one elsewhere.

    A placeholder string stands for each array while json parses the rest. With no key twice in an object
    (json would drop one value), each must then be in the object exactly once, or not at all if it stood in
    the trailing bytes json ignores: a client's string that decodes to one (by escapes) cannot pass for it.
    """
    if len(body) < min_bytes:
        return None
    pieces: list[bytes] = []
    dense: dict[str, _Dense] = {}
    offsets: dict[str, int] = {}  # of each placeholder in the text json parses, in bytes
    done = size = 0
    for start, lead, stop in _numeric_runs(body, min_bytes):
        found = _dense_array(body, start, stop, body.count(b"[", start, lead))
        if found is None:
            continue
        key = f"\0{_NONCE}:{len(dense)}"
        placeholder = json.dumps(key).encode()
        pieces += [body[done:start], placeholder]
        size += start - done
        offsets[key] = size
        size += len(placeholder)
        dense[key], done = found
    if not dense:
        return None
    pieces.append(body[done:])
    text = b"".join(pieces).decode("utf-8")
    doc, end = json.JSONDecoder(object_pairs_hook=_unique_keys).raw_decode(text, JSON_SPACE.match(text).end())
    end = len(text[:end].encode())
    counts = dict.fromkeys(dense, 0)
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if value in counts:
                counts[value] += 1
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    in_doc = {key for key, offset in offsets.items() if offset < end}
    if any(counts[key] != (key in in_doc) for key in dense):
        return None
    taken: set[str] = set()

    def take(value: Any) -> Any:
        if isinstance(value, str) and value in dense:
            taken.add(value)
            return dense[value]
        return value

    if isinstance(doc, dict):
        if "inputs" in doc:
            doc["inputs"] = inputs = take(doc["inputs"])
            if isinstance(inputs, dict):
                for name in inputs:
                    inputs[name] = take(inputs[name])
        if "instances" in doc:
            doc["instances"] = instances = take(doc["instances"])
            if isinstance(instances, list):
                for item in instances:
                    if isinstance(item, dict):
                        for name in item:
                            item[name] = take(item[name])
    return doc if taken == in_doc else None


def tensors_from_inputs(value: Any, infos: Mapping[str, meta_graph_pb2.TensorInfo]
                        ) -> dict[str, tensor_pb2.TensorProto]:
    """Columnar "inputs": one value for a single-input signature, else an object holding every input."""
    if not isinstance(value, dict) or is_b64(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        name = min(infos)
        return {name: to_tensor_proto(json_to_array(value, infos[name].dtype), infos[name].dtype)}
    tensors = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        dtype = infos[name].dtype
        tensors[name] = to_tensor_proto(json_to_array(value[name], dtype), dtype)
    return tensors


def status_string(error: ServingError) -> str:
    return f"{error.code.name}: {error.message}"


class _Batch:
    """The rows of one input, all of one shape (AddInstanceItem)."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> None:
        if self.rows:
            first = self.rows[0]
            if first.size != array.size:
                raise invalid_argument(f"Expecting tensor size: {first.size} but got: {array.size}")
            if first.shape != array.shape:
                raise invalid_argument(f"Expecting shape {shape_str(first.shape)} but got: "
                                       f"{shape_str(array.shape)}")
        self.rows.append(array)


def tensors_from_instances(instances: list[Any], infos: Mapping[str, meta_graph_pb2.TensorInfo]
                           ) -> dict[str, tensor_pb2.TensorProto]:
    """Row "instances": a list of values (single input) or of objects keyed by input name, batched."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")

    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not is_b64(value)

    objects = is_object(instances[0])
    names = sorted(infos)
    batches: dict[str, _Batch] = {}

    def add(value: Any, name: str) -> None:
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        batches.setdefault(name, _Batch()).add(json_to_array(value, infos[name].dtype))

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    add(value, name)
                except ServingError as exc:
                    raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' "
                                           f"list. Error: {status_string(exc)}") from None
            if set(element) != set(names):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{debug_string(element)} keys must be equal to: {','.join(names)}")
        else:
            if is_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, names[0])
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                       f"Error: {status_string(exc)}") from None
    return {name: to_tensor_proto(np.stack(batch.rows), infos[name].dtype)
            for name, batch in sorted(batches.items())}


def predict_request_from_json(body: bytes, spec: model_pb2.ModelSpec,
                              input_infos: Callable[[str], Mapping[str, meta_graph_pb2.TensorInfo]],
                              fast_min_bytes: int | None = FAST_MIN_BYTES) -> tuple[predict_pb2.PredictRequest, bool]:
    """The PredictRequest a REST body asks for, and whether it used the row ("instances") format.

    Dense numeric arrays of at least fast_min_bytes are parsed by numpy (None: never); whenever that way
    fails, for whatever reason, the body is parsed again the exact way, which gives the answer or the error.
    """
    if fast_min_bytes is not None:
        try:
            doc = _fast_doc(body, fast_min_bytes)
            if doc is not None:
                return _request_from_doc(doc, spec, input_infos)
        except Exception as exc:  # noqa: BLE001 - the exact path below answers, with TF Serving's message
            log.debug("fast JSON path gave up (%s: %s)", type(exc).__name__, exc)
    return _request_from_doc(parse_json(body), spec, input_infos)


def _request_from_doc(doc: dict[str, Any], spec: model_pb2.ModelSpec,
                      input_infos: Callable[[str], Mapping[str, meta_graph_pb2.TensorInfo]]
                      ) -> tuple[predict_pb2.PredictRequest, bool]:
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(spec)
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise invalid_argument(f"JSON Value: {debug_string(doc)} not formatted correctly. "
                                   f"'signature_name' key must be a string value.")
        request.model_spec.signature_name = doc["signature_name"]
    infos = input_infos(request.model_spec.signature_name)
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: "
                               f"{request.model_spec.signature_name or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only "
                                   f"one of 'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if isinstance(instances, _Dense):  # a list of rows of one shape, for a single input
            if len(infos) != 1:
                raise _Unsure("dense instances for several inputs")
            name = min(infos)
            tensors = {name: to_tensor_proto(instances.to_array(infos[name].dtype), infos[name].dtype)}
            row = True
        else:
            if not isinstance(instances, list):
                raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
            if not instances:
                raise invalid_argument(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
            tensors, row = tensors_from_instances(instances, infos), True
    elif "inputs" in doc:
        tensors, row = tensors_from_inputs(doc["inputs"], infos), False
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    for name, tensor in tensors.items():
        request.inputs[name].CopyFrom(tensor)
    return request, row


# --------------------------------------------------------------------------- tensors -> JSON


def tensor_json(proto: tensor_pb2.TensorProto, as_bytes: bool) -> Any:
    """A tensor as nested lists: float32 in its shortest form, strings as UTF-8 or {"b64": ...}."""
    if proto.dtype not in _WRITABLE:
        raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype_name(proto.dtype)}")
    array = tensor_proto_to_ndarray(proto)
    if proto.dtype == types_pb2.DT_STRING:
        flat: list[Any] = [{"b64": base64.b64encode(v).decode("ascii")} if as_bytes
                           else v.decode("utf-8", "replace") for v in array.reshape(-1)]
    elif proto.dtype == types_pb2.DT_FLOAT:
        flat = [float(str(v)) for v in array.reshape(-1)]  # str(np.float32) is its shortest round trip
    else:
        return array.tolist()
    holder = np.empty(len(flat), dtype=object)
    holder[:] = flat
    return holder.reshape(array.shape).tolist()


def predict_json(response: predict_pb2.PredictResponse, row: bool) -> dict[str, Any]:
    """{"outputs": ...} (columnar) or {"predictions": [...]} (row); a single output is not keyed by name."""
    names = sorted(response.outputs)
    if not names:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if row:
        batch = None
        for name in names:
            dims = response.outputs[name].tensor_shape.dim
            if not dims:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and dims[0].size != batch:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {dims[0].size} "
                                       f"expecting: {batch}")
            batch = dims[0].size
    values = {}
    for name in names:
        proto = response.outputs[name]
        values[name] = tensor_json(proto, proto.dtype == types_pb2.DT_STRING and name.endswith(BYTES_SUFFIX))
    if not row:
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{name: values[name][item] for name in names} for item in range(batch or 0)]}


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict[str, Any]:
    """GetModelStatusResponse in protobuf's JSON mapping with default values, as TF Serving prints it."""
    return MessageToDict(response, always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict[str, Any]:
    """TF Serving's metadata JSON: model_spec and the unpacked SignatureDefMap, proto field names, defaults."""
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
    options: dict[str, Any] = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    return {"model_spec": MessageToDict(response.model_spec, **options),
            "metadata": {SIGNATURE_DEF_FIELD: MessageToDict(signature_defs, **options)}}


# --------------------------------------------------------------------------- requests


def model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """The ModelSpec of a path's (URL-encoded) name and optional version or label."""
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version:
        if int(version) >= 2**63:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = unquote(label)
    return spec


class RestApi:
    """Answers REST requests with the gRPC server's PredictionService (Predictor, faults, count) and ModelService."""

    def __init__(self, predictions: PredictionService, models: ModelService) -> None:
        self.predictions = predictions
        self.models = models

    def handle(self, method: str, target: str, body: bytes, origin: str,
               wait_for_hangup: Callable[[], None]) -> Reply:
        path = target.split("?", 1)[0]
        if not API_PATH.fullmatch(path):
            return Reply(404, NOT_FOUND_PAGE, "text/html; charset=ISO-8859-1")
        if method == "OPTIONS":  # a CORS preflight: empty answer
            return Reply(200 if ORIGIN.search(origin) else 400, b"", None)
        try:
            answer = self._dispatch(method, path, body, wait_for_hangup)
        except ServingError as exc:
            return error_reply(exc.code, exc.message)
        except Exception as exc:  # answer like the gRPC server: INTERNAL, no stack trace
            log.exception("internal error in %s %s", method, path)
            return error_reply(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return Reply(200, answer_bytes(answer))

    def _dispatch(self, method: str, path: str, body: bytes,
                  wait_for_hangup: Callable[[], None]) -> dict[str, Any]:
        if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
            spec = model_spec(match[1], match[2], match[3])
            if match[4] == "predict":
                return self._predict(spec, body, wait_for_hangup)
            if match[4] in ("classify", "regress"):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{match[4]} is not supported by this model server")
        elif method == "GET" and (match := STATUS_PATH.fullmatch(path)):
            spec = model_spec(match[1] or "", match[2], match[3])
            if not spec.name:
                raise invalid_argument("Missing model name in request.")
            if match[4] == "metadata":
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
                return metadata_json(self.predictions.metadata(request))
            return status_json(self.models.status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes,
                 wait_for_hangup: Callable[[], None]) -> dict[str, Any]:
        fault = self.predictions.arrive()
        if fault is not None:
            if fault.hang:
                wait_for_hangup()
            raise ServingError(fault.code, fault.message)
        request, row = predict_request_from_json(body, spec, lambda name: self._input_infos(spec, name))
        return predict_json(self.predictions.predictor.predict(request), row)

    def _input_infos(self, spec: model_pb2.ModelSpec, signature_name: str
                     ) -> Mapping[str, meta_graph_pb2.TensorInfo]:
        servable = self.predictions.registry.resolve(spec)
        name = signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
        return signature.inputs


# --------------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: every answer carries its Content-Length."""

    protocol_version = "HTTP/1.1"
    server: RestServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Bad Request")
            return
        with self.server.busy():
            reply = self.server.api.handle(self.command, self.path, body, self.headers.get("Origin", ""),
                                           self._wait_for_hangup)
        self.send_response(reply.status, REASONS.get(reply.status))
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.server.stopping.is_set():
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked; ValueError if malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline(65537).split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            while self.rfile.readline(65537).strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ValueError("body shorter than Content-Length")
        return body

    def _wait_for_hangup(self) -> None:
        """Block until the client closes the connection, the server stops or max_hang_seconds pass."""
        deadline = time.monotonic() + self.server.max_hang_seconds
        while (left := deadline - time.monotonic()) > 0 and not self.server.stopping.is_set():
            if select.select([self.connection], [], [], min(left, 0.5))[0]:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return
                self.server.stopping.wait(min(left, 0.5))  # bytes of a pipelined request: keep waiting

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class RestServer(ThreadingHTTPServer):
    """The REST API on host:port (0 picks a free port), one daemon thread per connection."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, api: RestApi, host: str, port: int, max_hang_seconds: float = 3600.0) -> None:
        self.api = api
        self.max_hang_seconds = max_hang_seconds
        self.stopping = threading.Event()
        self._busy = 0
        self._idle = threading.Condition()
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look the host name up in DNS
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request is routine (a hang answered after it left); anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)
        else:
            log.exception("error serving %s", client_address)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count a request being answered, so stop() can wait for it."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="rest", daemon=True).start()

    def stop(self, grace: float) -> None:
        """Stop accepting, end hangs, and wait up to `grace` seconds for requests being answered."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=grace)

