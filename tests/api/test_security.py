"""Secrets at rest and admin tokens (no database needed)."""

from __future__ import annotations

import uuid
import warnings

import jwt

from api.security import (
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
        token = create_access_token(admin_id=admin, secret_key="dev-insecure-change-me", minutes=5)
        assert decode_access_token(token, secret_key="dev-insecure-change-me") == admin
    assert decode_access_token(token, secret_key="another-secret") is None
    expired = create_access_token(admin_id=admin, secret_key="k" * 40, minutes=-1)
    assert decode_access_token(expired, secret_key="k" * 40) is None
    unsigned = jwt.encode({"sub": str(admin), "exp": 2**40}, key=None, algorithm="none")
    assert decode_access_token(unsigned, secret_key="k" * 40) is None


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
