"""What the routes work with, built once per process and reached through ``request.app.state.services``.

Nothing here imports torch: an API node runs on a host without it. In the embedded mode the
process also runs a worker, which the API only knows through :class:`LocalWorker`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from ..auth import authenticate
from ..files import BlobStore, StoredFiles
from ..files.image_inputs import ImageInputPolicy, needs_fetching, store_image_inputs
from ..lifecycle import Housekeeper, RequestEvents, RequestManager
from ..observability import Metrics
from ..outbound import IPNetwork
from ..settings import Settings
from ..signing import SigningKeys
from ..store.contracts import ApiKey, Store, WorkerState
from ..webhooks.delivery import WebhookDeliverer
from .admission_lanes import AdmissionLanes
from .body_budget import BodyBudget
from .draining import Draining


class LocalWorker(Protocol):
    """A worker in this process (``layerdiffuse serve``): started and stopped with the API."""

    worker_id: str
    model_name: str
    load_error: BaseException | None
    load_seconds: float | None

    @property
    def ready(self) -> bool: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def state(self) -> WorkerState: ...
    def start(self) -> None: ...
    def begin_stop(self) -> None: ...
    def stop(self, grace_seconds: float | None = None) -> None: ...


@dataclass
class Services:
    settings: Settings
    manager: RequestManager
    blobs: BlobStore
    signing_keys: SigningKeys
    metrics: Metrics
    housekeeper: Housekeeper
    events: RequestEvents
    deliverer: WebhookDeliverer | None = None
    local_worker: LocalWorker | None = None
    webhook_networks: list[IPNetwork] = field(default_factory=list)
    draining: Draining = field(default_factory=Draining)
    _admission_lanes: AdmissionLanes | None = None
    _body_budget: BodyBudget | None = None
    _files: StoredFiles | None = None

    @property
    def store(self) -> Store:
        return self.manager.store

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def files_url(self) -> str:
        """The base of stored files' URLs (``files_public_url``, else ``base_url``)."""
        return self.settings.files_url

    @property
    def files(self) -> StoredFiles:
        """The owner of stored files (uploads, image-input copies): every write and read goes through it."""
        if self._files is None:
            self._files = StoredFiles(self.blobs, self.store.files, clock=self.manager.clock)
        return self._files

    def discard_copies(self, file_ids: list[str]) -> None:
        """Blocking: delete the image-input copies of a request that was refused."""
        if file_ids:
            self.files.discard(file_ids)

    def admission_lanes(self) -> AdmissionLanes:
        """The threads that admit requests with image inputs, kept apart from the pool every other
        blocking call of the API uses: inline images in one lane, external fetches (per-key shares)
        in another (see :mod:`.admission_lanes`)."""
        if self._admission_lanes is None:
            self._admission_lanes = AdmissionLanes()
        return self._admission_lanes

    def needs_fetching(self, raw_input: dict[str, Any], fields: list[str]) -> bool:
        """Blocking (a catalog lookup): whether any image field names an external URL."""
        return needs_fetching(raw_input, fields, files=self.files)

    def body_budget(self) -> BodyBudget:
        """The bytes of submission bodies this process holds at once (``max_body_memory_bytes``)."""
        if self._body_budget is None:
            settings = self.settings
            self._body_budget = BodyBudget(settings.max_body_memory_bytes, settings.body_memory_wait_seconds)
        return self._body_budget

    def store_image_inputs(
        self,
        raw_input: dict[str, Any],
        fields: list[str],
        *,
        key_id: str,
        created: list[str] | None = None,
        fetch: bool = True,
    ) -> dict[str, Any]:
        """Blocking: fetch, check and store the image inputs (see files.image_inputs); the input then
        names this server's copies. They are kept as long as uploads are (``retention_hours``)."""
        hours = self.settings.retention_hours
        return store_image_inputs(
            raw_input,
            fields,
            files=self.files,
            base_url=self.files_url,
            key_id=key_id,
            policy=ImageInputPolicy.from_settings(self.settings),
            expires_at=self.manager.clock.time() + hours * 3600 if hours else None,
            created=created,
            fetch=fetch,
        )


def get_services(request: Request) -> Services:
    return request.app.state.services


#: Declared as the API's security scheme, so the docs page can "Authorize" and tools send the key.
api_key_header = APIKeyHeader(
    name="Authorization",
    scheme_name="FalKey",
    description="`Key <key id>:<secret>`, as fal's clients send `FAL_KEY`; the key alone (as the server printed "
    "it) is taken too",
    auto_error=False,
)


def current_key(
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Security(api_key_header)] = None,
) -> ApiKey:
    """The caller's API key (``Authorization: Key <id>:<secret>``); 401 in fal's shape otherwise."""
    return authenticate(services.store.keys, authorization)


ServicesDep = Annotated[Services, Depends(get_services)]
KeyDep = Annotated[ApiKey, Depends(current_key)]
