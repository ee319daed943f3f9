"""Passwords (argon2id), access tokens (JWT, HS256) and keys derived from the secret key."""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_ISSUER = "wagate"


def derive_key(secret: str, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose (tokens, secrets at rest, ...) derived from the secret key."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=b"wagate-key-derivation",
        info=purpose.encode(),
    ).derive(secret.encode())


class PasswordService:
    """argon2id hashing, run off the event loop (a verification costs tens of milliseconds)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the e-mail is unknown, so timing does not tell users apart.
        self._dummy_hash = self._hasher.hash("wagate-no-such-user")

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when `password` matches; a None hash burns the same time and answers False."""
        if password_hash is None:
            await asyncio.to_thread(self._verify, self._dummy_hash, password)
            return False
        return await asyncio.to_thread(self._verify, password_hash, password)


class InvalidTokenError(Exception):
    """The token is malformed, tampered with, expired or not ours."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    role: str
    expires_at: datetime


class TokenService:
    def __init__(self, secret_key: str, ttl: timedelta) -> None:
        self._key = derive_key(secret_key, "jwt-hs256")
        self.ttl = ttl

    def issue(
        self, user_id: int, role: str, *, now: datetime | None = None
    ) -> tuple[str, datetime]:
        issued = now or datetime.now(UTC)
        expires = issued + self.ttl
        claims = {
            "sub": str(user_id),
            "role": role,
            "iss": _ISSUER,
            "iat": int(issued.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="HS256"), expires.replace(microsecond=0)

    def decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["sub", "exp", "iat", "iss"]},
            )
            return TokenClaims(
                user_id=int(claims["sub"]),
                role=str(claims.get("role", "operator")),
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidTokenError("token expired") from exc
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidTokenError("invalid token") from exc


class SecretBox:
    """Secrets at rest (webhook signing secrets, later Jira and Cloud tokens): Fernet with a key
    derived from the secret key, so a database dump alone reveals none of them."""

    def __init__(self, secret_key: str, purpose: str = "secrets-at-rest") -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, purpose)))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """The plain secret; `InvalidToken` when it was sealed under another secret key."""
        return self._fernet.decrypt(sealed.encode("ascii")).decode()
