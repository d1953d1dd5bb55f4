"""What a client needs to know about this server before it sends anything: the model that runs and
what it knows, how large an image may be sent inline, and the CA that the HTTPS listener's
certificate comes from. The playground reads it for its placeholder, its model line and its code
snippets. Not part of fal's protocol; no API key (nothing in it is secret)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..endpoints import APP_ID
from ..model_profiles import profile_of
from .bodies import inline_image_limit
from .services import ServicesDep

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
    max_inline_image_bytes: int = Field(
        description="The largest image an input may carry inline as a data: URI (fal_client.encode_file); "
        "larger ones are uploaded first"
    )
    https_port: int | None = Field(description="The HTTPS listener's port (fal_client needs https); null: none")
    ca_file: str | None = Field(
        description="The local CA the HTTPS certificate was issued by, on the server's disk (SSL_CERT_FILE for "
        "Python clients); null when the operator brought their own certificate or HTTPS is off"
    )


@router.get(
    "/api/info", summary="The model that runs and what it knows, and this server's limits", response_model=ServerInfo
)
async def server_info(services: ServicesDep) -> ServerInfo:
    settings = services.settings
    worker = services.local_worker
    profile = profile_of(worker.model_name if worker is not None else settings.model)
    return ServerInfo(
        app_id=APP_ID,
        model=ModelInfo(
            name=profile.name,
            example_prompt=profile.example_prompt,
            vocabulary=profile.vocabulary_groups if profile.vocabulary is not None else None,
        ),
        max_inline_image_bytes=inline_image_limit(settings.max_upload_bytes),
        https_port=settings.tls_port or None,
        ca_file=str(settings.local_ca_file) if settings.local_ca_file else None,
    )
