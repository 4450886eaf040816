"""Failed-login throttling per account and per client IP, kept in the database.

The state lives in the ``login_throttle`` table, not in process memory, so every API process
(``fedlora serve --workers N``, several containers) counts the same failures, on SQLite as on
Postgres. Each key counts failures in a fixed window (``login_failure_window_seconds``); the
failure that reaches the limit locks the key for ``login_lockout_seconds``. While either the
account or the caller's IP is locked, every login for it, even with the right password, is
answered 429 with ``Retry-After``: a guesser learns nothing from a locked account.

Counting is one conditional ``UPDATE`` per key (``failures + 1``, or 1 when the window has
passed), so concurrent failures from several processes are all counted.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import LoginThrottle, utcnow
from api.errors import TooManyRequestsError


@dataclass(frozen=True)
class ThrottleKey:
    """One thing failures are counted against: an account (by email) or a client IP."""

    kind: str  # "account" | "ip"
    value: str
    limit: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.kind}:{self.value}".encode()).hexdigest()


def keys_for(*, settings: Settings, email: str, client_ip: str | None) -> list[ThrottleKey]:
    keys = [ThrottleKey("account", email.strip().lower(), settings.login_max_failures)]
    if client_ip:
        keys.append(ThrottleKey("ip", client_ip, settings.login_ip_max_failures))
    return keys


def ensure_not_locked(*, session: Session, keys: list[ThrottleKey]) -> None:
    """Raise 429 (with the seconds to wait) if any key is locked now."""
    now = utcnow()
    rows = session.execute(
        sa.select(LoginThrottle.key, LoginThrottle.locked_until).where(
            LoginThrottle.key.in_([k.digest for k in keys]),
            LoginThrottle.locked_until > now,
        )
    ).all()
    session.commit()  # a read: end the transaction before the slow password hash
    if not rows:
        return
    by_digest = {k.digest: k for k in keys}
    key, until = max(((by_digest[r.key], r.locked_until) for r in rows), key=lambda kv: kv[1])
    wait = math.ceil((until - now).total_seconds())
    what = "this account" if key.kind == "account" else "your address"
    raise TooManyRequestsError(
        f"too many failed logins for {what}: try again in {wait} seconds "
        f"(after {until.strftime('%Y-%m-%d %H:%M:%S')} UTC)",
        retry_after=wait,
    )


def record_failure(*, session: Session, settings: Settings, keys: list[ThrottleKey]) -> None:
    """Count one failed login against every key; lock the keys that reach their limit."""
    now = utcnow()
    window_start = now - timedelta(seconds=settings.login_failure_window_seconds)
    for key in keys:
        failures = _bump(session, key.digest, now, window_start)
        if failures >= key.limit:
            session.execute(
                sa.update(LoginThrottle)
                .where(LoginThrottle.key == key.digest)
                .values(
                    failures=0,
                    window_started_at=now,
                    locked_until=now + timedelta(seconds=settings.login_lockout_seconds),
                )
            )
    # forget keys whose window and lockout are both over (bounded table, no sweeper needed)
    session.execute(
        sa.delete(LoginThrottle).where(
            LoginThrottle.window_started_at < window_start,
            sa.or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now),
        )
    )
    session.commit()


def record_success(*, session: Session, keys: list[ThrottleKey]) -> None:
    """A successful login clears its account's count (an IP's count runs out with its window,
    so one valid account cannot be used to keep guessing at others)."""
    accounts = [k.digest for k in keys if k.kind == "account"]
    unlocked = sa.or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until <= utcnow())
    session.execute(sa.delete(LoginThrottle).where(LoginThrottle.key.in_(accounts), unlocked))
    session.commit()


def _bump(session: Session, digest: str, now: datetime, window_start: datetime) -> int:
    """``failures + 1`` for the key (1 if its window has passed); the new count."""
    expired = LoginThrottle.window_started_at < window_start
    update = (
        sa.update(LoginThrottle)
        .where(LoginThrottle.key == digest)
        .values(
            failures=sa.case((expired, 1), else_=LoginThrottle.failures + 1),
            window_started_at=sa.case((expired, now), else_=LoginThrottle.window_started_at),
        )
        .returning(LoginThrottle.failures)
    )
    for _ in range(2):
        count = session.scalar(update)
        if count is not None:
            return int(count)
        try:
            with session.begin_nested():
                session.add(LoginThrottle(key=digest, failures=1, window_started_at=now))
            return 1
        except IntegrityError:  # another process inserted it first: count on its row
            continue
    raise RuntimeError("login throttle row vanished twice")  # pragma: no cover
