"""The in-flight window's bookkeeping: order, the frontier, commits, restarts, revokes and its bounds."""

from bridge.loop.window import InFlightWindow
from bridge.records import OutputMessage, Record


def rec(partition, offset, size=10):
    return Record("in", partition, offset, None, b"v" * size)


def done(record):
    return OutputMessage(record, True, f"{record.partition}:{record.offset}".encode())


def offsets(messages):
    return [(m.record.partition, m.record.offset) for m in messages]


def test_outcomes_leave_in_offset_order_per_partition_whatever_order_they_finish_in():
    window = InFlightWindow(100, 10**6)
    records = [rec(0, 5), rec(0, 6), rec(1, 0), rec(0, 7), rec(1, 1)]
    gens = {(r.partition, r.offset): window.admit(r) for r in records}
    for r in (records[3], records[4], records[1]):  # 0@7, 1@1, 0@6 finish first
        assert window.finish(r, gens[(r.partition, r.offset)], done(r))
    assert window.ready() == []  # 0@5 and 1@0 are still in flight
    window.finish(records[2], 0, done(records[2]))  # 1@0
    assert offsets(window.ready()) == [(1, 0), (1, 1)]
    window.finish(records[0], 0, done(records[0]))  # 0@5
    assert offsets(window.ready()) == [(0, 5), (0, 6), (0, 7)]
    assert window.records == 0


def test_the_frontier_is_the_position_after_what_left_and_a_commit_moves_the_rewind_point():
    window = InFlightWindow(100, 10**6)
    a, b, c = rec(0, 10), rec(0, 11), rec(0, 12)
    for r in (a, b, c):
        window.admit(r)
    window.finish(a, 0, done(a))
    window.finish(c, 0, done(c))
    window.ready()
    assert window.frontier() == {("in", 0): 11}  # 12 is finished but 11 is not: it stays out
    window.committed()
    assert window.frontier() == {}
    assert window.restart() == {("in", 0): 11}  # an abort now redoes 11 and 12, not 10


def test_a_restart_before_any_commit_rewinds_to_the_first_polled_offset_and_makes_work_stale():
    window = InFlightWindow(100, 10**6)
    a, b = rec(2, 40), rec(2, 41)
    gen = window.admit(a)
    window.admit(b)
    window.finish(a, gen, done(a))
    window.ready()  # produced into the transaction, not committed
    assert window.restart() == {("in", 2): 40}
    assert window.records == 0 and window.bytes == 0
    assert not window.finish(b, gen, done(b))  # stale: from before the restart
    again = window.admit(a)  # read again after the seek
    assert again != gen and window.finish(a, again, done(a))


def test_a_revoked_partition_is_forgotten_and_its_late_outcomes_ignored():
    window = InFlightWindow(100, 10**6)
    kept, revoked = rec(0, 1), rec(1, 1)
    window.admit(kept)
    gen = window.admit(revoked)
    window.drop([("in", 1)])
    assert not window.finish(revoked, gen, done(revoked))
    assert window.records == 1  # only the kept partition's record is still in flight
    window.finish(kept, 0, done(kept))
    assert offsets(window.ready()) == [(0, 1)]


def test_the_window_is_full_by_records_or_by_bytes():
    by_records = InFlightWindow(2, 10**6)
    by_records.admit(rec(0, 0))
    assert not by_records.full()
    by_records.admit(rec(0, 1))
    assert by_records.full()
    by_bytes = InFlightWindow(100, 25)
    by_bytes.admit(rec(0, 0, size=20))
    assert not by_bytes.full()
    by_bytes.admit(rec(0, 1, size=20))
    assert by_bytes.full()
    by_bytes.finish(rec(0, 0), 0, done(rec(0, 0)))
    by_bytes.ready()
    assert not by_bytes.full() and by_bytes.bytes == 20


def test_gaps_in_offsets_do_not_block_the_prefix():
    window = InFlightWindow(100, 10**6)
    a, b = rec(0, 3), rec(0, 9)  # transaction markers or compaction between them
    window.admit(a)
    window.admit(b)
    window.finish(b, 0, done(b))
    window.finish(a, 0, done(a))
    assert offsets(window.ready()) == [(0, 3), (0, 9)]
    assert window.frontier() == {("in", 0): 10}
