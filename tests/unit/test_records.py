import base64
import json

import pytest

from bridge.errors import FetchError, InvalidRecord
from bridge.records import ClassScore, DeadLetter, ImageRequest, Record, Result, parse_request


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
                    [ClassScore("3", 0.9712345678), ClassScore("8", 0.02)], "digits", 1, "serving_default", 12.345)
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


@pytest.mark.parametrize("value", [
    b"http://[::1/cat.png",  # unclosed IPv6 bracket: urlsplit raises ValueError
    b"http://h:99999/x.png",  # port out of range
    b"http://h:port/x.png",
    b'{"a": ' + b"[" * 200_000,  # nested too deeply for the JSON parser
    b'{"url": "http://h/x.png", "id": {"nested": 1}}',
    b'{"url": "http://h/x.png", "id": "' + b"x" * 2000 + b'"}',
    b"http://h/x\x00.png",
])
def test_malformed_values_are_invalid_records_not_crashes(value):
    with pytest.raises(InvalidRecord):
        parse_request(record(value))


def test_a_result_too_large_for_kafka_becomes_an_output_dead_letter():
    from bridge.records import encode

    request = ImageRequest("r1", "http://h/" + "é" * 400_000)
    result = Result(record(b"x"), request, [ClassScore("3", 0.9)], "digits", 1, "serving_default", 1.0)
    message = encode(result, max_bytes=1_000_000)
    assert not message.is_result and message.size() <= 1_000_000
    error = json.loads(message.value)["error"]
    assert error["stage"] == "output" and error["type"] == "OutputError" and "larger than" in error["message"]


def test_a_result_that_fits_is_encoded_as_is():
    from bridge.records import encode

    result = Result(record(b"x"), ImageRequest("r1", "http://h/x"), [ClassScore("3", 0.9)], "d", 1, "s", 1.0)
    message = encode(result)
    assert message.is_result and message.value == result.value() and message.headers is None


def test_a_dead_letter_shrinks_its_copy_of_the_value_to_fit_a_small_limit():
    from bridge.records import encode

    letter = DeadLetter.from_error(record(b"v" * 60_000), InvalidRecord("not a URL"))
    message = encode(letter, max_bytes=10_000)
    assert message.size() <= 10_000
    assert json.loads(message.value)["truncated"]["kept_bytes"] == 1024


def test_dead_letter_messages_and_headers_never_carry_credentials_or_query_strings():
    secret = "https://alice:s3cret@images.example/x.jpg?X-Amz-Signature=abc123"
    letter = DeadLetter.from_error(record(secret.encode()), FetchError(f"HTTP 403 Forbidden from {secret}"))
    assert letter.message == "HTTP 403 Forbidden from https://images.example/x.jpg?…"
    for text in [letter.message, *(value.decode() for _, value in letter.headers())]:
        assert "s3cret" not in text and "alice" not in text and "abc123" not in text
    assert json.loads(letter.value())["value"] == secret  # the sender's own record is kept as it was


def test_headers_encode_lone_surrogates_instead_of_failing():
    letter = DeadLetter.from_error(record(b"x"), InvalidRecord("bad \ud800 id"))
    assert dict(letter.headers())["tfs-bridge.error.message"] == b"bad ? id"


class FakeMessage:
    """A confluent-kafka Message as far as Record.from_message reads it."""

    def __init__(self, headers=None, headers_error=None):
        self._headers, self._headers_error = headers, headers_error

    def topic(self):
        return "ImageInputTopic"

    def partition(self):
        return 2

    def offset(self):
        return 7

    def key(self):
        return b"k1"

    def value(self):
        return b"http://h/x.png"

    def timestamp(self):
        return 1, 1_700_000_000_000

    def headers(self):
        if self._headers_error is not None:
            raise self._headers_error
        return self._headers


def test_a_record_keeps_its_headers_and_its_dead_letter_keeps_them_for_a_redrive():
    record_ = Record.from_message(FakeMessage([("trace", b"abc"), ("bin", b"\xff\x00"), ("empty", None),
                                               ("tfs-bridge.redrive.count", b"2")]))
    assert record_.headers == (("trace", b"abc"), ("bin", b"\xff\x00"), ("empty", None),
                               ("tfs-bridge.redrive.count", b"2"))
    body = json.loads(DeadLetter.from_error(record_, FetchError("HTTP 503")).value())
    assert body["headers"] == [["trace", "abc"], ["bin", {"base64": base64.b64encode(b"\xff\x00").decode()}],
                               ["empty", None], ["tfs-bridge.redrive.count", "2"]]
    assert "headers_redacted" not in body and "headers_lost" not in body


def test_a_record_without_headers_has_a_dead_letter_as_before():
    assert Record.from_message(FakeMessage(None)).headers == ()
    body = json.loads(DeadLetter.from_error(record(b"x"), InvalidRecord("not a URL")).value())
    assert set(body) == {"error", "source", "value"}


def test_headers_the_client_cannot_read_are_lost_and_the_dead_letter_says_so():
    # confluent-kafka raises SystemError from headers() when a header name is not UTF-8 (seen with kcat -H).
    record_ = Record.from_message(FakeMessage(headers_error=SystemError("returned a result with an exception set")))
    assert record_.headers is None
    body = json.loads(DeadLetter.from_error(record_, InvalidRecord("not a URL")).value())
    assert body["headers_lost"] == "the Kafka client cannot read them (a header name not UTF-8)"
    assert "headers" not in body


def test_dead_letter_headers_lose_secrets_as_urls_do():
    headers = (("Authorization", b"Bearer s3cret"), ("x-api-key", b"k3y"), ("Cookie", b"session=abc"),
               ("referer", b"https://alice:pw@site.example/page?token=t0k"), ("trace", b"00-abc-01"))
    letter = DeadLetter.from_error(Record("in", 0, 1, None, b"u", headers=headers), InvalidRecord("not a URL"))
    body = json.loads(letter.value())
    assert body["headers"] == [["referer", "https://site.example/page?…"], ["trace", "00-abc-01"]]
    assert body["headers_redacted"] == ["Authorization", "x-api-key", "Cookie", "referer"]
    for secret in ("s3cret", "k3y", "session=abc", "alice", "t0k"):
        assert secret not in letter.value().decode()


def test_headers_too_large_for_the_short_dead_letter_are_lost_and_the_letter_still_fits():
    from bridge.records import encode

    headers = tuple((f"h{n}", b"v" * 100) for n in range(50))  # 5 KB of headers: over the short form's 1 KiB
    letter = DeadLetter.from_error(Record("in", 0, 1, None, b"v" * 60_000, headers=headers), InvalidRecord("x"))
    assert len(json.loads(letter.value())["headers"]) == 50
    message = encode(letter, max_bytes=10_000)
    body = json.loads(message.value)
    assert message.size() <= 10_000 and "headers" not in body and "more than the 1024 kept" in body["headers_lost"]
