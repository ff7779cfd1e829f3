"""SIGTERM/SIGINT: stop the run loop gracefully; a second signal, or the shutdown timeout, ends the process."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class StopSignal:
    """Set by SIGTERM/SIGINT. A second signal, or a shutdown longer than `timeout`, exits at once; nothing is lost
    then either, since uncommitted work is redone by the next owner of the partitions."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.event = threading.Event()
        self.timeout = timeout

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():  # a second signal: leave now; the open transaction is aborted by the broker
            logging.shutdown()
            os._exit(130)
        log.info("received %s: finishing the Predict calls in flight and stopping", signal.Signals(signum).name)
        self.event.set()
        watchdog = threading.Timer(self.timeout, self._force_exit)
        watchdog.daemon = True
        watchdog.start()

    def _force_exit(self) -> None:
        log.error("shutdown took longer than %.0fs: exiting without finishing", self.timeout)
        logging.shutdown()
        os._exit(1)

    def is_set(self) -> bool:
        return self.event.is_set()
