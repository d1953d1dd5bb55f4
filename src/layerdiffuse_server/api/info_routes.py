"""What a client needs to know about this server before it sends anything: the model that runs and
what it knows, how large an image may be sent inline, and the CA that the HTTPS listener's
certificate comes from. The playground reads it for its placeholder, its model line and its code
snippets. Not part of fal's protocol; no API key (nothing in it is secret)."""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..endpoints import APP_ID
from ..model_profiles import profile_of
from ..store.contracts import WorkerState
from .bodies import inline_image_limit
from .services import Services, ServicesDep

router = APIRouter(tags=["server"])


class ModelInfo(BaseModel):
    name: str = Field(description="The model preset that runs the requests (demo, sdxl, tiny, sdxl-random)")
    example_prompt: str = Field(description="A prompt this model draws well")
    vocabulary: dict[str, list[str]] | None = Field(
        description="For a model trained on a closed set of captions (demo): the words it knows, by kind "
        "(shapes, colours, styles); other words of a prompt are ignored (the output's ignored_prompt_words). "
        "null: an open vocabulary"
    )


class ServerInfo(BaseModel):
    app_id: str = Field(description="The fal app id the endpoints live under")
    model: ModelInfo
    checkpoints: list[str] = Field(
        description="The SDXL checkpoints a request may pick with model_name (the operator's names); "
        "empty: only the model itself"
    )
    max_inline_image_bytes: int = Field(
        description="The largest image an input may carry inline as a data: URI (fal_client.encode_file); "
        "larger ones are uploaded first"
    )
    https_port: int | None = Field(description="The HTTPS listener's port (fal_client needs https); null: none")
    ca_file: str | None = Field(
        description="The local CA the HTTPS certificate was issued by, on the server's disk (SSL_CERT_FILE for "
        "Python clients); null when the operator brought their own certificate or HTTPS is off"
    )


#: Workers in these states run (or will run) requests; a silent one (crashed) does not.
_WORKING = {state.value for state in (WorkerState.LOADING, WorkerState.READY, WorkerState.BUSY)}


async def running_model(services: Services) -> str:
    """This process's worker's model; on an API node, the model of the workers that reported last
    (they share the queue), else the configured one."""
    if services.local_worker is not None:
        return services.local_worker.model_name
    workers = await anyio.to_thread.run_sync(services.store.workers.all)
    now = time.time()
    working = [worker for worker in workers if worker.observed_state(now) in _WORKING]
    if not working:
        return services.settings.model
    return max(working, key=lambda worker: worker.heartbeat_at).model


@router.get(
    "/api/info", summary="The model that runs and what it knows, and this server's limits", response_model=ServerInfo
)
async def server_info(services: ServicesDep) -> ServerInfo:
    settings = services.settings
    profile = profile_of(await running_model(services))
    return ServerInfo(
        app_id=APP_ID,
        model=ModelInfo(
            name=profile.name,
            example_prompt=profile.example_prompt,
            vocabulary=profile.vocabulary_groups if profile.vocabulary is not None else None,
        ),
        checkpoints=sorted(settings.checkpoints),
        max_inline_image_bytes=inline_image_limit(settings.max_upload_bytes),
        https_port=settings.tls_port or None,
        ca_file=str(settings.local_ca_file) if settings.local_ca_file else None,
    )
