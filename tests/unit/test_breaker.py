"""The breaker's state machine (pure unit test with a fake clock)."""

from cache.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_opens_after_consecutive_failures_and_recovers():
    clock = Clock()
    recovered = []
    b = Breaker(failures=3, cooldown=2.0, clock=clock, on_close=lambda: recovered.append(1))
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN
    assert not b.allow()
    clock.now = 2.5
    assert b.allow()  # one probe
    assert b.state == HALF_OPEN
    assert not b.allow()  # only one
    b.success()
    assert b.state == CLOSED and recovered == [1]


def test_success_resets_error_count():
    b = Breaker(failures=3, cooldown=1.0, clock=Clock())
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state == CLOSED


def test_failed_probe_reopens():
    clock = Clock()
    b = Breaker(failures=1, cooldown=1.0, clock=clock)
    b.failure()
    clock.now = 1.5
    assert b.allow()
    b.failure()
    assert b.state == OPEN
    assert not b.allow()


def test_recovery_hook_failure_keeps_open():
    clock = Clock()

    def broken():
        raise RuntimeError("db down")

    b = Breaker(failures=1, cooldown=1.0, clock=clock, on_close=broken)
    b.failure()
    clock.now = 1.5
    assert b.allow()
    b.success()
    assert b.state == OPEN
