import pytest

from bridge.errors import FetchError, ModelUnusable, TransactionAborted
from bridge.loop.isolation import isolate
from bridge.records import DeadLetter, Record

RECORD = Record("in", 1, 5, None, b"http://h/x.png")


def test_a_value_passes_through():
    assert isolate("fetch", RECORD, lambda: b"bytes") == b"bytes"


def test_a_record_error_keeps_its_own_stage_and_type():
    letter = isolate("fetch", RECORD, lambda: (_ for _ in ()).throw(FetchError("HTTP 404")))
    assert isinstance(letter, DeadLetter) and (letter.stage, letter.error_type) == ("fetch", "FetchError")


@pytest.mark.parametrize("exc", [ValueError("Invalid IPv6 URL"), RecursionError("maximum recursion depth"),
                                 MemoryError(), KeyError("x"), UnicodeEncodeError("utf-8", "\ud800", 0, 1, "no")])
def test_any_other_exception_is_the_records_unexpected_error_at_the_stage(exc):
    def step():
        raise exc
    letter = isolate("preprocess", RECORD, step)
    assert isinstance(letter, DeadLetter)
    assert (letter.stage, letter.error_type) == ("preprocess", "UnexpectedRecordError")
    assert letter.message.startswith(type(exc).__name__)


@pytest.mark.parametrize("exc", [ModelUnusable("down"), TransactionAborted("abort"), KeyboardInterrupt()])
def test_system_failures_and_interrupts_go_up(exc):
    def step():
        raise exc
    with pytest.raises(type(exc)):
        isolate("predict", RECORD, step)
