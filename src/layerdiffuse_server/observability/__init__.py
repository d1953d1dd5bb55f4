"""What operators see: Prometheus metrics and structured logs carrying the request id."""

from .logs import configure_logging, request_id_context
from .metrics import Metrics

__all__ = ["Metrics", "configure_logging", "request_id_context"]
