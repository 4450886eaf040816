"""The Celery application, configured from the same settings as the API.

Torch-free on purpose: the API imports this module to enqueue jobs with ``send_task`` by name.
Production uses Redis; the embedded default is kombu's SQLAlchemy transport on a SQLite file,
which needs no server process and is served by a real worker process.
"""

from __future__ import annotations

from celery import Celery

from api.config import Settings, get_settings
from worker import heartbeat, logs

OPEN_ROUND = "fedlora.open_round"
AGGREGATE_ROUND = "fedlora.aggregate_round"
SWEEP = "fedlora.sweep"


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded broker's file lives here
    broker = settings.resolved_broker_url
    app = Celery("fedlora", broker=broker, include=["worker.tasks"])
    queue = settings.aggregation_queue
    transport_options: dict[str, object] = {}
    if broker.startswith(("redis://", "rediss://")):
        # Longer than the longest job, so a slow job's message is not re-delivered mid-run.
        transport_options["visibility_timeout"] = settings.job_time_limit + 600
    # kombu's SQLAlchemy transport hands its options to create_engine and has no visibility
    # timeout: a message taken by a worker that dies is not re-delivered. That is safe here
    # because the database is the source of truth: the sweeper re-enqueues any round whose
    # aggregation claim expired, and publishing is conditional.
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_time_limit,
        broker_transport_options=transport_options,
        task_default_queue=queue,
        task_routes={
            OPEN_ROUND: {"queue": queue},
            AGGREGATE_ROUND: {"queue": queue},
            SWEEP: {"queue": queue},
        },
        beat_schedule={
            "sweep-deadlines": {"task": SWEEP, "schedule": settings.sweep_interval_seconds}
        },
        # Beat keeps its schedule state in a local file: under data_dir, not the working dir.
        beat_schedule_filename=str(settings.data_dir.resolve() / "celerybeat-schedule"),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return app


app = create_celery()
heartbeat.install()  # every worker and scheduler process reports to the database
logs.install(SWEEP)  # an idle deadline sweep logs at DEBUG, not three INFO lines a run
