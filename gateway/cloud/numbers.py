"""Cloud API numbers in memory: their secrets opened once, found by phone number id, app
secret or verify token on the webhook's hot path.

The table is the truth; this is a cache that is reloaded when a number is added or removed here,
and (at most once a second) when a webhook names a number or a signature it does not know, so a
number added through another gateway process is found too.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

import asyncpg
import structlog
from cryptography.fernet import InvalidToken

from db import cloud as cloud_db
from gateway.security import SecretBox

log = structlog.get_logger(__name__)

SECRET_PURPOSE = "cloud-api-secrets"
RELOAD_EVERY = 1.0


@dataclass(frozen=True)
class CloudNumber:
    session_id: int
    owner_id: int
    phone_number_id: str
    waba_id: str | None
    display_phone_number: str | None
    access_token: str
    app_secret: str
    verify_token: str | None
    coexistence: bool
    messages_per_second: int | None


class CloudNumbers:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self.box = box
        self._by_phone_id: dict[str, CloudNumber] = {}
        self._by_session: dict[int, CloudNumber] = {}
        self._secrets: list[bytes] = []
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        rows = await cloud_db.all_numbers(self._pool)
        numbers = []
        for row in rows:
            try:
                numbers.append(
                    CloudNumber(
                        session_id=row.session_id,
                        owner_id=row.owner_id,
                        phone_number_id=row.phone_number_id,
                        waba_id=row.waba_id,
                        display_phone_number=row.display_phone_number,
                        access_token=self.box.open(row.access_token_sealed),
                        app_secret=self.box.open(row.app_secret_sealed),
                        verify_token=(
                            self.box.open(row.verify_token_sealed)
                            if row.verify_token_sealed
                            else None
                        ),
                        coexistence=row.coexistence,
                        messages_per_second=row.messages_per_second,
                    )
                )
            except InvalidToken:
                log.error(
                    "cloud number secrets were sealed under another secret key",
                    session_id=row.session_id,
                )
        self._by_phone_id = {n.phone_number_id: n for n in numbers}
        self._by_session = {n.session_id: n for n in numbers}
        self._secrets = sorted({n.app_secret.encode() for n in numbers if n.app_secret})
        self._loaded_at = time.monotonic()

    async def maybe_reload(self) -> bool:
        """Reload unless that happened within the last second; whether it reloaded."""
        async with self._lock:
            if time.monotonic() - self._loaded_at < RELOAD_EVERY:
                return False
            await self.load()
            return True

    def by_phone_number_id(self, phone_number_id: str | None) -> CloudNumber | None:
        return self._by_phone_id.get(phone_number_id) if phone_number_id else None

    def by_waba_id(self, waba_id: str | None) -> list[CloudNumber]:
        """The numbers of a WhatsApp Business Account (account-level webhook fields)."""
        if not waba_id:
            return []
        return [n for n in self._by_session.values() if n.waba_id == waba_id]

    def by_session(self, session_id: int) -> CloudNumber | None:
        return self._by_session.get(session_id)

    def all(self) -> list[CloudNumber]:
        return list(self._by_session.values())

    def matching_secrets(self, body: bytes, header: str | None) -> frozenset[bytes]:
        """The known app secrets whose `sha256=<hex HMAC-SHA256(app secret, body)>` equals the
        header, every secret compared in constant time (empty when the header is missing)."""
        if not header or not header.startswith("sha256="):
            return frozenset()
        given = header[7:].strip().lower().encode()
        matched: set[bytes] = set()
        for secret in self._secrets:
            digest = hmac.new(secret, body, "sha256").hexdigest().encode()
            if hmac.compare_digest(digest, given):
                matched.add(secret)
        return frozenset(matched)

    @staticmethod
    def signed_for(number: CloudNumber, matched: frozenset[bytes]) -> bool:
        """Whether the body was signed with this number's own app secret: a signature made
        with one tenant's secret must not let a payload land on another tenant's number."""
        return bool(number.app_secret) and number.app_secret.encode() in matched

    def verify_token_matches(self, token: str | None) -> bool:
        """A configured, non-empty verify token equal to `token` (an empty one never matches)."""
        if not token:
            return False
        matched = False
        for number in self._by_session.values():
            if number.verify_token:
                matched |= hmac.compare_digest(number.verify_token.encode(), token.encode())
        return matched
