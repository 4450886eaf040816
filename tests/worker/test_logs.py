"""The worker log: idle sweeps at DEBUG, sweeps that did something and other tasks at INFO."""

from __future__ import annotations

import logging

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

import worker.celery_app  # noqa: F401 - installs the filter, as every worker process does
from worker.celery_app import AGGREGATE_ROUND, SWEEP

IDLE = {"leases_reoffered": 0, "leases_dropped": 0, "rounds_failed": 0}
BUSY = {"leases_reoffered": 1, "leases_dropped": 0, "rounds_failed": 0}


def _worker_lines(name: str, result: object) -> None:
    """What Celery logs for one task run, with its own format strings and loggers."""
    ctx = {"id": "t1", "name": name, "args": "()", "kwargs": "{}", "eta": None}
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, ctx)
    done = {"id": "t1", "name": name, "return_value": repr(result), "runtime": 0.01}
    logging.getLogger("celery.app.trace").info(LOG_SUCCESS, {**done, "args": "()", "kwargs": ""})


def test_idle_sweeps_leave_no_info_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("celery.beat").info(
        "Scheduler: Sending due task %s (%s)", "sweep-deadlines", SWEEP
    )
    _worker_lines(SWEEP, IDLE)
    assert caplog.records == []
    _worker_lines(SWEEP, BUSY)  # a sweep that re-offered a lease is worth a line
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"Task {SWEEP}[t1] succeeded in 0.01s: {BUSY!r}"
    ]
    caplog.clear()
    _worker_lines(AGGREGATE_ROUND, True)  # every other task is logged as before
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]


def test_idle_sweeps_show_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _worker_lines(SWEEP, IDLE)
    assert [(r.levelname, r.getMessage()[:26]) for r in caplog.records] == [
        ("DEBUG", f"Task {SWEEP}[t1] received"[:26]),
        ("DEBUG", f"Task {SWEEP}[t1] succeeded"[:26]),
    ]
