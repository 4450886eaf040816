"""The logic routes (and the worker) call: keyword-only functions ``f(*, session, ...)``."""
