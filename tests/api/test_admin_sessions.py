"""Admin tokens can be revoked: logout and a password change refuse every earlier token."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Admin, AuditLogEntry
from tests.api.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

V1 = "/api/v1"
NEW_PASSWORD = "a much longer passphrase 2027"


def _login(api: TestClient, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    r = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_logout_revokes_this_token_and_the_admins_other_tokens(api: TestClient) -> None:
    laptop, phone = _login(api), _login(api)
    assert api.get(f"{V1}/auth/me", headers=laptop).status_code == 200
    r = api.post(f"{V1}/auth/logout", headers=laptop)
    assert r.status_code == 204
    for headers in (laptop, phone):
        r = api.get(f"{V1}/organizations", headers=headers)
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert api.post(f"{V1}/auth/logout", headers=laptop).status_code == 401
    fresh = _login(api)
    assert api.get(f"{V1}/auth/me", headers=fresh).json()["email"] == ADMIN_EMAIL


def test_logout_needs_a_token(api: TestClient) -> None:
    assert api.post(f"{V1}/auth/logout").status_code == 401


def test_password_change_revokes_old_tokens_and_returns_a_working_one(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    old = _login(api)
    other = _login(api)
    body = {"current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD}
    r = api.post(f"{V1}/auth/password", json=body, headers=old)
    assert r.status_code == 200, r.text
    new = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert api.get(f"{V1}/auth/me", headers=new).status_code == 200
    for headers in (old, other):
        assert api.get(f"{V1}/auth/me", headers=headers).status_code == 401
    r = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert r.status_code == 401
    _login(api, NEW_PASSWORD)
    with app_sessions() as session:
        admin = session.scalar(sa.select(Admin))
        assert admin is not None
        assert admin.password_changed_at is not None
        actions = set(session.scalars(sa.select(AuditLogEntry.action)))
        assert "admin.change_password" in actions


def test_password_change_refuses_a_wrong_current_or_weak_new_password(api: TestClient) -> None:
    headers = _login(api)
    url = f"{V1}/auth/password"
    r = api.post(
        url, json={"current_password": "wrong", "new_password": NEW_PASSWORD}, headers=headers
    )
    assert r.status_code == 403  # not 401: the token is fine and the dashboard keeps it
    assert "current_password is wrong" in r.json()["detail"]
    for weak, why in (
        ("short", "at least 12 characters"),
        ("change-me", "at least 12 characters"),
        ("aaaaaaaaaaaaaaaa", "fewer than 5 different characters"),
        (ADMIN_EMAIL, "email address"),
        (ADMIN_PASSWORD, "is the current password"),
    ):
        body = {"current_password": ADMIN_PASSWORD, "new_password": weak}
        r = api.post(url, json=body, headers=headers)
        assert r.status_code == 422, (weak, r.text)
        assert why in r.text, (weak, r.text)
    assert api.get(f"{V1}/auth/me", headers=headers).status_code == 200  # nothing changed


def test_wrong_current_passwords_count_towards_the_lockout(api: TestClient) -> None:
    """A stolen token is no unthrottled way to guess the password."""
    headers = _login(api)
    body = {"current_password": "guess", "new_password": NEW_PASSWORD}
    codes = [
        api.post(f"{V1}/auth/password", json=body, headers=headers).status_code for _ in range(6)
    ]
    assert codes == [403] * 5 + [429]
    r = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
