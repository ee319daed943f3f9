"""The one backoff helper: capped exponential delays with jitter, reset after a stable period.

Used by everything that reconnects or restarts (session connects, worker restarts). Time and
randomness are injectable so tests never wait out a backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        reset_after: float = 60.0,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self._rand = rand
        self._clock = clock
        self.attempt = 0
        self._up_since: float | None = None

    def up(self) -> None:
        """The thing is working again; a long enough run of it forgives past failures."""
        self._up_since = self._clock()

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this failure)."""
        if self._up_since is not None and self._clock() - self._up_since >= self.reset_after:
            self.attempt = 0
        self._up_since = None
        raw = min(self.cap, self.base * self.factor**self.attempt)
        self.attempt += 1
        spread = raw * self.jitter
        return max(0.0, min(self.cap, raw - spread + 2 * spread * self._rand()))

    def reset(self) -> None:
        self.attempt = 0
        self._up_since = None
