"""Log records of the SDK's libraries that are expected and say nothing a user can act on.

dp-accounting's RDP accountant warns (through absl) "_compute_log_a_frac failed to converge ...
Excluding this order from the epsilon computation" for each fractional Rényi order whose series
does not converge. At the noise levels DP-SGD calibrates to (sigma near 0.5) that is most
fractional orders, dozens of lines per task. Excluding an order is the accountant's documented
behaviour and keeps epsilon a valid upper bound (the minimum over the remaining orders), so
:func:`quiet_dp_accounting` drops exactly that record; every other absl record passes.
"""

from __future__ import annotations

import logging

_NOT_CONVERGED = "_compute_log_a_frac failed to converge"


class _DropNotConverged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOT_CONVERGED)


def quiet_dp_accounting() -> None:
    """Drop the RDP accountant's per-order convergence warnings (idempotent)."""
    import dp_accounting.rdp  # noqa: F401 - absl creates its own "absl" logger class first

    logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropNotConverged) for f in logger.filters):
        logger.addFilter(_DropNotConverged())
