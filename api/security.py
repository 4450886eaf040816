"""Secrets: client API keys and join tokens (sha256 at rest), admin passwords and tokens.

API keys and join tokens are 256-bit random strings, so a plain sha256 is a sufficient hash
(no dictionary to attack); lookups go by that hash and are confirmed with a constant-time
compare. Admin passwords are human-chosen and use argon2id. Admin tokens are JWTs signed with
HS256 and verified with a fixed algorithm list.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta

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


def create_access_token(*, admin_id: uuid.UUID, secret_key: str, minutes: int) -> str:
    now = datetime.now(UTC)
    claims = {"sub": str(admin_id), "iat": now, "exp": now + timedelta(minutes=minutes)}
    return jwt.encode(claims, _signing_key(secret_key), algorithm=JWT_ALGORITHMS[0])


def decode_access_token(token: str, *, secret_key: str) -> uuid.UUID | None:
    """The admin id in a valid, unexpired token; ``None`` for anything else."""
    try:
        claims = jwt.decode(
            token,
            _signing_key(secret_key),
            algorithms=JWT_ALGORITHMS,
            options={"require": ["exp", "sub"]},
        )
        return uuid.UUID(str(claims["sub"]))
    except (jwt.PyJWTError, ValueError):
        return None
