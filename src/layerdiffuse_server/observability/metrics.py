"""Prometheus metrics, one registry per application.

Counters and histograms are observed where things happen (the worker, the routes). Queue depth,
request states and workers are read from the store at scrape time instead, so they are right even
when several processes share one database; GPU memory is read from torch at scrape time too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..store.contracts import Priority, RequestRecord, Store, WorkerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Queue waits range from nothing to many minutes; inference and decode from tens of
# milliseconds (tiny model on a GPU) to minutes (full model on a CPU).
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300)


def outcome(status_code: int, error_type: str | None) -> str:
    """``success``, ``cancelled``, or the fal error type of a failure."""
    if status_code == 200:
        return "success"
    if error_type == "client_cancelled":
        return "cancelled"
    return error_type or "error"


class Metrics:
    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "layerdiffuse_requests_submitted",
            "Requests accepted, by how they were submitted (queue or sync run)",
            ["mode"],
            registry=self.registry,
        )
        self.completed = Counter(
            "layerdiffuse_requests_completed",
            "Requests completed, by outcome (success, cancelled, or the error type) and HTTP status",
            ["outcome", "status_code"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "layerdiffuse_queue_wait_seconds",
            "Time from submission to a worker starting the request",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "layerdiffuse_inference_seconds",
            "Engine time per request (a batch's time for each of its requests)",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.denoise = Histogram(
            "layerdiffuse_denoise_seconds",
            "Denoising time per request (all steps)",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.decode = Histogram(
            "layerdiffuse_decode_seconds",
            "Transparent decode time per request (VAE + transparent decoder passes)",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "layerdiffuse_webhook_deliveries",
            "Webhook delivery attempts, by result (delivered, retrying, dropped)",
            ["result"],
            registry=self.registry,
        )
        self.model_load = Gauge(
            "layerdiffuse_model_load_seconds", "How long this process took to load the model", registry=self.registry
        )
        if store is not None:
            self.registry.register(StoreCollector(store))
        self.registry.register(CudaMemoryCollector())

    def observe_started(self, record: RequestRecord) -> None:
        if record.started_at is not None:
            self.queue_wait.observe(max(0.0, record.started_at - record.created_at))

    def observe_generation(self, seconds: float, timings: dict[str, float]) -> None:
        self.inference.observe(seconds)
        if "denoising" in timings:
            self.denoise.observe(timings["denoising"])
        if "decoding" in timings:
            self.decode.observe(timings["decoding"])

    def observe_completed(self, status_code: int, error_type: str | None) -> None:
        self.completed.labels(outcome(status_code, error_type), str(status_code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Queue depth by priority, requests running, and workers by state, read from the store."""

    def __init__(self, store: Store, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "layerdiffuse_queue_depth", "Requests waiting in the queue, by priority", labels=["priority"]
        )
        queued = self.store.requests.queue_depth()
        for priority in Priority:
            depth.add_metric([priority.name], queued.get(priority, 0))
        yield depth
        running = GaugeMetricFamily("layerdiffuse_requests_running", "Requests a worker is running now")
        running.add_metric([], len(self.store.requests.running()))
        yield running
        workers = GaugeMetricFamily(
            "layerdiffuse_workers", "Workers by state (silent: no heartbeat for a minute)", labels=["state"]
        )
        counts = dict.fromkeys([*(state.value for state in WorkerState), "silent"], 0)
        now = self.clock()
        for worker in self.store.workers.all():
            counts[worker.observed_state(now)] += 1
        for state, count in counts.items():
            workers.add_metric([state], count)
        yield workers


class CudaMemoryCollector(Collector):
    """GPU memory of this process, only when it has already initialised CUDA (never imports torch)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        families = {
            "allocated": (
                "layerdiffuse_gpu_memory_allocated_bytes",
                "Memory held by tensors",
                torch.cuda.memory_allocated,
            ),
            "reserved": (
                "layerdiffuse_gpu_memory_reserved_bytes",
                "Memory held by the caching allocator",
                torch.cuda.memory_reserved,
            ),
            "peak": (
                "layerdiffuse_gpu_memory_peak_allocated_bytes",
                "Peak tensor memory since start",
                torch.cuda.max_memory_allocated,
            ),
        }
        for name, documentation, read in families.values():
            family = GaugeMetricFamily(name, documentation, labels=["device"])
            for index in range(torch.cuda.device_count()):
                family.add_metric([f"cuda:{index}"], read(index))
            yield family
