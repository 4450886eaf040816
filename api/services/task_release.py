"""Giving a task back before its upload: by its client (it cannot train) or by an admin.

A released task is no longer outstanding, so its round does not wait for it: the round moves
on at once through :func:`api.services.rounds.maybe_close_round` (enough updates and nothing
else outstanding: aggregating; too few and nothing outstanding: failed, and a new round is
requested). Only a pending or leased task can be released; the change is a conditional
``UPDATE ... WHERE status IN (pending, leased)``, so a release racing an upload or the round's
close changes nothing and answers 409.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api import queue
from api.db import Admin, Client, Task, TaskStatus, utcnow
from api.errors import ConflictError, NotFoundError
from api.services.common import audit
from api.services.round_steps import OUTSTANDING, rowcount
from api.services.rounds import maybe_close_round

Releaser = Literal["client", "admin"]


def release_task(
    *,
    session: Session,
    task_id: uuid.UUID,
    reason: str,
    by: Releaser,
    client: Client | None = None,
    admin: Admin | None = None,
    enqueue: queue.Enqueuer | None = None,
    now: datetime | None = None,
) -> Task:
    """Release a pending or leased task with ``reason``; commits, then lets the round move on.

    With ``client`` given, only that client's own task can be released (anyone else's is
    "not found"). Raises :class:`ConflictError` when the task has already been uploaded,
    dropped or released.
    """
    now = now or utcnow()
    task = session.get(Task, task_id)
    if task is None or (client is not None and task.client_id != client.id):
        raise NotFoundError.of("task", task_id)
    round_id = task.round_id
    res = session.execute(
        sa.update(Task)
        .where(Task.id == task_id, Task.status.in_(OUTSTANDING))
        .values(
            status=TaskStatus.RELEASED,
            lease_owner=None,
            lease_expires_at=None,
            released_at=now,
            released_by=by,
            release_reason=reason[:1024],
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        session.rollback()
        current = session.get_one(Task, task_id, populate_existing=True)
        raise ConflictError(
            f"task {task_id} is {current.status}: only a pending or leased task can be released"
        )
    if admin is not None:
        audit(session=session, admin=admin, action="task.release", obj=task,
              details={"reason": reason[:1024]})  # fmt: skip
    session.commit()
    maybe_close_round(session=session, round_id=round_id, now=now, enqueue=enqueue)
    return session.get_one(Task, task_id, populate_existing=True)
