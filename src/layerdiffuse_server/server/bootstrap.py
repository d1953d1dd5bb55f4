"""Building the embedded service from settings: store, files, signing key, worker, webhook deliverer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.services import Services
from ..auth import IssuedKey, issue_key
from ..files import LocalBlobStore
from ..observability import Metrics
from ..settings import Settings
from ..signing import SigningKey
from ..store import Store, open_store
from ..webhooks.delivery import WebhookDeliverer
from ..webhooks.targets import parse_networks
from ..worker import Engine, GenerationWorker


@dataclass(frozen=True)
class EngineOptions:
    """How to load the model: a preset plus optional file overrides, as ``layerdiffuse generate`` takes them."""

    model: str
    base: str | None = None
    layer_weights: str | None = None
    decoder: str | None = None
    decoder_passes: int = 8
    memory_mode: str = "default"
    vae_tiling: bool = False
    channels_last: bool = False
    compile: bool = False
    warmup: bool | None = None  # None: on accelerators, where the first call is slow, not on a CPU
    extra: dict[str, Any] = field(default_factory=dict)

    def loader(self, settings: Settings) -> Callable[[], Engine]:
        def load() -> Engine:
            from ..engine.acceleration import RuntimeOptions, warm_up
            from ..engine.pipeline import TransparentSDXLPipeline

            runtime = RuntimeOptions(
                memory_mode=self.memory_mode,  # type: ignore[arg-type]
                vae_tiling=self.vae_tiling,
                channels_last=self.channels_last,
                compile=self.compile,
            )
            pipeline = TransparentSDXLPipeline.from_preset(
                self.model,
                settings=settings,
                device=settings.device,
                dtype=settings.dtype,
                base=self.base,
                layer_weights=self.layer_weights,
                decoder=self.decoder,
                decoder_passes=self.decoder_passes,
                runtime=runtime,
                **self.extra,
            )
            if self.warmup if self.warmup is not None else pipeline.device.type != "cpu":
                warm_up(pipeline)
            return pipeline

        return load


def ensure_first_key(store: Store) -> IssuedKey | None:
    """On a server with no usable key, create an admin key (shown once); None when keys exist."""
    if store.keys.count_active():
        return None
    return issue_key(store.keys, "admin (created on first start)", admin=True)


def build_services(
    settings: Settings,
    load_engine: Callable[[], Engine] | None,
    *,
    model_name: str,
    store: Store | None = None,
) -> Services:
    """Everything ``create_app`` needs; ``load_engine`` None builds an API without a worker (for tools)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or open_store(settings.store_url)
    services = Services(
        settings=settings,
        store=store,
        blobs=LocalBlobStore(settings.data_dir / "files"),
        signing_key=SigningKey.load_or_create(settings.data_dir / "signing-key.pem"),
        metrics=Metrics(store),
        webhook_networks=parse_networks(settings.webhook_allowed_networks),
    )
    services.deliverer = WebhookDeliverer(
        store,
        services.signing_key,
        allowed_networks=services.webhook_networks,
        max_attempts=settings.webhook_max_attempts,
        retry_seconds=settings.webhook_retry_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        on_attempt=lambda result: services.metrics.webhooks.labels(result).inc(),
    )
    if load_engine is not None:
        services.worker = GenerationWorker(
            store,
            services.blobs,
            load_engine,
            events=services.events,
            base_url=settings.base_url,
            model_name=model_name,
            max_attempts=settings.max_attempts,
            on_completed=services.request_finished,
            metrics=services.metrics,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
        )
    return services
