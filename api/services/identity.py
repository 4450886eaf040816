"""Admins, organizations, clients, API keys, join tokens and enrollment."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.config import Settings, password_weakness
from api.db import Admin, Client, JoinToken, Organization, utcnow
from api.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    PermissionDeniedError,
    ServiceBusyError,
)
from api.schemas.identity import (
    ClientCreate,
    ClientUpdate,
    JoinTokenCreate,
    OrganizationCreate,
    OrganizationUpdate,
)
from api.security import (
    PasswordGate,
    create_access_token,
    hash_password,
    hash_secret,
    new_api_key,
    new_join_token,
    secrets_match,
    verify_password,
)
from api.services import login_throttle
from api.services.common import audit, get_or_404
from fedlora_client.protocol import EnrollRequest, HardwareProfile

# A real argon2 hash to verify against when the email is unknown, so timing does not reveal it.
_DUMMY_HASH = hash_password("not-a-real-password")


def ensure_bootstrap_admin(*, session: Session, settings: Settings) -> None:
    """Create the configured admin if no admin exists yet (idempotent)."""
    email, password = settings.bootstrap_admin_email, settings.bootstrap_admin_password
    if not email or not password:
        return
    if session.scalar(sa.select(sa.func.count()).select_from(Admin)):
        return
    session.add(Admin(email=email.lower(), password_hash=hash_password(password)))
    try:
        session.commit()
    except IntegrityError:  # another process bootstrapped at the same moment
        session.rollback()


def _access_token(admin: Admin, settings: Settings) -> str:
    return create_access_token(
        admin_id=admin.id,
        version=admin.token_version,
        secret_key=settings.secret_key,
        minutes=settings.access_token_minutes,
    )


@contextmanager
def _hashing_slot(gate: PasswordGate) -> Iterator[None]:
    """Hold one of the process's hashing slots; 503 with Retry-After when none frees up."""
    with gate.slot() as ok:
        if not ok:
            raise ServiceBusyError(
                "the server is busy checking other logins: retry in a few seconds",
                retry_after=math.ceil(gate.wait_seconds) or 1,
            )
        yield


def _verify(gate: PasswordGate, password: str, password_hash: str) -> bool:
    with _hashing_slot(gate):
        return verify_password(password, password_hash)


def login(
    *,
    session: Session,
    settings: Settings,
    gate: PasswordGate,
    email: str,
    password: str,
    client_ip: str | None,
) -> str:
    """An admin token for the right email and password.

    Refused with 429 while the account or the caller's IP is locked out after repeated failures
    (:mod:`api.services.login_throttle`), and with 503 while this process already computes as
    many password hashes as ``password_hash_concurrency`` allows.
    """
    keys = login_throttle.keys_for(settings=settings, email=email, client_ip=client_ip)
    login_throttle.ensure_not_locked(session=session, keys=keys)
    admin = session.scalar(sa.select(Admin).where(Admin.email == email.lower()))
    session.commit()  # hold no connection while hashing
    ok = _verify(gate, password, admin.password_hash if admin else _DUMMY_HASH)
    if admin is None or not ok or not admin.is_active:
        login_throttle.record_failure(session=session, settings=settings, keys=keys)
        raise AuthenticationError("wrong email or password")
    login_throttle.record_success(session=session, keys=keys)
    return _access_token(admin, settings)


def logout(*, session: Session, admin: Admin) -> None:
    """Revoke every token of ``admin`` (this one and those on other devices)."""
    _bump_token_version(session, admin)
    audit(session=session, admin=admin, action="admin.logout", obj=admin)
    session.commit()


def change_password(
    *,
    session: Session,
    settings: Settings,
    gate: PasswordGate,
    admin: Admin,
    current_password: str,
    new_password: str,
    client_ip: str | None,
) -> str:
    """Set a new password, revoke every earlier token and return a fresh one.

    A wrong current password counts as a failed login (a stolen token is no way around the
    lockout) and is refused with 403, not 401: the token itself is still valid.
    """
    keys = login_throttle.keys_for(settings=settings, email=admin.email, client_ip=client_ip)
    login_throttle.ensure_not_locked(session=session, keys=keys)
    if not _verify(gate, current_password, admin.password_hash):
        login_throttle.record_failure(session=session, settings=settings, keys=keys)
        raise PermissionDeniedError("current_password is wrong: send the password you log in with")
    weakness = password_weakness(new_password, email=admin.email)
    if weakness:
        raise InvalidInputError(f"new_password {weakness}; choose a longer, less common one")
    if new_password == current_password:
        raise InvalidInputError("new_password is the current password; choose a different one")
    with _hashing_slot(gate):
        new_hash = hash_password(new_password)
    row = session.get(Admin, admin.id)
    if row is None:  # pragma: no cover - deleted between the token check and here
        raise AuthenticationError("invalid or expired admin token: log in again")
    row.password_hash = new_hash
    row.password_changed_at = utcnow()
    _bump_token_version(session, row)
    audit(session=session, admin=row, action="admin.change_password", obj=row)
    session.commit()
    session.refresh(row)
    return _access_token(row, settings)


def _bump_token_version(session: Session, admin: Admin) -> None:
    """``token_version + 1`` in SQL, so two concurrent bumps both count."""
    session.execute(
        sa.update(Admin)
        .where(Admin.id == admin.id)
        .values(token_version=Admin.token_version + 1)
        .execution_options(synchronize_session=False)
    )


def _commit_unique(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"{what} already exists; choose another name") from None


# ------------------------------------------------------------------ organizations


def create_organization(
    *, session: Session, admin: Admin, body: OrganizationCreate
) -> Organization:
    org = Organization(name=body.name, description=body.description)
    session.add(org)
    audit(session=session, admin=admin, action="organization.create", obj=org)
    _commit_unique(session, f"an organization named {body.name!r}")
    return org


def update_organization(
    *, session: Session, admin: Admin, org_id: uuid.UUID, body: OrganizationUpdate
) -> Organization:
    org = get_or_404(session=session, model=Organization, object_id=org_id, kind="organization")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    for key, value in changes.items():
        setattr(org, key, value)
    audit(session=session, admin=admin, action="organization.update", obj=org, details=changes)
    _commit_unique(session, f"an organization named {body.name!r}")
    return org


def delete_organization(*, session: Session, admin: Admin, org_id: uuid.UUID) -> None:
    org = get_or_404(session=session, model=Organization, object_id=org_id, kind="organization")
    clients = session.scalar(
        sa.select(sa.func.count()).select_from(Client).where(Client.organization_id == org.id)
    )
    if clients:
        # their updates, memberships and privacy ledger refer to them: never deleted with it
        raise ConflictError(
            f"organization {org.name!r} has {clients} client(s); an organization is deleted "
            "only without clients (their updates and privacy ledger refer to them). Revoke "
            "its clients to stop them taking part"
        )
    audit(session=session, admin=admin, action="organization.delete", obj=org)
    session.delete(org)
    session.commit()


# ------------------------------------------------------------------ clients


def create_client(*, session: Session, admin: Admin, body: ClientCreate) -> tuple[Client, str]:
    get_or_404(
        session=session, model=Organization, object_id=body.organization_id, kind="organization"
    )
    key = new_api_key()
    client = Client(
        organization_id=body.organization_id,
        name=body.name,
        api_key_hash=hash_secret(key),
        api_key_prefix=key[:12],
        hardware=HardwareProfile().model_dump(),
    )
    session.add(client)
    audit(session=session, admin=admin, action="client.create", obj=client)
    session.commit()
    return client, key


def update_client(
    *, session: Session, admin: Admin, client_id: uuid.UUID, body: ClientUpdate
) -> Client:
    client = get_or_404(session=session, model=Client, object_id=client_id, kind="client")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    for key, value in changes.items():
        setattr(client, key, value)
    audit(session=session, admin=admin, action="client.update", obj=client, details=changes)
    session.commit()
    return client


def revoke_client(*, session: Session, admin: Admin, client_id: uuid.UUID) -> Client:
    client = get_or_404(session=session, model=Client, object_id=client_id, kind="client")
    if client.revoked_at is None:
        client.revoked_at = utcnow()
        audit(session=session, admin=admin, action="client.revoke", obj=client)
        session.commit()
    return client


def rotate_client_key(
    *, session: Session, admin: Admin, client_id: uuid.UUID
) -> tuple[Client, str]:
    """A new key replaces the old one at once; a revoked client is re-activated by this."""
    client = get_or_404(session=session, model=Client, object_id=client_id, kind="client")
    key = new_api_key()
    client.api_key_hash = hash_secret(key)
    client.api_key_prefix = key[:12]
    client.key_rotated_at = utcnow()
    client.revoked_at = None
    audit(session=session, admin=admin, action="client.rotate_key", obj=client)
    session.commit()
    return client, key


def delete_client(*, session: Session, admin: Admin, client_id: uuid.UUID) -> None:
    client = get_or_404(session=session, model=Client, object_id=client_id, kind="client")
    audit(session=session, admin=admin, action="client.delete", obj=client)
    session.delete(client)
    session.commit()


def report_hardware(*, session: Session, client: Client, hardware: HardwareProfile) -> Client:
    client.hardware = hardware.model_dump()
    session.commit()
    return client


# ------------------------------------------------------------------ join tokens and enrollment


def create_join_token(
    *, session: Session, admin: Admin, body: JoinTokenCreate
) -> tuple[JoinToken, str]:
    get_or_404(
        session=session, model=Organization, object_id=body.organization_id, kind="organization"
    )
    token = new_join_token()
    row = JoinToken(
        organization_id=body.organization_id,
        token_hash=hash_secret(token),
        note=body.note,
        expires_at=utcnow() + timedelta(minutes=body.expires_in_minutes),
    )
    session.add(row)
    audit(session=session, admin=admin, action="join_token.create", obj=row)
    session.commit()
    return row, token


def delete_join_token(*, session: Session, admin: Admin, token_id: uuid.UUID) -> None:
    row = get_or_404(session=session, model=JoinToken, object_id=token_id, kind="join token")
    audit(session=session, admin=admin, action="join_token.delete", obj=row)
    session.delete(row)
    session.commit()


def enroll(*, session: Session, body: EnrollRequest) -> tuple[Client, str]:
    """Exchange a one-time join token for a new client and its API key.

    The token is claimed with a conditional UPDATE (``used_at IS NULL``), so two concurrent
    enrollments with one token create exactly one client.
    """
    digest = hash_secret(body.join_token)
    row = session.scalar(sa.select(JoinToken).where(JoinToken.token_hash == digest))
    invalid = "join token is invalid, expired or already used: ask your admin for a new one"
    if row is None or not secrets_match(body.join_token, row.token_hash):
        raise AuthenticationError(invalid)
    now = utcnow()
    key = new_api_key()
    client = Client(
        organization_id=row.organization_id,
        name=body.name,
        api_key_hash=hash_secret(key),
        api_key_prefix=key[:12],
        hardware=body.hardware.model_dump(),
        last_seen_at=now,
    )
    session.add(client)
    session.flush()
    claimed = session.execute(
        sa.update(JoinToken)
        .where(JoinToken.id == row.id, JoinToken.used_at.is_(None), JoinToken.expires_at > now)
        .values(used_at=now, used_by_client_id=client.id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise AuthenticationError(invalid)
    session.commit()
    return client, key
