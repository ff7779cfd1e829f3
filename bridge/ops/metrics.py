"""Throughput counters, logged every few seconds by the run loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bridge.records import OutputMessage

log = logging.getLogger(__name__)


class Throughput:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.results = 0
        self.dead_letters = 0
        self.committed_records = 0
        self._since = clock()
        self._committed_at_last_log = 0

    def processed(self, message: OutputMessage) -> None:
        if message.is_result:
            self.results += 1
        else:
            self.dead_letters += 1

    def committed(self, records: int) -> None:
        self.committed_records += records

    def maybe_log(self) -> None:
        now = self.clock()
        if self.interval <= 0 or now - self._since < self.interval:
            return
        rate = (self.committed_records - self._committed_at_last_log) / (now - self._since)
        log.info("committed %d records (%.1f/s); %d results, %d dead letters so far",
                 self.committed_records, rate, self.results, self.dead_letters)
        self._since = now
        self._committed_at_last_log = self.committed_records
