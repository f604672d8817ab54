"""Token buckets: a rate (tokens per second) and a burst (bucket size), refilled lazily.

Buckets are plain objects updated synchronously with a clock passed in by the caller (Trio's clock
in the server, any float in tests), so checking a limit never awaits. `KeyedBuckets` keeps one
bucket per key (user, IP, channel) and forgets buckets that have been full for a while, so an
attacker cycling keys cannot grow it without bound beyond `max_keys`.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["KeyedBuckets", "TokenBucket"]


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens if available; False (and nothing taken) if not."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens will be available (0 if they are now)."""
        return max(0.0, (cost - self.tokens) / self.rate)


class KeyedBuckets:
    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._evict(now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(cost)

    def _evict(self, now: float) -> None:
        # Least recently used first. A bucket that would be full again loses nothing by being
        # forgotten; if even the oldest is not, the limit on keys wins (memory stays bounded).
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
