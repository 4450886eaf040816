"""Secrets at rest and admin tokens (no database needed)."""

from __future__ import annotations

import hashlib
import uuid
import warnings

import jwt

from api.security import (
    AccessClaims,
    create_access_token,
    decode_access_token,
    hash_password,
    hash_secret,
    new_api_key,
    secrets_match,
    verify_password,
)


def test_tokens_round_trip_and_reject_tampering_expiry_and_none_alg() -> None:
    admin = uuid.uuid4()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the short development secret must not warn
        token = create_access_token(
            admin_id=admin, version=3, secret_key="dev-insecure-change-me", minutes=5
        )
        claims = decode_access_token(token, secret_key="dev-insecure-change-me")
        assert claims == AccessClaims(admin, 3)
    assert decode_access_token(token, secret_key="another-secret") is None
    expired = create_access_token(admin_id=admin, version=0, secret_key="k" * 40, minutes=-1)
    assert decode_access_token(expired, secret_key="k" * 40) is None
    unsigned = jwt.encode({"sub": str(admin), "exp": 2**40}, key=None, algorithm="none")
    assert decode_access_token(unsigned, secret_key="k" * 40) is None


def test_tokens_without_an_integer_version_are_refused() -> None:
    """Tokens from before revocable tokens carry no version: they cannot dodge a logout."""
    key = hashlib.sha256(b"fedlora-admin-token:" + b"k" * 40).digest()
    sub = str(uuid.uuid4())
    no_version = jwt.encode({"sub": sub, "exp": 2**40}, key, algorithm="HS256")
    assert decode_access_token(no_version, secret_key="k" * 40) is None
    for bad in ("0", True, 1.0, None):
        forged = jwt.encode({"sub": sub, "ver": bad, "exp": 2**40}, key, algorithm="HS256")
        assert decode_access_token(forged, secret_key="k" * 40) is None, bad


def test_keys_are_hashed_and_passwords_use_argon2() -> None:
    key = new_api_key()
    assert key.startswith("flk_")
    assert len(key) > 40
    assert secrets_match(key, hash_secret(key))
    assert not secrets_match(key + "x", hash_secret(key))
    stored = hash_password("s3cret")
    assert stored.startswith("$argon2")
    assert verify_password("s3cret", stored)
    assert not verify_password("wrong", stored)
    assert not verify_password("s3cret", "not-a-hash")
