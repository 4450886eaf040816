"""Jobs leave only after a successful commit; a failed commit sends nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.db import Organization


def test_jobs_are_sent_after_commit_and_dropped_when_it_fails(session: Session) -> None:
    sent = queue.RecordingEnqueuer()
    session.add(Organization(name="one"))
    queue.defer(session, "fedlora.open_round", "f1")
    assert sent.jobs == []  # nothing before the commit
    queue.commit_and_flush(session, sent)
    assert sent.jobs == [("fedlora.open_round", ["f1"])]

    session.add(Organization(name="one"))  # violates the unique name
    queue.defer(session, "fedlora.open_round", "f2")
    with pytest.raises(IntegrityError):
        queue.commit_and_flush(session, sent)
    session.rollback()
    assert sent.jobs == [("fedlora.open_round", ["f1"])]
    queue.commit_and_flush(session, sent)  # the dropped job does not leak into a later commit
    assert sent.names() == ["fedlora.open_round"]


def test_a_broker_failure_after_commit_does_not_undo_or_raise(session: Session) -> None:
    def broken(name: str, args: list[str]) -> None:
        raise ConnectionError("broker down")

    session.add(Organization(name="kept"))
    queue.defer(session, "fedlora.open_round", "f1")
    queue.commit_and_flush(session, broken)  # logged; the sweeper re-sends from the DB state
    assert session.scalar(sa.select(Organization.name).where(Organization.name == "kept"))
