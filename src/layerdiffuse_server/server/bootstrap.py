"""Building the service's parts from settings, for each role.

- ``serve`` (embedded): API + a worker in one process, SQLite and local files by default, the
  signing key created in the data directory;
- ``api``: the API alone, no worker and no torch; the signing key must come from configuration,
  so every node signs and verifies alike;
- ``worker``: see :mod:`.worker_node`; it shares :func:`open_core` with the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..clock import SYSTEM_CLOCK, Clock
from ..command_name import command
from ..errors import InvalidInputError, LayerDiffuseError
from ..files import BlobStore, open_blob_store
from ..lifecycle import Housekeeper, RequestEvents, RequestManager
from ..observability import Metrics
from ..outbound import parse_networks
from ..settings import Settings
from ..signing import SigningKeys
from ..store import Store, open_store
from ..webhooks.delivery import WebhookDeliverer

if TYPE_CHECKING:
    from ..api.services import Services
    from ..worker import Engine, GenerationWorker

Role = Literal["serve", "api", "worker"]


class ConfigurationError(LayerDiffuseError):
    """The settings do not describe a service that can run."""


@dataclass
class Core:
    """What every process of the service opens: the store, the file store, the request manager."""

    settings: Settings
    store: Store
    blobs: BlobStore
    manager: RequestManager
    metrics: Metrics

    def housekeeper(self) -> Housekeeper:
        return Housekeeper(self.manager, self.blobs, retention_hours=self.settings.retention_hours)

    def close(self) -> None:
        self.store.close()


def open_core(settings: Settings, *, store: Store | None = None, clock: Clock = SYSTEM_CLOCK) -> Core:
    if settings.database_url is None or settings.storage_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or open_store(settings.store_url)
    blobs = open_blob_store(settings.blob_url)
    metrics = Metrics(store)
    manager = RequestManager(
        store,
        max_queue_length=settings.max_queue_length,
        max_attempts=settings.max_attempts,
        lease_seconds=settings.lease_seconds,
        clock=clock,
        on_completed=lambda completion: metrics.observe_completed(completion.status_code, completion.error_type),
    )
    return Core(settings, store, blobs, manager, metrics)


def signing_keys(settings: Settings, role: Role) -> SigningKeys:
    if settings.signing_key_file is not None:
        return SigningKeys.from_files(settings.signing_key_file, settings.signing_previous_key_files)
    if role == "serve":
        return SigningKeys.load_or_create(settings.data_dir / "signing-key.pem")
    raise ConfigurationError(
        "an API node needs the signing key every node shares: set LAYERDIFFUSE_SIGNING_KEY_FILE "
        f"(make one with `{command('signing-key PATH')}`)"
    )


def build_worker(
    core: Core,
    load_engine: Callable[[], Engine],
    *,
    model_name: str,
    load_checkpoint: Callable[[str], Engine] | None = None,
) -> GenerationWorker:
    """The worker of a process: its engines read requests' LoRAs from its sources; ``load_checkpoint``
    loads one of the operator's checkpoints by name (none: requests naming one fail)."""
    from ..files import StoredFiles
    from ..loras.sources import LoraSources
    from ..worker import GenerationWorker

    settings = core.settings
    lora_files = LoraSources.from_settings(
        settings, StoredFiles(core.blobs, core.store.files, clock=core.manager.clock)
    )

    def connected(engine: Engine) -> Engine:
        """The engine, reading requests' LoRAs from this worker's sources (an engine without
        style LoRAs, such as a test's, has nothing to connect)."""
        connect = getattr(engine, "use_lora_files", None)
        if connect is not None:
            connect(lora_files)
        return engine

    def load_named(name: str) -> Engine:
        if load_checkpoint is None:
            raise InvalidInputError(f"this worker loads no checkpoints, so not {name!r}", field="model_name")
        return connected(load_checkpoint(name))

    return GenerationWorker(
        core.manager,
        core.blobs,
        lambda: connected(load_engine()),
        load_checkpoint=load_named if settings.checkpoints else None,
        max_loaded_models=settings.max_loaded_models,
        base_url=settings.files_url,
        model_name=model_name,
        metrics=core.metrics,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
        grace_seconds=settings.shutdown_grace_seconds,
        png_compression=settings.png_compression,
    )


def build_services(
    settings: Settings,
    load_engine: Callable[[], Engine] | None = None,
    *,
    model_name: str = "",
    load_checkpoint: Callable[[str], Engine] | None = None,
    store: Store | None = None,
    role: Literal["serve", "api"] = "serve",
    clock: Clock = SYSTEM_CLOCK,
) -> Services:
    """Everything ``create_app`` needs; with ``load_engine``, a worker runs in this process too.
    ``clock`` times leases, deadlines, retention and webhook retries (a test's fake one moves on demand)."""
    from ..api.services import Services

    core = open_core(settings, store=store, clock=clock)
    keys = signing_keys(settings, role)
    networks = parse_networks(settings.webhook_allowed_networks)
    services = Services(
        settings=settings,
        manager=core.manager,
        blobs=core.blobs,
        signing_keys=keys,
        metrics=core.metrics,
        housekeeper=core.housekeeper(),
        events=RequestEvents(core.store.notices),
        webhook_networks=networks,
    )
    services.deliverer = WebhookDeliverer(
        core.store,
        keys,
        allowed_networks=networks,
        max_attempts=settings.webhook_max_attempts,
        retry_seconds=settings.webhook_retry_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        clock=clock,
        on_attempt=lambda result: services.metrics.webhooks.labels(result).inc(),
    )
    if load_engine is not None:
        services.local_worker = build_worker(core, load_engine, model_name=model_name, load_checkpoint=load_checkpoint)
    return services
