"""Celery tasks: thin wrappers that take IDs and call the jobs in ``worker/jobs.py``.

Each task builds (once per process) a :class:`~worker.jobs.Runtime` from the same settings as
the API. Tasks are idempotent: the jobs re-check state in the database and publish with
conditional updates, so a re-delivered or duplicated message is a no-op.
"""

from __future__ import annotations

from functools import lru_cache

from api.config import get_settings
from worker import jobs
from worker.celery_app import AGGREGATE_ROUND, OPEN_ROUND, SWEEP, app


@lru_cache(maxsize=1)
def runtime() -> jobs.Runtime:
    return jobs.Runtime.from_settings(get_settings())


@app.task(name=OPEN_ROUND)  # type: ignore[untyped-decorator]
def open_round(federation_id: str) -> str | None:
    return jobs.open_round(runtime(), federation_id)


@app.task(name=AGGREGATE_ROUND, bind=True)  # type: ignore[untyped-decorator]
def aggregate_round(self: object, round_id: str) -> bool:
    request_id = getattr(getattr(self, "request", None), "id", None)
    return jobs.aggregate_round(runtime(), round_id, worker_id=f"celery-{request_id}")


@app.task(name=SWEEP)  # type: ignore[untyped-decorator]
def sweep() -> dict[str, int]:
    result = jobs.sweep(runtime())
    return {
        "leases_reoffered": result.leases_reoffered,
        "leases_dropped": result.leases_dropped,
        "rounds_aggregating": len(result.rounds_aggregating),
        "rounds_failed": len(result.rounds_failed),
        "aggregations_reenqueued": len(result.aggregations_reenqueued),
        "opens_reenqueued": len(result.opens_reenqueued),
    }
