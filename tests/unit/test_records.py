import base64
import json

import pytest

from bridge.errors import FetchError, InvalidRecord
from bridge.records import DeadLetter, ImageRequest, Prediction, Record, Result, parse_request


def record(value, key=b"k1", offset=7):
    return Record("ImageInputTopic", 2, offset, key, value)


def test_a_bare_url_line_as_kcat_sends_it():
    request = parse_request(record(b"https://example.com/cat.jpg\n"))
    assert request == ImageRequest("ImageInputTopic-2-7", "https://example.com/cat.jpg")


def test_json_with_url_and_id():
    request = parse_request(record(b'{"url": "http://h/x.png", "id": "abc"}'))
    assert request == ImageRequest("abc", "http://h/x.png")


def test_json_without_id_gets_the_record_coordinates():
    assert parse_request(record(b'{"url": "http://h/x.png"}')).id == "ImageInputTopic-2-7"


@pytest.mark.parametrize("value, message", [
    (b"", "empty"),
    (None, "empty"),
    (b"hello world", "not a URL"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"url": 5}', "no \"url\""),
    (b'{"link": "http://h/x"}', "no \"url\""),
    (b'{"url": "http://h/x"', "invalid JSON"),
    (b"/just/a/path.png", "not a URL"),
])
def test_values_that_are_not_requests_are_invalid_records(value, message):
    with pytest.raises(InvalidRecord, match=message):
        parse_request(record(value))


def test_result_json_has_the_documented_fields():
    result = Result(record(b"http://h/3.png"), ImageRequest("r1", "http://h/3.png"),
                    [Prediction("3", 0.9712345678), Prediction("8", 0.02)], "digits", 1, "serving_default", 12.345)
    assert json.loads(result.value()) == {
        "id": "r1", "url": "http://h/3.png",
        "predictions": [{"label": "3", "score": 0.971235}, {"label": "8", "score": 0.02}],
        "model": {"name": "digits", "version": 1, "signature": "serving_default"},
        "source": {"topic": "ImageInputTopic", "partition": 2, "offset": 7},
        "latency_ms": 12.3,
    }


def test_dead_letter_keeps_the_original_value_and_names_the_error_in_headers():
    letter = DeadLetter.from_error(record(b"http://h/missing.png"), FetchError("HTTP 404 from http://h/missing.png"))
    assert json.loads(letter.value()) == {
        "error": {"stage": "fetch", "type": "FetchError", "message": "HTTP 404 from http://h/missing.png"},
        "source": {"topic": "ImageInputTopic", "partition": 2, "offset": 7},
        "value": "http://h/missing.png",
    }
    assert dict(letter.headers()) == {"tfs-bridge.error.stage": b"fetch", "tfs-bridge.error.type": b"FetchError",
                                      "tfs-bridge.error.message": b"HTTP 404 from http://h/missing.png"}


def test_dead_letter_of_a_binary_value_carries_it_as_base64():
    raw = b"\xff\xd8\xff\x00binary"
    letter = DeadLetter.from_error(record(raw), InvalidRecord("value is not UTF-8 text"))
    assert json.loads(letter.value())["value"] == {"base64": base64.b64encode(raw).decode()}


def test_a_huge_bad_value_is_cut_so_its_dead_letter_always_fits_in_a_kafka_record():
    from bridge.records import MAX_DEAD_LETTER_VALUE

    huge = "é".encode() * 400_000  # 800 KB of non-ASCII text: 4.8 MB once JSON-escaped if not cut
    letter = DeadLetter.from_error(record(huge), InvalidRecord("not a URL"))
    assert len(letter.value()) < 1_000_000
    body = json.loads(letter.value())
    assert body["truncated"] == {"original_bytes": len(huge), "kept_bytes": MAX_DEAD_LETTER_VALUE}
