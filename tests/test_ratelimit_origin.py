"""Token buckets and origin patterns (pure code: explicit clocks, no sockets)."""

from __future__ import annotations

import pytest

from aether_trio.guards.origin import OriginPolicy
from aether_trio.guards.ratelimit import KeyedBuckets, TokenBucket


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after() == pytest.approx(0.1)
    assert not bucket.take(0.05)
    assert bucket.take(0.1)
    # Never more than the burst, however long it rested.
    assert sum(bucket.take(100.0) for _ in range(10)) == 5


def test_bucket_cost_and_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=10.0)
    assert bucket.take(10.0, cost=3)
    assert not bucket.take(9.0)  # a clock step back refills nothing
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst, 0.0)


def test_keyed_buckets_are_independent_and_bounded() -> None:
    buckets = KeyedBuckets(rate=1, burst=2, max_keys=3)
    assert buckets.take("a", 0)
    assert buckets.take("a", 0)
    assert not buckets.take("a", 0)
    assert buckets.take("b", 0)
    assert buckets.retry_after("a") == pytest.approx(1.0)
    for key in ("c", "d", "e"):
        buckets.take(key, 0)
    assert len(buckets) == 3
    # "a" was the least recently used and is forgotten: it starts with a full bucket again.
    assert buckets.take("a", 0)


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        ((), None, True),
        ((), "https://evil.example", False),
        (("*",), "https://anything.example", True),
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "HTTPS://APP.EXAMPLE.COM/", True),
        (("https://app.example.com",), "http://app.example.com", False),
        (("https://app.example.com",), "https://app.example.com.evil.io", False),
        (("https://*.example.com",), "https://chat.example.com", True),
        (("https://*.example.com",), "https://example.com", False),
        (("http://localhost:*",), "http://localhost:5173", True),
        (("http://localhost:*",), "http://localhost.evil.io", False),
        (("https://app.example.com",), "null", False),
        (("https://app.example.com",), "", False),
    ],
)
def test_origin_policy(patterns: tuple[str, ...], origin: str | None, allowed: bool) -> None:
    assert OriginPolicy(patterns).allows(origin) is allowed
