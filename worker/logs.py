"""Keep the worker's log about work: an idle deadline sweep logs at DEBUG, not INFO.

The scheduler enqueues the sweep every few seconds, and Celery logs three INFO lines per run
(beat's "Sending due task", the worker's "received" and "succeeded"), which made almost the
whole worker log. :class:`QuietSweeps` demotes those lines to DEBUG, except the "succeeded"
line of a sweep that did something (re-offered a lease, failed a round, re-enqueued a job...),
which stays at INFO with its counts. Celery offers no per-task log level, so this is a logging
filter on the three Celery loggers that write those lines; every other record passes untouched.
"""

from __future__ import annotations

import ast
import logging
from typing import Any

CELERY_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


def _did_work(return_value: Any) -> bool:
    """Whether a sweep's logged result (the repr of its counts) has a non-zero count."""
    try:
        counts = ast.literal_eval(str(return_value))
    except (ValueError, SyntaxError):
        return True  # not the counts we know: keep the line
    return not isinstance(counts, dict) or any(counts.values())


class QuietSweeps(logging.Filter):
    def __init__(self, task_name: str) -> None:
        super().__init__()
        self.task_name = task_name

    def _is_idle_sweep(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict):  # worker: "Task %(name)s[%(id)s] received / succeeded"
            if args.get("name") != self.task_name:
                return False
            return "return_value" not in args or not _did_work(args["return_value"])
        # beat: "Scheduler: Sending due task %s (%s)" % (entry name, task name)
        return isinstance(args, tuple) and self.task_name in args[1:2]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._is_idle_sweep(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install(task_name: str) -> None:
    """Add the filter (once) to the loggers that write the sweep's routine lines."""
    for name in CELERY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietSweeps) for f in logger.filters):
            logger.addFilter(QuietSweeps(task_name))
