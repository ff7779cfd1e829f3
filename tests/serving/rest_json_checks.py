"""Property checks of serving/rest_api.py's fast JSON path (numpy's parser for large dense numeric arrays)
against its exact path (json, then nested lists to arrays), run by test_serving_rest_json.py in a subprocess:
this imports TensorFlow, which the test process never does.

    python tests/serving/rest_json_checks.py [CHECK ...]    # all checks by default

Prints one JSON line per check: {"check": name, "ok": bool, "report": text, "stats": {...}}.

Every check compares whole outcomes: the PredictRequest (serialized deterministically: dtype, shape and
tensor bytes) and the row flag, or the error's code and message, or an exception's type and text. The fast
path runs with no size threshold (fast_min_bytes=0), so every array in a body is a candidate; "fast" in the
stats counts the examples the fast path answered by itself (no fallback to the exact path), so a check that
never reaches it fails.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from scripts.rest_server_json import padded_uint8_json
from serving import rest_api
from serving.servables import ServingError

warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflow in casts: both paths cast alike

SPEC = model_pb2.ModelSpec(name="m")
NUMERIC = [types_pb2.DT_UINT8, types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64,
           types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE]
DTYPES = [*NUMERIC, types_pb2.DT_STRING, types_pb2.DT_BOOL, types_pb2.DT_HALF]
SETTINGS = settings(max_examples=int(os.environ.get("REST_JSON_EXAMPLES", "400")), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
stats: Counter[str] = Counter()


# ---------------------------------------------------------------------------- outcomes

def infos_of(dtypes: dict[str, int]) -> dict[str, meta_graph_pb2.TensorInfo]:
    return {name: meta_graph_pb2.TensorInfo(name=f"{name}:0", dtype=dtype) for name, dtype in dtypes.items()}


def outcome(body: bytes, infos: dict[str, meta_graph_pb2.TensorInfo], fast_min_bytes: int | None) -> tuple:
    try:
        request, row = rest_api.predict_request_from_json(body, SPEC, lambda _: infos, fast_min_bytes)
    except ServingError as exc:
        return "error", exc.code.name, exc.message
    except Exception as exc:  # noqa: BLE001 - the exact path's own exceptions (INTERNAL answers) count too
        return "exception", type(exc).__name__, str(exc)
    return "ok", request.SerializeToString(deterministic=True), row


def fast_alone(body: bytes, infos: dict[str, meta_graph_pb2.TensorInfo]) -> bool:
    """Whether the fast path answers body by itself (without falling back to the exact path)."""
    try:
        doc = rest_api._fast_doc(body, 0)
        if doc is None:
            return False
        rest_api._request_from_doc(doc, SPEC, lambda _: infos)
    except Exception:  # noqa: BLE001
        return False
    return True


def assert_same(body: bytes, infos: dict[str, meta_graph_pb2.TensorInfo]) -> tuple:
    exact = outcome(body, infos, None)
    fast = outcome(body, infos, 0)
    assert fast == exact, f"body {body[:300]!r}\nfast  {shorten(fast)}\nexact {shorten(exact)}"
    stats["examples"] += 1
    stats[exact[0]] += 1
    if fast_alone(body, infos):
        stats["fast"] += 1
        assert exact[0] == "ok", f"fast path answered a body the exact path rejects: {body[:300]!r}"
    return exact


def shorten(result: tuple) -> str:
    return repr(tuple(item[:200] if isinstance(item, (str, bytes)) else item for item in result))


# ---------------------------------------------------------------------------- strategies

INTS = st.one_of(
    st.integers(0, 255), st.integers(-300, 300), st.integers(-2**31 - 2, 2**31 + 2), st.integers(-2**64, 2**64 + 2),
    st.integers(-10**30, 10**30),
    st.sampled_from([0, 255, 256, -1, -128, 127, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**32 - 1, 2**32, 2**53,
                     2**53 + 1, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64 - 1, 2**64]))
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.floats(-1, 1), st.floats(width=32).filter(math.isfinite),
    st.integers(0, 255).map(lambda v: v / 255),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 2.5, 1e-5, 1e-7, 1e16, 1e22, 1e23, 2.0**53, 2.0**53 - 1, 5e-324,
                     2.2250738585072014e-308, 1.7976931348623157e308, 3.4028234663852886e38, 3.5e38]))
WHITESPACE = st.text(" \t\n\r", max_size=3)


@st.composite
def dense_values(draw: st.DrawFn) -> list[Any]:
    """A dense nested list of numbers: integers only, floats only, or both."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    leaves = draw(st.sampled_from([INTS, FLOATS, st.one_of(INTS, FLOATS)]))
    flat = draw(st.lists(leaves, min_size=math.prod(shape), max_size=math.prod(shape)))
    return nest(flat, shape)


def nest(flat: list[Any], shape: list[int]) -> list[Any]:
    for size in reversed(shape[1:]):
        flat = [flat[i:i + size] for i in range(0, len(flat), size)]
    return flat


@st.composite
def json_text(draw: st.DrawFn, doc: Any) -> bytes:
    """doc as JSON in one of several layouts, whitespace placed anywhere JSON allows it."""
    style = draw(st.sampled_from(["default", "compact", "indent", "orjson", "spaces"]))
    if style == "orjson":
        try:
            return orjson.dumps(doc)
        except TypeError:  # an int beyond 64 bits
            style = "compact"
    if style == "indent":
        return json.dumps(doc, indent=draw(st.integers(0, 2))).encode()
    if style == "spaces":
        text = json.dumps(doc, separators=(",", ":"))
        spaces = draw(st.lists(WHITESPACE, min_size=4, max_size=4))
        text = text.replace(",", f"{spaces[0]},{spaces[1]}").replace("[", f"[{spaces[2]}").replace("]", f"{spaces[3]}]")
        return (draw(WHITESPACE) + text + draw(WHITESPACE)).encode()
    return json.dumps(doc, separators=(",", ":") if style == "compact" else None).encode()


@st.composite
def requests(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> tuple[bytes, dict[str, meta_graph_pb2.TensorInfo]]:
    """A :predict body holding values in one of the four layouts, and the signature's inputs."""
    value = draw(values)
    layout = draw(st.sampled_from(["inputs", "named inputs", "instances", "instance objects", "two inputs"]))
    dtype = draw(st.sampled_from(DTYPES))
    if layout == "inputs":
        doc, dtypes = {"inputs": value}, {"x": dtype}
    elif layout == "named inputs":
        doc, dtypes = {"inputs": {"x": value}}, {"x": dtype}
    elif layout == "instances":
        doc, dtypes = {"instances": value}, {"x": dtype}
    elif layout == "instance objects":
        rows = value if isinstance(value, list) and value else [value]
        doc, dtypes = {"instances": [{"x": row} for row in rows]}, {"x": dtype}
    else:
        doc, dtypes = {"inputs": {"x": value, "y": draw(values)}}, {"x": dtype, "y": draw(st.sampled_from(DTYPES))}
    if draw(st.booleans()):
        doc = {"signature_name": "serving_default", **doc}
    return draw(json_text(doc)), infos_of(dtypes)


JSON_LEAVES = st.one_of(INTS, FLOATS, st.text(max_size=3), st.booleans(), st.none(),
                        st.fixed_dictionaries({"b64": st.sampled_from(["AAEC", "x", ""])}))
ANY_JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(["x", "y", "b64"]), inner, max_size=2), max_leaves=40)
RAGGED = st.recursive(st.one_of(INTS, FLOATS), lambda inner: st.lists(inner, max_size=4), max_leaves=40)
MUTATION_BYTES = b"0123456789-+.eE,[] \t\n\r\"xN"


# ---------------------------------------------------------------------------- checks

@SETTINGS
@given(requests(dense_values()))
def dense_bodies(request: tuple[bytes, dict]) -> None:
    """Dense arrays of integers, floats or both, in every layout, for every dtype: the same outcome."""
    assert_same(*request)


@SETTINGS
@given(requests(st.one_of(RAGGED, ANY_JSON)))
def ragged_and_mixed_bodies(request: tuple[bytes, dict]) -> None:
    """Ragged lists, lists deeper in places, strings, bools, nulls, objects among numbers: the same outcome."""
    assert_same(*request)


@SETTINGS
@given(requests(dense_values()), st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["insert", "delete", "replace"]),
                                                    st.sampled_from(list(MUTATION_BYTES))), min_size=1, max_size=3))
def mutated_bodies(request: tuple[bytes, dict], mutations: list[tuple[float, str, int]]) -> None:
    """A valid dense body with 1 to 3 bytes inserted, deleted or replaced inside its arrays: the same outcome
    (often a parse error, a type error or a shape error, which the exact path words)."""
    body, infos = request
    text = bytearray(body)
    for where, how, byte in mutations:
        first, last = text.find(b"["), text.rfind(b"]")
        if first < 0 or last < first:
            break
        at = first + int(where * (last - first))
        if how == "insert":
            text[at:at] = bytes([byte])
        elif how == "delete":
            del text[at]
        else:
            text[at] = byte
    assert_same(bytes(text), infos)


STRINGY = st.text(alphabet='[]0123456789,.- "\\ab', max_size=12)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A body with a dense "inputs" array among other members: a signature name, strings and keys holding
    brackets, digits, quotes and backslashes, arrays where no tensor is read, a second "inputs" (json keeps
    the last), the fast path's own placeholder text, and trailing bytes (ignored, as by rapidjson)."""
    members = [f'"inputs": {json.dumps(draw(dense_values()))}']
    for extra in draw(st.lists(st.sampled_from(["signature", "strings", "array", "again", "object", "nonce"]),
                               max_size=3)):
        if extra == "signature":
            members.append(f'"signature_name": {json.dumps(draw(STRINGY))}')
        elif extra == "strings":
            members.append(f"{json.dumps(draw(STRINGY))}: {json.dumps(draw(STRINGY))}")
        elif extra == "array":
            members.append(f'"extra": {json.dumps(draw(dense_values()))}')
        elif extra == "again":
            members.append(f'"inputs": {json.dumps(draw(dense_values()))}')
        elif extra == "object":
            members.append(f'"o": {json.dumps(draw(ANY_JSON))}')
        else:  # the placeholder of the first array, literally or by escapes, where a tensor is read or not
            key = f"\0{rest_api._NONCE}:0"
            text = draw(st.sampled_from([json.dumps(key), "".join(f"\\u{ord(c):04x}" for c in key).join('""')]))
            name = draw(st.sampled_from(['"n"', '"inputs"']))
            members.append(f"{name}: {text}")
    text = "{" + ", ".join(draw(st.permutations(members))) + "}"
    return (text + draw(st.sampled_from(["", " ", " [1, 2]", ' "x', " garbage", ' {"inputs": [3]}', ' "a\\'
                                         ]))).encode()


@SETTINGS
@given(documents(), st.sampled_from(DTYPES), st.sampled_from(["", '"a": "[1, 2', '"a": [1, 2, "b\\"]']))
def documents_around_arrays(body: bytes, dtype: int, broken: str) -> None:
    """Dense arrays among strings that look like arrays, escaped quotes, arrays no tensor is read from,
    duplicate keys, placeholder look-alikes, trailing bytes, unterminated strings: the same outcome."""
    if broken:
        body = body[:1] + broken.encode() + b", " + body[1:]
    assert_same(body, infos_of({"x": dtype}))


TOKEN_BYTES = "01-+.eE "


def small_tokens() -> None:
    """Every string of up to 4 of "01-+.eE " as an element of small arrays (first, last, alone, in a nested
    row), for float64 and int64: the same outcome; and the fast path takes every one json reads as numbers
    (but for the cases it leaves to json by design: an integer -0 among floats, floats from 2**53 on)."""
    infos = {dtype: infos_of({"x": dtype}) for dtype in (types_pb2.DT_DOUBLE, types_pb2.DT_INT64)}
    minus_zero_int = re.compile(r"(?<![0-9.eE])-0(?![0-9.eE])")
    for length in range(1, 5):
        for token in map("".join, itertools.product(TOKEN_BYTES, repeat=length)):
            for template in ("[{}]", "[1,{}]", "[{},1]", "[[1],[{}]]", "[[{}],[1]]", "[{} ,1]", "[1, {}]"):
                span = template.format(token)
                body = f'{{"inputs": {span}}}'.encode()
                exact = assert_same(body, infos[types_pb2.DT_DOUBLE])
                assert_same(body, infos[types_pb2.DT_INT64])
                if exact[0] != "ok" or not re.search("[0-9]", span):
                    continue
                flat = np.array(json.loads(span), dtype=float).reshape(-1)
                floats = "." in span or "e" in span.lower()  # json's floats: numpy's below 2**53, without int -0
                if floats and (np.abs(flat).max() >= 2**53 or minus_zero_int.search(span)):
                    continue
                assert fast_alone(body, infos[types_pb2.DT_DOUBLE]), f"fast path declined valid {span!r}"


def small_structures() -> None:
    """Every string of up to 6 of "1,[] " inside brackets (ragged, empty, unbalanced, missing commas): the
    same outcome, and the fast path takes the dense ones."""
    infos = infos_of({"x": types_pb2.DT_INT32})
    for length in range(7):
        for inner in map("".join, itertools.product("1,[] ", repeat=length)):
            span = f"[{inner}]"
            body = f'{{"inputs": {span}}}'.encode()
            exact = assert_same(body, infos)
            if exact[0] == "ok" and "1" in inner:
                assert fast_alone(body, infos), f"fast path declined dense {span!r}"


def boundaries() -> None:
    """Integers at and beyond the int64 edges, long numbers, exponents, float32 rounding, signs and fields a
    parser could misread, placeholders written by the client, arrays nested up to 3000 deep: the same outcome."""
    cases = ["9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
             "18446744073709551615", "18446744073709551616", "99999999999999999999", "-99999999999999999999",
             "9" * 400, "1" + "0" * 5000, "0." + "0" * 400 + "1", "1e308", "1e309", "-1e309", "1e-400", "2.5e-324",
             "16777217", "16777217.0", "9007199254740993", "9007199254740993.0", "0.1000000000000000055511151231257827",
             "1.00000005960464477539062500000000001", "1.000000059604644775390625", "3.4028235677973366e38",
             "-0", "-0.0", "-0e0", "0e0", "1E+2", "1e-2", "1e02", "1.5E-0", "1e5, ", "1, ,1e5", "1e5, ,2", "01e1",
             "1e01", "-, 1e1", "- 1", "-1, , 1", "- 1, ", "+1, ", "1 ,, 1", "1e5 , 2 "]
    for case, other, dtype in itertools.product(cases, ["1", "2.5", "-0"], DTYPES):
        for span in (f"[{case}, {other}]", f"[[{other}], [{case}]]"):
            assert_same(f'{{"inputs": {span}}}'.encode(), infos_of({"x": dtype}))
            assert_same(f'{{"instances": {span}}}'.encode(), infos_of({"x": dtype}))
    key = f"\0{rest_api._NONCE}:0"  # the first array's placeholder, as a client could write it (by escapes)
    escaped = "".join(f"\\u{ord(c):04x}" for c in key).join('""')
    for text, dtype in itertools.product([f'{{"inputs": [1, 2, 3], "inputs": {escaped}}}',
                                          f'{{"inputs": {escaped}, "x": [1, 2]}}', f'{{"inputs": {escaped}}} [1, 2]',
                                          f'{{"instances": [{{"x": {escaped}}}], "o": [[1, 2]]}}',
                                          f'{{"inputs": {json.dumps(key)}, "x": [1, 2]}}'],
                                         [types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_STRING]):
        assert_same(text.encode(), infos_of({"x": dtype}))
    for depth, dtype in itertools.product([1, 2, 32, 63, 64, 65, 200, 3000], [types_pb2.DT_INT32, types_pb2.DT_FLOAT]):
        span = "[" * depth + "1, 2" + "]" * depth  # numpy has at most 64 dimensions, json recurses ~1000 deep
        assert_same(f'{{"inputs": {span}}}'.encode(), infos_of({"x": dtype}))


def large_bodies() -> None:
    """Image-sized bodies (orjson's, the bridge's padded one, json.dumps's): the same outcome, taken
    by the fast path; a uint8 value 256 and -1 wrap like TF Serving's int_val; 2**31, 0.5, "7", true, a short
    row and a leading zero are the exact path's errors."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    uint8 = infos_of({"images": types_pb2.DT_UINT8})
    floats = infos_of({"images": types_pb2.DT_FLOAT})
    for body in (orjson.dumps({"inputs": pixels}, option=orjson.OPT_SERIALIZE_NUMPY),
                 orjson.dumps({"inputs": {"images": orjson.Fragment(padded_uint8_json(pixels))}}),
                 json.dumps({"instances": pixels.tolist()}).encode(),
                 json.dumps({"inputs": {"images": pixels.tolist()}}, indent=2).encode(),
                 json.dumps({"instances": [{"images": row} for row in pixels.tolist()]}).encode()):
        assert assert_same(body, uint8)[0] == "ok" and fast_alone(body, uint8)
    scaled = (pixels.astype(np.float32) / 255) * 2 - 1
    for body in (orjson.dumps({"inputs": scaled}, option=orjson.OPT_SERIALIZE_NUMPY),
                 json.dumps({"inputs": scaled.tolist()}).encode()):
        assert assert_same(body, floats)[0] == "ok" and fast_alone(body, floats)
    rows = pixels.tolist()
    for leaf, expected in [(256, "ok"), (-1, "ok"), (2**31, "error"), (0.5, "error"), ("7", "error"),
                           (None, "error"), ([1, 2], "error")]:
        bad = json.loads(json.dumps(rows))
        bad[5][6][7] = leaf if isinstance(leaf, list) else [leaf, 0, 0]
        body = json.dumps({"inputs": bad}).encode()
        assert assert_same(body, uint8)[0] == expected, (leaf, shorten(outcome(body, uint8, None)))
    body = json.dumps({"inputs": rows}).encode().replace(b"[[[[", b"[[[[0", 1)  # a leading zero
    assert assert_same(body, uint8)[:2] == ("error", "INVALID_ARGUMENT")


@SETTINGS
@given(st.recursive(st.one_of(INTS, FLOATS, st.floats(), st.text(), st.booleans(), st.none()),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=30))
def answers(answer: Any) -> None:
    """answer_bytes (orjson where it can) gives the JSON values json.dumps gives, NaN and Infinity included."""
    expected = json.dumps(json.loads(json.dumps(answer, ensure_ascii=False)), ensure_ascii=False)
    assert json.dumps(json.loads(rest_api.answer_bytes(answer)), ensure_ascii=False) == expected
    stats["examples"] += 1
    try:
        stats["orjson"] += rest_api.answer_bytes(answer) == orjson.dumps(answer)
    except TypeError:  # an int beyond 64 bits: json.dumps wrote it
        pass


CHECKS: dict[str, Callable[[], None]] = {
    "dense_bodies": dense_bodies, "ragged_and_mixed_bodies": ragged_and_mixed_bodies,
    "mutated_bodies": mutated_bodies, "documents_around_arrays": documents_around_arrays,
    "small_tokens": small_tokens, "small_structures": small_structures,
    "boundaries": boundaries, "large_bodies": large_bodies, "answers": answers,
}


def main(names: list[str]) -> int:
    for name in names or list(CHECKS):
        stats.clear()
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # hypothesis prints the falsifying example
                CHECKS[name]()
            ok, report = True, printed.getvalue()
        except BaseException:  # noqa: BLE001 - reported to the test
            ok, report = False, printed.getvalue() + traceback.format_exc()
        print(json.dumps({"check": name, "ok": ok, "report": report[-20000:], "stats": dict(stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
