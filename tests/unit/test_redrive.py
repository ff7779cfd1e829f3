"""Reading dead letters back (untrusted bytes), choosing which to redrive, and the redrive's flags."""

import argparse
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.errors import ConfigError, FetchError, InvalidRecord
from bridge.records import MAX_DEAD_LETTER_VALUE, REDRIVE_COUNT_HEADER, DeadLetter, Record, redact_headers
from bridge.redrive.letters import Letter, UnreadableLetter, read_letter
from bridge.redrive.options import STAGES, add_redrive_arguments, redrive_options
from bridge.redrive.selection import Selection, Tally, Verdict, parse_time

T0 = 1_700_000_000_000  # a dead letter's Kafka timestamp, ms


def letter_bytes(value=b"http://h/1.png", headers=(), stage_error=None, partition=1):
    """A dead letter exactly as the bridge writes it."""
    record = Record("in", partition, 5, b"key", value, headers=headers)
    return DeadLetter.from_error(record, stage_error or FetchError("HTTP 503 from http://h/1.png")).value()


def counted(n):
    return ((REDRIVE_COUNT_HEADER, str(n).encode()),)


# --- reading a dead letter ---------------------------------------------------------------------------------------

def test_a_dead_letter_gives_back_its_original_value_headers_and_source():
    headers = (("trace", b"t-1"), ("bin", b"\x00\xff"), ("none", None))
    letter = read_letter(letter_bytes(b"\xff\xd8 binary", headers))
    assert letter == Letter("fetch", "FetchError", b"\xff\xd8 binary", headers, 0, "in", 1, None)


def test_an_old_dead_letter_without_headers_is_redrivable_without_headers():
    old = json.dumps({"error": {"stage": "fetch", "type": "FetchError", "message": "m"},
                      "source": {"topic": "in", "partition": 0, "offset": 3}, "value": "http://h/x.png"}).encode()
    letter = read_letter(old)
    assert (letter.value, letter.headers, letter.redrives, letter.problem) == (b"http://h/x.png", (), 0, None)


def test_the_redrive_count_goes_up_by_one_and_replaces_the_old_one():
    letter = read_letter(letter_bytes(headers=(("a", b"1"), *counted(2))))
    assert letter.redrives == 2
    assert letter.redriven_headers() == [("a", b"1"), (REDRIVE_COUNT_HEADER, b"3")]
    assert read_letter(letter_bytes()).redriven_headers() == [(REDRIVE_COUNT_HEADER, b"1")]


def test_a_truncated_value_cannot_be_redriven():
    letter = read_letter(letter_bytes(b"v" * (MAX_DEAD_LETTER_VALUE + 1), stage_error=InvalidRecord("not a URL")))
    assert letter.problem == "value truncated" and letter.stage == "parse"


def test_lost_headers_cannot_be_redriven():
    assert read_letter(letter_bytes(headers=None)).problem == "headers lost"


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (None, "empty"),
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 100_000, "not JSON"),
    (b'{"value": "x"}', "no error stage and type"),
    (b'{"error": {"stage": 1, "type": "t"}, "value": "x"}', "no error stage and type"),
])
def test_what_is_not_a_dead_letter_is_unreadable(body, reason):
    with pytest.raises(UnreadableLetter, match=reason):
        read_letter(body)


@pytest.mark.parametrize("fields, problem", [
    ({}, "no value"),
    ({"value": 5}, "value malformed"),
    ({"value": {"base64": "***"}}, "value malformed"),
    ({"value": {"base64": "aGk=", "x": 1}}, "value malformed"),
    ({"value": "\ud800"}, "value malformed"),
    ({"value": "u", "headers": "h"}, "headers malformed"),
    ({"value": "u", "headers": [["a"]]}, "headers malformed"),
    ({"value": "u", "headers": [[1, "v"]]}, "headers malformed"),
    ({"value": "u", "headers": [["a", 7]]}, "headers malformed"),
    ({"value": "u", "headers": [[REDRIVE_COUNT_HEADER, "two"]]}, "redrive count malformed"),
    ({"value": "u", "headers": [[REDRIVE_COUNT_HEADER, None]]}, "redrive count malformed"),
    ({"value": "u", "headers": [[REDRIVE_COUNT_HEADER, "9" * 10]]}, "redrive count malformed"),
])
def test_a_malformed_original_is_a_problem_not_a_crash(fields, problem):
    body = json.dumps({"error": {"stage": "fetch", "type": "FetchError"}, **fields}).encode()
    assert read_letter(body).problem == problem


def test_a_source_that_makes_no_sense_is_ignored():
    for source in (None, "x", {"topic": "in", "partition": -1}, {"topic": "in", "partition": True}, {"topic": 3}):
        body = json.dumps({"error": {"stage": "s", "type": "t"}, "value": "u", "source": source}).encode()
        letter = read_letter(body)
        assert (letter.source_topic, letter.source_partition, letter.problem) == (None, None, None)


# --- choosing ----------------------------------------------------------------------------------------------------

def test_without_filters_every_readable_dead_letter_is_sent():
    judgement = Selection().judge(letter_bytes(), T0)
    assert judgement.verdict is Verdict.SEND and judgement.letter.value == b"http://h/1.png"


def test_stage_and_type_filters_must_both_match_and_each_matches_any_of_its_values():
    fetch = letter_bytes()
    parse = letter_bytes(b"junk", stage_error=InvalidRecord("not a URL"))
    choose = Selection(stages=frozenset({"fetch", "predict"}))
    assert [choose.judge(v, T0).verdict for v in (fetch, parse)] == [Verdict.SEND, Verdict.FILTERED]
    both = Selection(stages=frozenset({"fetch"}), types=frozenset({"InvalidRecord"}))
    assert [both.judge(v, T0).verdict for v in (fetch, parse)] == [Verdict.FILTERED, Verdict.FILTERED]
    assert Selection(types=frozenset({"InvalidRecord"})).judge(parse, T0).verdict is Verdict.SEND


def test_the_time_range_includes_since_and_excludes_until():
    window = Selection(since_ms=T0, until_ms=T0 + 1000)
    verdicts = [window.judge(letter_bytes(), t).verdict for t in (T0 - 1, T0, T0 + 999, T0 + 1000, None)]
    assert verdicts == [Verdict.FILTERED, Verdict.SEND, Verdict.SEND, Verdict.FILTERED, Verdict.FILTERED]
    assert Selection(since_ms=T0).judge(letter_bytes(), T0 + 10**9).verdict is Verdict.SEND


def test_a_record_redriven_max_redrives_times_is_skipped():
    default = Selection()
    assert default.max_redrives == 3
    assert default.judge(letter_bytes(headers=counted(2)), T0).verdict is Verdict.SEND
    assert default.judge(letter_bytes(headers=counted(3)), T0).verdict is Verdict.OVER_LIMIT
    assert Selection(max_redrives=5).judge(letter_bytes(headers=counted(3)), T0).verdict is Verdict.SEND
    assert Selection(max_redrives=0).judge(letter_bytes(), T0).verdict is Verdict.OVER_LIMIT


def test_filters_come_before_problems_and_problems_before_the_limit():
    truncated = letter_bytes(b"v" * (MAX_DEAD_LETTER_VALUE + 1), stage_error=InvalidRecord("x"))
    assert Selection(stages=frozenset({"fetch"})).judge(truncated, T0).verdict is Verdict.FILTERED
    assert Selection().judge(truncated, T0).reason == "value truncated"
    # Not a dead letter: its stage is unknown, so a stage filter cannot skip it.
    assert Selection(stages=frozenset({"fetch"})).judge(b"garbage", T0).verdict is Verdict.UNREADABLE


def test_the_tally_line_names_every_count():
    tally = Tally()
    selection = Selection(stages=frozenset({"fetch"}))
    for value in (letter_bytes(), letter_bytes(), letter_bytes(headers=counted(3)), b"x", b"y",
                  letter_bytes(b"u", stage_error=InvalidRecord("x"))):
        tally.count(selection.judge(value, T0))
    assert tally.describe() == ("read 6, sent 2, skipped by filter 1, skipped over the limit 1, unreadable 2 "
                                "(not JSON 2)")
    assert tally.describe(dry_run=True).startswith("read 6, would send 2,")


# --- untrusted input: properties -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
letter_like = st.fixed_dictionaries(
    {"error": st.fixed_dictionaries({"stage": st.sampled_from(STAGES), "type": st.text(max_size=10)}) | json_values},
    optional={"value": json_values | st.text() | st.fixed_dictionaries({"base64": st.text(max_size=20)}),
              "headers": st.lists(st.lists(json_values | st.text(max_size=20), max_size=3), max_size=4) | json_values,
              "source": json_values | st.fixed_dictionaries({"topic": st.text(max_size=5), "partition": json_values}),
              "truncated": json_values, "headers_lost": json_values})


def assert_judged(judgement):
    """Every dead letter is sent, skipped or unreadable; one that is sent has an original Kafka can take."""
    assert judgement.verdict in Verdict
    if judgement.verdict is Verdict.SEND:
        letter = judgement.letter
        assert letter.value is None or isinstance(letter.value, bytes)
        for name, value in letter.redriven_headers():
            name.encode("utf-8")
            assert value is None or isinstance(value, bytes)
    if judgement.verdict is Verdict.UNREADABLE:
        assert judgement.reason


@given(st.binary(max_size=2000) | st.none(), st.integers(0, 2**41) | st.none())
def test_arbitrary_bytes_as_a_dead_letter_never_crash_the_redrive(value, timestamp):
    assert_judged(Selection(since_ms=T0).judge(value, timestamp))
    assert_judged(Selection().judge(value, timestamp))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(letter_like, st.sampled_from([Selection(), Selection(stages=frozenset({"fetch"})), Selection(max_redrives=1)]))
def test_arbitrary_json_shaped_like_a_dead_letter_never_crashes_the_redrive(body, selection):
    assert_judged(selection.judge(json.dumps(body).encode(), T0))


header_names = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
header_values = st.none() | st.binary(max_size=40) | st.text(max_size=40).map(str.encode)


@given(st.binary(max_size=300) | st.none(), st.lists(st.tuples(header_names, header_values), max_size=5))
def test_what_the_bridge_writes_a_redrive_reads_back_as_the_original_less_the_redacted_headers(value, headers):
    headers = tuple(headers)
    letter = read_letter(letter_bytes(value, headers))
    assert letter.value == value
    assert letter.headers == tuple(redact_headers(headers)[0])
    if not redact_headers(headers)[1]:
        assert letter.headers == headers  # nothing redacted: the headers come back byte for byte


# --- time and flags ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, millis", [
    ("1700000000000", 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T22:13:20.5+00:00", 1_700_000_000_500),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
    ("2023-11-14T22:13:20", 1_700_000_000_000),  # no offset: UTC
    ("2023-11-14", 1_699_920_000_000),
])
def test_times_are_iso_8601_or_epoch_milliseconds(text, millis):
    assert parse_time(text) == millis


def options(*argv):
    parser = argparse.ArgumentParser()
    add_redrive_arguments(parser)
    return redrive_options(parser.parse_args(list(argv)))


def test_filters_are_repeatable_and_comma_separated():
    chosen = options("--stage", "fetch,preprocess", "--stage", " predict ", "--type", "FetchError",
                     "--since", "1700000000000", "--until", "2023-11-15T00:00:00Z", "--max-redrives", "5")
    selection = chosen.selection
    assert selection.stages == {"fetch", "preprocess", "predict"} and selection.types == {"FetchError"}
    assert (selection.since_ms, selection.until_ms, selection.max_redrives) == (T0, 1_700_006_400_000, 5)
    assert not chosen.dry_run and chosen.group("tfs-bridge") == "tfs-bridge-redrive"
    assert options("--redrive-group-id", "mine", "--dry-run").group("tfs-bridge") == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--stage", "fetc"], "--stage must be one of parse, fetch"),
    (["--since", "yesterday"], "--since must be an ISO-8601 time"),
    (["--until", "2023-13-01"], "--until must be an ISO-8601 time"),
    (["--since", "2000", "--until", "1000"], "--since must be earlier than --until"),
    (["--max-redrives", "-1"], "--max-redrives must be a non-negative integer"),
    (["--transaction-records", "0"], "--transaction-records must be a positive integer"),
    (["--deadline-ms", "soon"], "--deadline-ms must be a positive integer"),
    (["--redrive-group-id", " "], "--redrive-group-id must not be empty"),
])
def test_bad_redrive_flags_are_one_line_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message) as info:
        options(*argv)
    assert "\n" not in str(info.value)


def test_the_stages_are_every_record_errors():
    from bridge.errors import RecordError

    stages, classes = set(), [RecordError]
    while classes:
        cls = classes.pop()
        stages.add(cls.stage)
        classes.extend(cls.__subclasses__())
    assert stages == set(STAGES)

