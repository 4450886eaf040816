"""A real Celery worker whose aggregation stalls before it stores its result, so a test can
kill it mid-job. It signals the stall by creating the file named by ``FEDLORA_TEST_MARKER``.
Production code has no such hook: the stall is patched in here, in the test's own process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from worker import jobs


def _stalling(original: Any) -> Any:
    def store_result(*args: Any, **kwargs: Any) -> Any:
        Path(os.environ["FEDLORA_TEST_MARKER"]).touch()
        time.sleep(600)  # the test kills this process long before this returns
        return original(*args, **kwargs)

    return store_result


if __name__ == "__main__":
    jobs.store_result = _stalling(jobs.store_result)  # type: ignore[assignment]
    from fedlora.cli import app

    app(["worker", "--concurrency", "1"])
