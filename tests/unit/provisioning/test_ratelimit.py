from __future__ import annotations

import threading

import pytest

from sf_bridge.provisioning.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_burst_passes_then_requests_are_spaced_at_the_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(10, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        bucket.acquire()
    assert t.now == 0
    for _ in range(10):
        bucket.acquire()
    assert t.now == pytest.approx(1.0)


def test_sustained_rate_never_exceeds_the_limit() -> None:
    t = FakeTime()
    bucket = TokenBucket(25, burst=1, clock=t.clock, sleep=t.sleep)
    stamps = []
    for _ in range(100):
        bucket.acquire()
        stamps.append(t.now)
    # any one-second window holds at most rate + burst requests
    for i, start in enumerate(stamps):
        in_window = [s for s in stamps[i:] if s < start + 1.0]
        assert len(in_window) <= 26


def test_pause_holds_everyone_back() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=5, clock=t.clock, sleep=t.sleep)
    bucket.pause(2.0)
    bucket.acquire()
    assert t.now >= 2.0


def test_threads_share_one_budget() -> None:
    bucket = TokenBucket(1000, burst=1)
    done = []

    def work() -> None:
        for _ in range(20):
            bucket.acquire()
        done.append(True)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(done) == 5


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
