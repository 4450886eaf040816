"""fedlora aggregation engine: Celery tasks and the heterogeneous-rank strategies (torch)."""

import os

# Back torch's large CPU buffers with transparent huge pages (PyTorch reads this once, at its
# first allocation, so it is set before anything under worker/ imports torch). Aggregation
# writes fresh multi-GB stacks and states every round; with 4 KiB pages their first touch
# costs a page fault per page. Measured on the 2-core development machine: filling a fresh
# 1 GiB buffer ran at 2.5-2.8 GB/s with 4 KiB pages and 8.0-8.4 GB/s with huge pages (an
# already-touched buffer: 11-13 GB/s). Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
