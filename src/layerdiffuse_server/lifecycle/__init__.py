"""A request's life, from admission to retention, owned by :class:`RequestManager`."""

from .events import RequestEvents, wait_for_change
from .housekeeping import Housekeeper
from .manager import RequestManager, Submission

__all__ = ["Housekeeper", "RequestEvents", "RequestManager", "Submission", "wait_for_change"]
