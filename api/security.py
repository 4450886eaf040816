"""Secrets: client API keys and join tokens (sha256 at rest), admin passwords and tokens.

API keys and join tokens are 256-bit random strings, so a plain sha256 is a sufficient hash
(no dictionary to attack); lookups go by that hash and are confirmed with a constant-time
compare. Admin passwords are human-chosen and use argon2id. Admin tokens are JWTs signed with
HS256 and verified with a fixed algorithm list; each carries the admin's token version
(``ver``), and a token whose version is no longer the admin's is refused, so logging out or
changing the password revokes every token issued before.

argon2id is memory-hard (64 MiB a hash by default), so a burst of logins could take the API's
memory with it: :class:`PasswordGate` bounds how many hashes one process computes at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

API_KEY_PREFIX = "flk_"
JOIN_TOKEN_PREFIX = "fjt_"  # noqa: S105 - a public prefix
JWT_ALGORITHMS = ["HS256"]
_hasher = PasswordHasher()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_match(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_join_token() -> str:
    return JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _signing_key(secret_key: str) -> bytes:
    """A 32-byte HS256 key derived from the configured secret (domain-separated).

    Production settings already refuse secrets under 32 characters; deriving the key keeps the
    development default usable without PyJWT's short-key warning.
    """
    return hashlib.sha256(b"fedlora-admin-token:" + secret_key.encode()).digest()


class AccessClaims(NamedTuple):
    admin_id: uuid.UUID
    version: int
    """The admin's token version when the token was issued."""


def create_access_token(*, admin_id: uuid.UUID, version: int, secret_key: str, minutes: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(admin_id),
        "ver": version,
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
    }
    return jwt.encode(claims, _signing_key(secret_key), algorithm=JWT_ALGORITHMS[0])


def decode_access_token(token: str, *, secret_key: str) -> AccessClaims | None:
    """The admin id and token version of a valid, unexpired token; ``None`` for anything else.

    Whether the version is still the admin's is the caller's check (it needs the database).
    """
    try:
        claims = jwt.decode(
            token,
            _signing_key(secret_key),
            algorithms=JWT_ALGORITHMS,
            options={"require": ["exp", "sub", "ver"]},
        )
        version = claims["ver"]
        if type(version) is not int:
            return None
        return AccessClaims(uuid.UUID(str(claims["sub"])), version)
    except (jwt.PyJWTError, ValueError):
        return None


class PasswordGate:
    """At most ``slots`` password hashes at once in this process; the rest wait, then give up.

    A ``threading`` semaphore because hashing runs in the threadpool of sync routes (and the
    start-up bootstrap); argon2-cffi releases the GIL while it hashes.
    """

    def __init__(self, slots: int, wait_seconds: float) -> None:
        self.slots = slots
        self.wait_seconds = wait_seconds
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Yield ``True`` while holding a slot, ``False`` if none freed up in time."""
        acquired = self._semaphore.acquire(timeout=self.wait_seconds)
        try:
            yield acquired
        finally:
            if acquired:
                self._semaphore.release()
