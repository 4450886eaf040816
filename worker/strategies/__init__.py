"""Aggregation strategies, one module per method, behind the protocol in ``base.py``."""
