"""fedlora aggregation engine: Celery tasks and the heterogeneous-rank strategies (torch)."""
