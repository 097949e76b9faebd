"""Prometheus metrics for any adapter: give ``ServerOptions(metrics=Metrics())`` and serve ``Metrics.registry``.

Needs the ``metrics`` extra (prometheus-client); see docs/operating.md.
"""

from ._metrics import HOOKS, MECHANISMS, REPLY_CLASSES, SESSION_REFUSALS, VERBS, Metrics, register_gauge_callback

__all__ = ["HOOKS", "MECHANISMS", "REPLY_CLASSES", "SESSION_REFUSALS", "VERBS", "Metrics", "register_gauge_callback"]
