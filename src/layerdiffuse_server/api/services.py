"""What the routes work with, built once per process and reached through ``request.app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from ..auth import authenticate
from ..events import RequestEvents
from ..files import BlobStore
from ..observability import Metrics
from ..settings import Settings
from ..signing import SigningKey
from ..store.contracts import ApiKey, Store
from ..webhooks.delivery import WebhookDeliverer
from ..worker import GenerationWorker

APP_ID = "fal-ai/layer-diffusion"


@dataclass
class Services:
    settings: Settings
    store: Store
    blobs: BlobStore
    signing_key: SigningKey
    metrics: Metrics
    events: RequestEvents = field(default_factory=RequestEvents)
    worker: GenerationWorker | None = None
    deliverer: WebhookDeliverer | None = None
    webhook_networks: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def request_finished(self, request_id: str) -> None:
        """A request completed (any way): count it, wake its waiters and the webhook deliverer."""
        record = self.store.requests.get(request_id)
        if record is not None and record.status_code is not None:
            self.metrics.observe_completed(record.status_code, record.error_type)
        self.events.publish(request_id)
        if self.deliverer is not None:
            self.deliverer.wake()


def get_services(request: Request) -> Services:
    return request.app.state.services


def current_key(
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's API key (``Authorization: Key <id>:<secret>``); 401 in fal's shape otherwise."""
    return authenticate(services.store.keys, authorization)


ServicesDep = Annotated[Services, Depends(get_services)]
KeyDep = Annotated[ApiKey, Depends(current_key)]
