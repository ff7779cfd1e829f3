"""Which dead letters a redrive sends back (Selection), and the tally of what it did with each (Tally)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum

from bridge.redrive.letters import Letter, UnreadableLetter, read_letter

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Verdict(Enum):
    SEND = "sent"
    FILTERED = "skipped by filter"
    OVER_LIMIT = "skipped over the limit"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Judgement:
    """What to do with one dead letter; `letter` when it is sent, `reason` when it is unreadable."""

    verdict: Verdict
    letter: Letter | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Selection:
    """The dead letters to send: failed at one of `stages` with one of `types` (empty: any), with a Kafka timestamp
    in [since_ms, until_ms) (None: unbounded), and redriven fewer than max_redrives times already."""

    stages: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    max_redrives: int = 3

    def judge(self, value: bytes | None, timestamp_ms: int | None) -> Judgement:
        """The verdict on a dead letter from its record's value and timestamp. Never raises.

        In order: outside the time range -> FILTERED; not a dead letter -> UNREADABLE (its stage and type are
        unknown); another stage or type -> FILTERED; its original not restorable -> UNREADABLE; redriven
        max_redrives times already -> OVER_LIMIT; else SEND."""
        if not self._in_time(timestamp_ms):
            return Judgement(Verdict.FILTERED)
        try:
            letter = read_letter(value)
        except UnreadableLetter as exc:
            return Judgement(Verdict.UNREADABLE, reason=str(exc))
        if (self.stages and letter.stage not in self.stages) or (self.types and letter.error_type not in self.types):
            return Judgement(Verdict.FILTERED)
        if letter.problem is not None:
            return Judgement(Verdict.UNREADABLE, reason=letter.problem)
        if letter.redrives >= self.max_redrives:
            return Judgement(Verdict.OVER_LIMIT)
        return Judgement(Verdict.SEND, letter)

    def _in_time(self, timestamp_ms: int | None) -> bool:
        if self.since_ms is None and self.until_ms is None:
            return True
        if timestamp_ms is None:
            return False  # a letter without a timestamp cannot be shown to be in the range
        return ((self.since_ms is None or timestamp_ms >= self.since_ms)
                and (self.until_ms is None or timestamp_ms < self.until_ms))


@dataclass
class Tally:
    """Dead letters read, and what became of them."""

    read: int = 0
    sent: int = 0
    filtered: int = 0
    over_limit: int = 0
    unreadable: Counter[str] = field(default_factory=Counter)  # by reason

    def count(self, judgement: Judgement) -> None:
        self.read += 1
        if judgement.verdict is Verdict.SEND:
            self.sent += 1
        elif judgement.verdict is Verdict.FILTERED:
            self.filtered += 1
        elif judgement.verdict is Verdict.OVER_LIMIT:
            self.over_limit += 1
        else:
            self.unreadable[judgement.reason or "unreadable"] += 1

    def add(self, other: Tally) -> None:
        self.read += other.read
        self.sent += other.sent
        self.filtered += other.filtered
        self.over_limit += other.over_limit
        self.unreadable.update(other.unreadable)

    def describe(self, dry_run: bool = False) -> str:
        """e.g. "read 9, sent 5, skipped by filter 1, skipped over the limit 1, unreadable 2 (not JSON 2)"."""
        unreadable = sum(self.unreadable.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.unreadable.items()))
        return (f"read {self.read}, {'would send' if dry_run else 'sent'} {self.sent}, skipped by filter "
                f"{self.filtered}, skipped over the limit {self.over_limit}, unreadable {unreadable}"
                + (f" ({reasons})" if reasons else ""))


def parse_time(text: str) -> int:
    """ISO-8601 (without an offset: UTC) or epoch milliseconds, as epoch milliseconds; ValueError if neither."""
    text = text.strip()
    if re.fullmatch(r"[0-9]{1,15}", text):
        return int(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)
