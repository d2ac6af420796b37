# -*- test-case-name: tests.test_limits -*-
"""
Per-user limits of one node (DESIGN §9): token buckets for sends and typing marks, and a cap
on the long-polls one user may have waiting at once.

All of it is in memory and per node: a user whose conversations are served by several nodes
gets these limits on each of them. Time comes from an injected clock (C{seconds()}).

Memory stays bounded by the users active lately: a bucket left alone long enough to be full
again is the same as no bucket at all, so it is forgotten; a user with no poll waiting has no
entry in the poll count.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Hashable

from hpchat.config import LimitsConfig

#: Buckets forgotten at most per call of L{RateLimiter.take} (the rest on later calls), so
#: that no single request pays for a crowd of users who went quiet at the same moment.
FORGET_PER_TAKE = 64


class TokenBucket:
    """
    One key's bucket: C{tokens} (up to the limiter's burst) as they were at time C{stamp}.
    """

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp

    def take(self, now: float, rate: float, burst: int) -> float:
        """
        Refill for the time since the last call, then take one token: 0.0 if one was there,
        otherwise the seconds until one will be (nothing is taken then).
        """
        tokens = self.tokens + max(0.0, now - self.stamp) * rate
        if tokens > burst:
            tokens = float(burst)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class RateLimiter:
    """
    A token bucket per key: C{rate} tokens a second, at most C{burst} saved up, one taken per
    action. A key seen for the first time starts with a full bucket.

    Buckets are kept in the order they were last used; one unused for C{burst / rate}
    seconds has refilled completely, whatever it held, so it is dropped (lazily, during
    L{take}) and a later use starts afresh from a full bucket, which is the same answer.
    """

    def __init__(self, clock, rate: float, burst: int):
        if not rate > 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self._clock = clock
        self.rate = float(rate)
        self.burst = int(burst)
        self._fill = self.burst / self.rate
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """
        Take one token from C{key}'s bucket. Returns 0.0 when allowed, otherwise the seconds
        to wait before the next token (nothing is taken then).
        """
        now = self._clock.seconds()
        self._forget(now)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = TokenBucket(self.burst - 1.0, now)
            return 0.0
        buckets.move_to_end(key)
        return bucket.take(now, self.rate, self.burst)

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        cutoff = now - self._fill
        for _ in range(FORGET_PER_TAKE):
            if not buckets:
                return
            key = next(iter(buckets))
            if buckets[key].stamp > cutoff:
                return
            del buckets[key]


class ConcurrencyLimit:
    """
    At most C{maximum} things at once per key (long-polls waiting, per user). A key whose
    count falls back to zero has no entry left.
    """

    def __init__(self, maximum: int):
        if maximum < 1:
            raise ValueError("a concurrency limit needs maximum >= 1")
        self.maximum = maximum
        self._counts: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def acquire(self, key: Hashable) -> bool:
        """
        Count one more for C{key} and return True, or return False (nothing counted) when
        C{key} already has C{maximum}.
        """
        count = self._counts.get(key, 0)
        if count >= self.maximum:
            return False
        self._counts[key] = count + 1
        return True

    def add(self, key: Hashable) -> None:
        """
        Count one more for C{key}, even beyond C{maximum} (see L{exceeded}).
        """
        self._counts[key] = self._counts.get(key, 0) + 1

    def exceeded(self, key: Hashable) -> bool:
        return self._counts.get(key, 0) > self.maximum

    def release(self, key: Hashable) -> None:
        """
        Count one fewer for C{key} (once per successful L{acquire}, once per L{add}).
        """
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count - 1


def retryAfter(seconds: float) -> bytes:
    """
    A C{Retry-After} header value: whole seconds, rounded up, at least 1.
    """
    return str(max(1, math.ceil(seconds))).encode("ascii")


class UserLimits:
    """
    What one user may do on this node: C{sends} and C{typing} (L{RateLimiter}s) and
    C{polls} (a L{ConcurrencyLimit} on long-polls waiting, conversations and inbox
    together), all keyed by user id.
    """

    def __init__(self, sends: RateLimiter, typing: RateLimiter, polls: ConcurrencyLimit):
        self.sends = sends
        self.typing = typing
        self.polls = polls

    @classmethod
    def fromConfig(cls, clock, config: LimitsConfig) -> UserLimits:
        return cls(RateLimiter(clock, config.sends_per_second, config.sends_burst),
                   RateLimiter(clock, config.typing_per_second, config.typing_burst),
                   ConcurrencyLimit(config.max_polls_per_user))
