"""When input is paused because the model server fails as a whole, when to check it again, and when to give up.

    running --pause(reason)--> paused --check_due()--> (health check) --resumed()--> running
                                  ^                          |
                                  +------still_down(reason)--+--> ModelGone once paused longer than give_up_after
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.errors import ModelGone


class PauseState:
    def __init__(self, check_interval: float, give_up_after: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """give_up_after: seconds of pause after which still_down() raises ModelGone; 0: never."""
        self.check_interval = check_interval
        self.give_up_after = give_up_after
        self.clock = clock
        self.paused = False
        self.reason = ""
        self.since = 0.0
        self._next_check = 0.0

    def pause(self, reason: str) -> None:
        """Pause (or stay paused) for `reason`; the first health check comes after check_interval."""
        if not self.paused:
            self.since = self.clock()
        self.paused = True
        self.reason = reason
        self._next_check = self.clock() + self.check_interval

    def check_due(self) -> bool:
        return self.paused and self.clock() >= self._next_check

    def still_down(self, reason: str) -> None:
        """A health check failed: check again later, or raise ModelGone if paused for too long."""
        self.reason = reason
        paused_for = self.clock() - self.since
        if self.give_up_after > 0 and paused_for >= self.give_up_after:
            raise ModelGone(f"the model server has not recovered after {paused_for:.0f} s of pause "
                            f"(last: {reason})")
        self._next_check = self.clock() + self.check_interval

    def resumed(self) -> float:
        """Leave the pause; returns how long it lasted, in seconds."""
        self.paused = False
        return self.clock() - self.since
