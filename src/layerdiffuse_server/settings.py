"""Settings, read from the environment (``LAYERDIFFUSE_*``) once and passed down explicitly."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .engine_choices import (
    DEFAULT_PNG_COMPRESSION,
    DEVICE_PATTERN,
    DEVICES,
    DecoderPasses,
    Dtype,
    MemoryMode,
    PngCompression,
    Preset,
)

#: What a checkpoint may be named (a request's ``model_name``): short, and safe in logs and URLs.
CHECKPOINT_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


#: The sides a warm-up size may have: those of a request (64 to 2048), in steps of 8.
WARMUP_SIDES = range(64, 2049, 8)


def _warmup_size(value: str) -> str:
    """``WxH`` with each side in :data:`WARMUP_SIDES`, written back as ``WxH``."""
    width, cross, height = value.strip().lower().partition("x")
    if not (cross and width.isdigit() and height.isdigit()):
        raise ValueError(f"a warm-up size is written WIDTHxHEIGHT, e.g. 1024x1024, got {value!r}")
    if int(width) not in WARMUP_SIDES or int(height) not in WARMUP_SIDES:
        raise ValueError(f"each side of a warm-up size is a multiple of 8 from 64 to 2048, got {value!r}")
    return f"{int(width)}x{int(height)}"


WarmupSize = Annotated[str, AfterValidator(_warmup_size)]


def _default_home() -> Path:
    return Path.home() / ".cache" / "layerdiffuse"


def _default_data_dir() -> Path:
    # Requests, outputs and keys are data, not cache: XDG's data directory, not ~/.cache.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "layerdiffuse"


class Settings(BaseSettings):
    """Every knob of every role, each one settable as ``LAYERDIFFUSE_<NAME>``; the commands' flags
    (named like the fields) cover those each role is most often started with.

    A value that can never work (an unknown preset, a dtype by another name) is refused when the
    settings are read, which every command does first. The Hugging Face cache (``HF_HOME``,
    ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is the hub library's own business; this only holds ours.
    """

    model_config = SettingsConfigDict(env_prefix="LAYERDIFFUSE_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home,
        description="Directory for generated preset weights (tiny, sdxl-random) and other local state.",
    )
    # -- the engine (``generate``, ``serve``, ``worker``) --------------------------------------------
    model: Preset = Field(
        default="sdxl",
        description="Model preset: sdxl (real weights), demo (small trained model, offline, 128²), "
        "tiny (small random model, tests) or sdxl-random.",
    )
    base: str | None = Field(
        default=None, description="Another SDXL base: hub repo id, diffusers folder or .safetensors file."
    )
    layer_weights: str | None = Field(
        default=None,
        description="Other LayerDiffuse transparency weights: attention (either format) or layer_xl_transparent_conv.",
    )
    decoder: str | None = Field(default=None, description="Another transparent VAE decoder file.")
    checkpoints: dict[str, str] = Field(
        default_factory=dict,
        description="SDXL checkpoints a request may pick by name (its model_name): name → hub repo id, diffusers "
        "folder or .safetensors file, run under the model's LayerDiffuse weights (a request without model_name "
        "gets the model itself). A JSON object, or NAME=SOURCE per flag.",
    )
    max_loaded_models: int = Field(
        default=1,
        ge=1,
        description="Models a worker keeps loaded (the model and its checkpoints); loading one more first "
        "unloads the least recently used.",
    )
    decoder_passes: DecoderPasses = Field(default=8, description="Decoder test-time passes: 8 (best), 4, 2 or 1.")
    lora_memory_mb: int = Field(
        default=1024,
        ge=0,
        description="Host memory (MiB) for the style LoRAs read, least recently used out first; 0: read each time.",
    )
    device: str = Field(default="auto", description=f"{DEVICES}.")
    dtype: Dtype = Field(default="auto", description="auto, float32, float16 or bfloat16.")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch's CPU threads; default: OMP_NUM_THREADS, else one per physical core. Their OpenMP "
        "waits sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless set), so a busy machine does not "
        "slow them down many times over.",
    )
    memory_mode: MemoryMode = Field(
        default="default", description="GPU memory vs speed: fast, default, low or offload (see README)."
    )
    vae_tiling: bool = Field(default=False, description="Decode the VAE in tiles (less memory, slight seams).")
    channels_last: bool = Field(default=False, description="NHWC memory layout for UNet, VAE and decoder.")
    compile: bool = Field(
        default=False,
        description="torch.compile UNet and decoder (slow first call per size; kept in --compile-cache-folder).",
    )
    warmup: bool | None = Field(
        default=None,
        description="One short run per --warmup-size before serving; default: on accelerators, and with --compile "
        "on a CPU too (the warm-up compiles or reads the compile cache).",
    )
    warmup_sizes: list[WarmupSize] = Field(
        default_factory=lambda: ["1024x1024"],
        description="Image sizes (WIDTHxHEIGHT) the warm-up generates, one short run each; with --compile each "
        "compiles (or reads from the compile cache) the graphs of its size, which requests of other sizes "
        "compile when they first come. Generated at the next multiple of 64 per side, like requests.",
    )
    compile_cache_folder: Path | None = Field(
        default=None,
        description="Where --compile keeps the compiled kernels, so a restart reads them instead of compiling "
        "again (unless TORCHINDUCTOR_CACHE_DIR is set); default: the data directory's compile-cache/.",
    )
    compile_recompile_limit: int = Field(
        default=8,
        ge=1,
        description="Graphs --compile makes of the UNet (or decoder) at most, one per image size and batch size "
        "(the warm-up makes sizes × batch sizes of them); calls of further shapes run uncompiled.",
    )
    png_compression: PngCompression = Field(
        default=DEFAULT_PNG_COMPRESSION,
        description="PNG size vs encoding time: fast (fpng, about 10x faster than zlib, files about a fifth "
        "larger), balanced (zlib level 1, run-length) or small (the shorter of balanced and zlib level 9, "
        "optimized; slowest). All lossless.",
    )

    # -- server (``layerdiffuse serve``) ---------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="The server's database, stored files, signing key and TLS files.",
    )
    database_url: str | None = Field(
        default=None,
        description="The store: sqlite:///path or postgresql://user:password@host:port/db; "
        "default: SQLite in the data directory.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where file bytes live: file:///path or s3://bucket/prefix (endpoint, region and "
        "credentials from the AWS environment, e.g. AWS_ENDPOINT_URL); default: the data directory's files/.",
    )
    file_delivery: Literal["stream", "redirect"] = Field(
        default="stream",
        description="How /files/ URLs answer: stream the bytes through the API, or redirect to a "
        "short-lived presigned URL of the object store (less API traffic; clients must reach the store).",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="ed25519 private key (PEM) that signs webhooks, upload tokens and upload URLs; the same "
        "file on every API node. Default (embedded server only): created in the data directory.",
    )
    signing_previous_key_files: list[Path] = Field(
        default_factory=list,
        description="Earlier keys (private or public PEM), still published and accepted during a rotation.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the listeners bind to: the API's HTTP and HTTPS ports, a worker's health port.",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Plain HTTP port.")
    tls_port: int = Field(
        default=8443, ge=0, le=65535, description="HTTPS port (fal_client needs https); 0 turns HTTPS off."
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate; default: one from a local CA.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_names: list[str] = Field(
        default_factory=list, description="Extra host names for the local CA's server certificate."
    )
    openai_model_names: list[str] = Field(
        default_factory=list,
        description="Names the OpenAI Images API (/v1) takes for this server's model besides its preset name, "
        'e.g. ["gpt-image-1"] so applications run unchanged; /v1/models lists them all.',
    )
    public_url: str | None = Field(
        default=None, description="Base URL clients reach the server at, for file URLs; default http://host:port."
    )
    retention_hours: float = Field(
        default=168.0, ge=0, description="Completed requests and their files are deleted after this; 0 keeps them."
    )
    max_upload_bytes: int = Field(default=50 * 2**20, ge=1, description="Largest accepted upload.")
    max_upload_pixels: int = Field(
        default=8192 * 8192, ge=1, description="Largest accepted image upload, in pixels (width × height)."
    )
    max_queue_length: int = Field(default=1000, ge=1, description="Submissions beyond this many queued get 429.")
    max_batch_size: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Images denoised together: queued requests of the same size, steps, sampler and guidance "
        "join one batch while their images (num_images each) fit; a request with more runs alone (1 = never batch).",
    )
    max_attempts: int = Field(
        default=2,
        ge=1,
        description="Runs of a request that may end with its worker lost while running it alone before it "
        "fails with runner_disconnected (losses in a batch and graceful stops do not count).",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A worker silent for this long is taken for lost, and its requests run elsewhere.",
    )
    shutdown_grace_seconds: float = Field(
        default=20.0,
        ge=0,
        description="On SIGTERM: time for the running batch, sync runs and status streams to finish; "
        "then the batch goes back to the queue and waiting answers end.",
    )
    worker_port: int = Field(
        default=9090, ge=0, le=65535, description="Health and metrics port of `layerdiffuse worker` (0 = none)."
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Private networks webhooks, image URLs and LoRA URLs may target (e.g. 127.0.0.1/32); "
        "public addresses are always allowed.",
    )
    webhook_max_attempts: int = Field(default=10, ge=1, description="Delivery attempts before a webhook is dropped.")
    webhook_retry_seconds: float = Field(
        default=15.0, gt=0, description="First retry delay; doubles per attempt, capped at one hour."
    )
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, description="Timeout of one delivery attempt.")
    image_input_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Time limit for fetching one image input given as an external URL (image_url …), "
        "from connecting to the last byte.",
    )
    image_input_max_side: int = Field(
        default=16384,
        ge=64,
        le=16384,
        description="Longest side of an image input, in pixels; longer ones are refused with 422 "
        "(may only be lowered).",
    )
    image_input_max_aspect_ratio: float = Field(
        default=16.0,
        ge=1,
        le=16,
        description="Most elongated image input (long side : short side); others are refused with 422 "
        "(may only be lowered).",
    )
    lora_folder: Path | None = Field(
        default=None,
        description="Folder of LoRA files (.safetensors) that requests may name by file name alone "
        '(loras: [{"path": "name"}]); default: none, only URLs and hub files.',
    )
    max_lora_bytes: int = Field(
        default=2 * 2**30,
        ge=1,
        description="Largest LoRA file a request may use (fetched, uploaded, from the hub or the LoRA folder).",
    )
    lora_disk_bytes: int = Field(
        default=20 * 2**30,
        ge=0,
        description="Disk space of the LoRA files workers fetched or copied (under data_dir/loras); "
        "beyond it the least recently used ones are deleted.",
    )
    lora_fetch_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Time limit for fetching one LoRA given as a URL, from connecting to the last byte.",
    )
    max_body_memory_bytes: int = Field(
        default=256 * 2**20,
        ge=1,
        description="Bytes of submission bodies (inline data: images, mostly) one API node holds at once, "
        "reserved from Content-Length before reading; beyond it submissions wait, then get 503 with Retry-After.",
    )
    body_memory_wait_seconds: float = Field(
        default=10.0, ge=0, description="How long a submission waits for room in max_body_memory_bytes."
    )
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, description="Comment interval on status streams.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Process logs as text lines or as one JSON object per line (with request ids)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Process log level.")
    files_public_url: str | None = Field(
        default=None,
        description="Base URL of a separate origin for stored files' URLs (it must route /files/ to the API); "
        "default: public_url.",
    )

    @field_validator("decoder_passes", mode="before")
    @classmethod
    def _passes_from_text(cls, value: object) -> object:
        """An environment variable is text: ``"4"`` means the number 4."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints_from_flags(cls, value: object) -> object:
        """``--checkpoint NAME=SOURCE`` flags arrive as a list of such strings."""
        if not isinstance(value, list):
            return value
        named: dict[str, object] = {}
        for item in value:
            name, equals, source = str(item).partition("=")
            if not equals or not name.strip() or not source.strip():
                raise ValueError(f"a checkpoint is given as NAME=SOURCE, got {item!r}")
            named[name.strip()] = source.strip()
        return named

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(CHECKPOINT_NAME_PATTERN, name):
                raise ValueError(
                    f"checkpoint name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
                    "letter or digit)"
                )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError(f"Input should be {DEVICES}")
        return value

    @property
    def presets_dir(self) -> Path:
        return self.home / "presets"

    @property
    def local_ca_file(self) -> Path | None:
        """The CA of the HTTPS certificate the server issues itself (none when one was brought, or HTTPS is off)."""
        if not self.tls_port or (self.tls_cert and self.tls_key):
            return None
        return self.data_dir / "tls" / "ca.pem"

    @property
    def compile_cache_dir(self) -> Path:
        return self.compile_cache_folder or self.data_dir / "compile-cache"

    @property
    def warmup_dimensions(self) -> list[tuple[int, int]]:
        """The warm-up sizes as (width, height)."""
        return [(int(width), int(height)) for width, _, height in (size.partition("x") for size in self.warmup_sizes)]

    @property
    def lora_cache_dir(self) -> Path:
        """Where workers keep the LoRA files requests gave by URL, so each is fetched once."""
        return self.data_dir / "loras"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'layerdiffuse.db'}"

    @property
    def blob_url(self) -> str:
        return self.storage_url or (self.data_dir / "files").as_uri()

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def files_url(self) -> str:
        """The base of stored files' URLs: the operator's separate files origin if there is one, else the API's."""
        return (self.files_public_url or self.base_url).rstrip("/")
