import pytest

from bridge.errors import ModelGone
from bridge.loop.pause import PauseState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_pause_then_checks_at_the_interval_then_resume():
    clock = Clock()
    state = PauseState(check_interval=2.0, give_up_after=0, clock=clock)
    assert not state.paused and not state.check_due()
    state.pause("UNAUTHENTICATED")
    assert state.paused and state.reason == "UNAUTHENTICATED" and not state.check_due()
    clock.now += 2.0
    assert state.check_due()
    state.still_down("INTERNAL")
    assert state.reason == "INTERNAL" and not state.check_due()
    clock.now += 2.0
    assert state.check_due()
    assert state.resumed() == 4.0
    assert not state.paused and not state.check_due()


def test_pausing_again_while_paused_keeps_the_start():
    clock = Clock()
    state = PauseState(1.0, clock=clock)
    state.pause("a")
    clock.now += 5
    state.pause("b")
    assert state.resumed() == 5


def test_a_pause_longer_than_the_limit_gives_up():
    clock = Clock()
    state = PauseState(check_interval=1.0, give_up_after=10.0, clock=clock)
    state.pause("down")
    clock.now += 9
    state.still_down("down")
    clock.now += 1
    with pytest.raises(ModelGone, match="10 s"):
        state.still_down("still down")


def test_zero_means_wait_forever():
    clock = Clock()
    state = PauseState(check_interval=1.0, give_up_after=0, clock=clock)
    state.pause("down")
    clock.now += 10**6
    state.still_down("down")
    assert state.paused
