"""Failed-login throttling per client IP and per e-mail, on the `limits` package."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter


class LoginLimiter:
    """Counts failed logins; once either the IP or the e-mail is over the limit, refuse."""

    def __init__(self, rate: str) -> None:
        self._item: RateLimitItem = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def retry_after(self, ip: str, email: str) -> int | None:
        """Seconds until a new attempt is allowed, or None when one is allowed now."""
        waits: list[float] = []
        for scope, key in (("ip", ip), ("email", email.lower())):
            if not await self._limiter.test(self._item, scope, key):
                stats = await self._limiter.get_window_stats(self._item, scope, key)
                waits.append(stats.reset_time - time.time())
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    async def record_failure(self, ip: str, email: str) -> None:
        await self._limiter.hit(self._item, "ip", ip)
        await self._limiter.hit(self._item, "email", email.lower())
