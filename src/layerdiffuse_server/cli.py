"""The ``layerdiffuse`` command: generate images, download weights, run the server."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .cpu_threads import describe_threads, prepare_environment
from .errors import LayerDiffuseError, plain_message
from .observability import configure_logging
from .settings import Settings

app = typer.Typer(
    name="layerdiffuse",
    help="Transparent images (RGBA PNG) from text with SDXL + LayerDiffuse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: flags show no value placeholder, and it stays readable at 80 columns.
    rich_markup_mode=None,
)
console = Console(stderr=True)

PRESET_HELP = (
    "Model preset: sdxl (real weights), demo (small trained model, offline, 128²), tiny (small random "
    "model, tests) or sdxl-random. "
    "[default: $LAYERDIFFUSE_MODEL, else sdxl]"
)
THREADS_HELP = "torch's CPU threads. [default: $LAYERDIFFUSE_THREADS, else $OMP_NUM_THREADS, else one per core]"
CLI_FLAGS = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative",
    "guidance_scale": "--guidance",
    "num_inference_steps": "--steps",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "num_images": "--num-images",
    "scheduler": "--scheduler",
}


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("layerdiffuse_server").setLevel(logging.INFO)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def step_reporter(total: int) -> Iterator[Callable[[int, int], None]]:
    """Denoising progress: a bar on a terminal; elsewhere (a pipe, a log file) plain lines, about ten."""
    if console.is_terminal:
        columns = (TextColumn("[bold]denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("steps", total=total)
            yield lambda step, _total: progress.update(task, completed=step)
        return
    every = max(1, total // 10)
    started = time.monotonic()

    def line(step: int, steps: int) -> None:
        if step % every == 0 or step == steps:
            console.print(f"denoising step {step}/{steps} ({time.monotonic() - started:.1f} s)", highlight=False)

    yield line


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(count)]


def _endpoint_for_files(given: set[str], num_images: int) -> Any:
    """The endpoint whose image inputs are exactly the files given (a clear error otherwise)."""
    from .endpoints import ENDPOINTS

    for endpoint in ENDPOINTS:
        if set(endpoint.image_fields) == given:
            if num_images != 1:
                raise _fail("--num-images: image inputs make one image per run", 2)
            return endpoint
    raise _fail("give --image alone, or --foreground or --background alone, or one of them with --blended", 2)


#: The flag of each image field of the endpoints.
IMAGE_FLAGS = {
    "image_url": "--image",
    "foreground_image_url": "--foreground",
    "background_image_url": "--background",
    "blended_image_url": "--blended",
}


def _read_image_files(files: dict[str, Path]) -> dict[str, Any]:
    """The image files given as RGBA arrays, read before the model loads: a file that is missing or
    not an image is answered at once, naming its flag and path (exit status 2)."""
    from .files.image_inputs import decode_rgba

    arrays, problems = {}, []
    for name, path in files.items():
        try:
            arrays[name] = decode_rgba(path.read_bytes())
        except FileNotFoundError:
            problems.append(f"{IMAGE_FLAGS[name]}: no such image file: {path}")
        except IsADirectoryError:
            problems.append(f"{IMAGE_FLAGS[name]}: {path} is a folder, not an image file")
        except LayerDiffuseError:
            problems.append(f"{IMAGE_FLAGS[name]}: {path} is not a PNG, JPEG or WebP image")
        except OSError as error:
            problems.append(f"{IMAGE_FLAGS[name]}: cannot read {path} ({error.strerror or error})")
    if problems:
        raise _fail("; ".join(problems), 2)
    return arrays


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")] = "",
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write (RGBA).")] = Path("output.png"),
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "text, watermark",
    seed: Annotated[int | None, typer.Option(help="Seed; random when absent. Image i uses seed + i.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 8.0,
    width: Annotated[
        int | None, typer.Option(help="Width in pixels (64–2048); absent: the model's native size.")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Height in pixels (64–2048); absent: the model's native size.")
    ] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images to generate.")] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Sampler: dpmpp_2m_karras (default), dpmpp_2m_sde_karras, euler, euler_ancestral (default of the "
            "conditioned layers), unipc, ddim."
        ),
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="Image to image: re-generate this (RGBA) image; see --strength.")
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="Image to image (with --image): how much to change it (0–1]; default 0.7.")
    ] = None,
    foreground: Annotated[Path | None, typer.Option(help="Conditioned layers: a transparent foreground.")] = None,
    background: Annotated[Path | None, typer.Option(help="Conditioned layers: a background image.")] = None,
    blended: Annotated[
        Path | None,
        typer.Option(
            help="Conditioned layers: the blended image. --foreground alone makes a blend, --background alone "
            "too; with --blended they make the background (from --foreground) or the transparent foreground "
            "(from --background)."
        ),
    ] = None,
    stop_at: Annotated[
        float, typer.Option(help="Conditioned layers: fraction of the denoising that uses the layer model.")
    ] = 1.0,
    model: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    base: Annotated[str | None, typer.Option(help="SDXL base: hub repo id, diffusers folder or .safetensors.")] = None,
    layer_weights: Annotated[
        str | None,
        typer.Option(help="LayerDiffuse transparency weights: attention (either format) or layer_xl_transparent_conv."),
    ] = None,
    layer_strength: Annotated[float, typer.Option(help="Strength of the LayerDiffuse weights.")] = 1.0,
    decoder: Annotated[str | None, typer.Option(help="Transparent VAE decoder file.")] = None,
    decoder_passes: Annotated[int, typer.Option(help="Decoder test-time passes: 8 (best), 4, 2 or 1.")] = 8,
    preview: Annotated[Path | None, typer.Option(help="Also write a checkerboard preview PNG here.")] = None,
    safety_checker: Annotated[
        bool, typer.Option("--safety-checker/--no-safety-checker", help="Run the NSFW safety checker.")
    ] = True,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    threads: Annotated[int | None, typer.Option(help=THREADS_HELP)] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet", help="Show model loading messages.")] = True,
) -> None:
    """Generate transparent images from a prompt and write them as RGBA PNG files.

    With --image it re-generates an image (image to image); with --foreground, --background and
    --blended it runs the conditioned-layer models, like the server's endpoints of those names.
    """
    from .engine.catalog import check_choices
    from .model_profiles import profile_of
    from .schemas import GenerationParams, ImageToImageInput

    _configure_logging(verbose)
    try:
        settings = _settings(threads=threads)
    except ValidationError:
        raise _fail("--threads: must be 1 or more", 2) from None
    files = {"image_url": image, "foreground_image_url": foreground, "background_image_url": background}
    files = {name: path for name, path in (files | {"blended_image_url": blended}).items() if path is not None}
    if strength is not None and "image_url" not in files:
        raise _fail("--strength: only image to image has a strength; give the image with --image", 2)
    arrays = _read_image_files(files)
    # Everything that can be checked without torch is checked first: a typo is answered in a second,
    # not after the model has loaded.
    try:
        common = {
            "prompt": prompt,
            "negative_prompt": negative,
            "seed": seed,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "width": width,
            "height": height,
            "enable_safety_checker": safety_checker,
        } | ({"scheduler": scheduler} if scheduler else {})
        if files:
            endpoint = _endpoint_for_files(set(files), num_images)
            extra = {"stop_at": stop_at} if "stop_at" in endpoint.input_model.model_fields else {}
            if strength is not None:
                extra = {"strength": strength}
            params = endpoint.input_model(**common, **extra, **{name: str(path) for name, path in files.items()})
            params = params.with_seed()
        else:
            params = GenerationParams(**common, num_images=num_images).with_seed()
    except ValidationError as error:
        problems = [
            f"{CLI_FLAGS.get(str(e['loc'][0]), e['loc'][0])}: {plain_message(e['msg'])}" for e in error.errors()
        ]
        raise _fail("; ".join(problems), 2) from None
    model = model or settings.model
    problems = check_choices(
        model=model,
        device=device,
        dtype=dtype,
        decoder_passes=decoder_passes,
        files={"--base": base, "--layer-weights": layer_weights, "--decoder": decoder},
    )
    if problems:
        raise _fail("; ".join(problems), 2)
    profile = profile_of(model)
    if ignored := profile.ignored_words(prompt):
        console.print(f"[yellow]warning:[/] {profile.ignored_words_line(ignored)}", highlight=False)

    loading = time.perf_counter()
    from .engine.pipeline import TransparentSDXLPipeline
    from .engine.quiet import quiet_libraries

    quiet_libraries()

    try:
        pipeline = TransparentSDXLPipeline.from_preset(
            model,
            settings=settings,
            device=device or settings.device,
            dtype=dtype or settings.dtype,
            base=base,
            layer_weights=layer_weights,
            decoder=decoder,
            layer_strength=layer_strength,
            decoder_passes=decoder_passes,
            safety_checker=safety_checker,
        )
        logging.getLogger(__name__).info("Model %r ready in %.1f s", model, time.perf_counter() - loading)
        if files:
            total = params.num_inference_steps
            if isinstance(params, ImageToImageInput):  # only the end of the schedule runs
                total = params.denoising_steps
            with step_reporter(total) as on_step:
                result = pipeline.generate_from_images(params, arrays, on_step=on_step)
        else:
            with step_reporter(params.num_inference_steps) as on_step:
                result = pipeline.generate(params, on_step=on_step)  # type: ignore[arg-type]
    except (LayerDiffuseError, ValueError, OSError) as error:
        raise _fail(str(error)) from None

    for image, path in zip(result.images, _output_paths(output, len(result.images)), strict=True):
        image.save(path)
        flagged = " [yellow](flagged by the safety checker: transparent)[/]" if image.nsfw else ""
        console.print(f"wrote [bold]{path}[/] ({image.width}×{image.height} RGBA, seed {image.seed}){flagged}")
    if preview is not None:
        for image, path in zip(result.images, _output_paths(preview, len(result.images)), strict=True):
            image.save_preview(path)
            console.print(f"wrote preview [bold]{path}[/]")
    timings = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
    console.print(f"seed {result.seed}; {timings}; {describe_threads(pipeline.threads)}", style="dim")


@contextlib.contextmanager
def training_reporter() -> Iterator[Callable[[str, int, int, float], None]]:
    """Training progress, one stage after another: bars with the loss on a terminal, else a line
    per 5 % of each stage."""
    if console.is_terminal:
        columns = (
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            tasks: dict[str, TaskID] = {}

            def bar(stage: str, step: int, steps: int, loss: float) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=steps, loss=loss)
                progress.update(tasks[stage], completed=step, loss=loss)

            yield bar
        return
    started: dict[str, float] = {}

    def line(stage: str, step: int, steps: int, loss: float) -> None:
        started.setdefault(stage, time.monotonic())
        if step % max(1, steps // 20) == 0 or step == steps:
            elapsed = time.monotonic() - started[stage]
            console.print(f"{stage}: step {step}/{steps}, loss {loss:.4f} ({elapsed:.0f} s)", highlight=False)

    yield line


@app.command("train-demo")
def train_demo(
    output: Annotated[Path, typer.Argument(help="Folder to write the preset's files to (made if missing).")],
    seed: Annotated[int, typer.Option(help="Seed of the data set and of every initialisation.")] = 0,
) -> None:
    """Train the demo model from scratch on a CPU (about 45 minutes on 2 cores): data set, VAE,
    transparent encoder and decoder, base UNet, transparency LoRA. Writes them in the official
    formats, scores them on the evaluation prompts and records how they were made (MANIFEST.json)."""
    from .engine.demo_training import Recipe, write_demo

    _configure_logging(False)
    with training_reporter() as progress:
        manifest = write_demo(
            output, Recipe(seed=seed), progress, command=f"layerdiffuse train-demo {output} --seed {seed}"
        )
    scores = manifest["evaluation"]
    console.print(
        f"wrote [bold]{output}[/]: shape accuracy {scores['shape_accuracy']:.0%}, colour accuracy "
        f"{scores['colour_accuracy']:.0%}, trained in {sum(manifest['seconds'].values()) / 60:.1f} min"
    )


@app.command()
def download(
    model: Annotated[str, typer.Option(help="Preset whose weights to fetch.")] = "sdxl",
    base: Annotated[str | None, typer.Option(help="Another SDXL base (hub repo id).")] = None,
    layer_weights: Annotated[
        str | None, typer.Option(help="Other transparency weights (attention or conv file).")
    ] = None,
    decoder: Annotated[str | None, typer.Option(help="Another decoder file.")] = None,
    layers: Annotated[
        bool, typer.Option(help="Also the four conditioned-layer models (5.7 GB for sdxl; else fetched on first use).")
    ] = False,
) -> None:
    """Fetch a preset's weights into the Hugging Face cache (or write a random preset's files)."""
    from .engine.presets import download as fetch
    from .engine.presets import preset_sources

    _configure_logging(True)
    settings = Settings()
    try:
        sources = preset_sources(model, settings.presets_dir).with_overrides(
            base=base, layer_weights=layer_weights, decoder=decoder
        )
        paths = fetch(sources, layers=layers)
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None
    for name, path in paths.items():
        console.print(f"{name}: [bold]{path}[/]")


# -- options shared by the server roles ----------------------------------------------------------

HostOption = Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")]
PortOption = Annotated[int | None, typer.Option(help="Plain HTTP port (default 8080).")]
TlsPortOption = Annotated[int | None, typer.Option(help="HTTPS port for fal_client (default 8443); 0 = off.")]
TlsNameOption = Annotated[
    list[str] | None, typer.Option(help="Extra host name for the local CA's certificate (repeatable).")
]
PublicUrlOption = Annotated[str | None, typer.Option(help="Base URL clients reach the API at (file URLs).")]
DataDirOption = Annotated[Path | None, typer.Option(help="Database, files and keys (default ~/.local/share/...).")]
DatabaseOption = Annotated[
    str | None, typer.Option(help="sqlite:///path or postgresql://user:password@host:port/db (default: data dir).")
]
StorageOption = Annotated[
    str | None, typer.Option(help="file:///path or s3://bucket/prefix for file bytes (default: data dir).")
]
WebhookNetworkOption = Annotated[
    list[str] | None, typer.Option(help="Private network webhooks may target, e.g. 127.0.0.1/32 (repeatable).")
]
RetentionOption = Annotated[float | None, typer.Option(help="Delete completed requests after (0 = keep).")]
ModelOption = Annotated[str | None, typer.Option(help=PRESET_HELP)]
BaseOption = Annotated[str | None, typer.Option(help="SDXL base: hub repo id, diffusers folder or .safetensors.")]
LayerWeightsOption = Annotated[str | None, typer.Option(help="LayerDiffuse attention weights (either format).")]
DecoderOption = Annotated[str | None, typer.Option(help="Transparent VAE decoder file.")]
PassesOption = Annotated[int, typer.Option(help="Decoder test-time passes: 8 (best), 4, 2 or 1.")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")]
ThreadsOption = Annotated[int | None, typer.Option(help=THREADS_HELP)]
MemoryModeOption = Annotated[str, typer.Option(help="GPU memory vs speed: fast, default, low or offload (see README).")]
TilingOption = Annotated[bool, typer.Option(help="Decode the VAE in tiles (less memory, slight seams).")]
ChannelsLastOption = Annotated[bool, typer.Option(help="NHWC memory layout for UNet, VAE and decoder.")]
CompileOption = Annotated[bool, typer.Option("--compile", help="torch.compile UNet and decoder (slow first call).")]
WarmupOption = Annotated[
    bool | None, typer.Option("--warmup/--no-warmup", help="One short run before serving (default: on GPUs).")
]
BatchOption = Annotated[
    int | None, typer.Option(help="Queued compatible requests denoised as one batch (default 4; 1 = never).")
]
LogFormatOption = Annotated[str | None, typer.Option(help="Process logs: text (default) or json.")]
LogLevelOption = Annotated[str | None, typer.Option(help="debug, info (default), warning or error.")]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    return Settings(**{name: value for name, value in overrides.items() if value not in (None, [])})


def _tls(settings: Settings) -> Any:
    from .server.tls import TlsFiles, local_tls

    if not settings.tls_port:
        return None
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(settings.tls_cert, settings.tls_key, None)
    return local_tls(settings.data_dir / "tls", settings.tls_names)


def _bind_api_listeners(settings: Settings) -> tuple[Any, Any]:
    """The plain and (when ``TLS_PORT`` is set) HTTPS sockets, bound before anything slow starts,
    so a taken port ends the process at once with the address (see ``server.listeners``)."""
    from .server.listeners import bind

    http = bind(settings.host, settings.port, "HTTP")
    try:
        https = bind(settings.host, settings.tls_port, "HTTPS") if settings.tls_port else None
    except LayerDiffuseError:
        http.close()
        raise
    return http, https


def _serve_api(settings: Settings, services: Any, role: str, listeners: tuple[Any, Any]) -> None:
    """Start the HTTP listeners of an embedded server or API node, with the banner."""
    from .api import create_app
    from .api.app import begin_drain
    from .auth import ensure_first_key
    from .server.banner import print_banner
    from .server.serve import serve_app

    try:
        first_key = ensure_first_key(services.store.keys)
        tls = _tls(settings)
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None
    print_banner(settings, tls, first_key, role=role)
    reach = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    addresses = f"http://{reach}:{settings.port}/" + (f" and https://{reach}:{settings.tls_port}/" if tls else "")

    def readiness() -> str | None:
        worker = services.local_worker
        if worker is None:
            return f"ready on {addresses}; requests wait in the queue for workers"
        if worker.load_error is not None:
            return f"not ready: the model failed to load ({worker.load_error}); requests are answered 503"
        if not worker.ready:
            return None
        return f"ready on {addresses} with model {worker.model_name}"  # the worker said how long it took

    serve_app(
        create_app(services),
        http=listeners[0],
        https=listeners[1],
        tls=tls,
        log_level=settings.log_level,
        grace_seconds=settings.shutdown_grace_seconds,
        on_stop=lambda: begin_drain(services),
        readiness=readiness,
    )


@app.command()
def serve(
    model: ModelOption = None,
    host: HostOption = None,
    port: PortOption = None,
    tls_port: TlsPortOption = None,
    tls_name: TlsNameOption = None,
    public_url: PublicUrlOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    storage_url: StorageOption = None,
    webhook_allow_network: WebhookNetworkOption = None,
    retention_hours: RetentionOption = None,
    base: BaseOption = None,
    layer_weights: LayerWeightsOption = None,
    decoder: DecoderOption = None,
    decoder_passes: PassesOption = 8,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    memory_mode: MemoryModeOption = "default",
    vae_tiling: TilingOption = False,
    channels_last: ChannelsLastOption = False,
    compile: CompileOption = False,
    warmup: WarmupOption = None,
    max_batch_size: BatchOption = None,
    log_format: LogFormatOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run everything in one process: the fal-compatible API and a worker, on SQLite and local files."""
    from .server.bootstrap import build_services
    from .server.engine_options import EngineOptions

    try:
        settings = _settings(
            model=model, host=host, port=port, tls_port=tls_port, tls_names=tls_name, public_url=public_url,
            data_dir=data_dir, database_url=database_url, storage_url=storage_url,
            webhook_allowed_networks=webhook_allow_network, retention_hours=retention_hours, device=device,
            dtype=dtype, threads=threads, log_format=log_format, log_level=log_level, max_batch_size=max_batch_size,
        )  # fmt: skip
        configure_logging(settings.log_format, settings.log_level)
        options = EngineOptions(
            settings.model, base=base, layer_weights=layer_weights, decoder=decoder, decoder_passes=decoder_passes,
            memory_mode=memory_mode, vae_tiling=vae_tiling, channels_last=channels_last, compile=compile,
            warmup=warmup,
        )  # fmt: skip
        listeners = _bind_api_listeners(settings)
        services = build_services(settings, options.loader(settings), model_name=settings.model)
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None
    _serve_api(settings, services, "serve", listeners)


@app.command()
def api(
    host: HostOption = None,
    port: PortOption = None,
    tls_port: TlsPortOption = None,
    tls_name: TlsNameOption = None,
    public_url: PublicUrlOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    storage_url: StorageOption = None,
    signing_key_file: Annotated[
        Path | None, typer.Option(help="The ed25519 key (PEM) every API node shares (see `layerdiffuse signing-key`).")
    ] = None,
    webhook_allow_network: WebhookNetworkOption = None,
    retention_hours: RetentionOption = None,
    log_format: LogFormatOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run an API node: the fal-compatible API with no worker (and no torch); workers run apart."""
    from .server.bootstrap import build_services

    try:
        settings = _settings(
            host=host, port=port, tls_port=tls_port, tls_names=tls_name, public_url=public_url, data_dir=data_dir,
            database_url=database_url, storage_url=storage_url, signing_key_file=signing_key_file,
            webhook_allowed_networks=webhook_allow_network, retention_hours=retention_hours,
            log_format=log_format, log_level=log_level,
        )  # fmt: skip
        configure_logging(settings.log_format, settings.log_level)
        listeners = _bind_api_listeners(settings)
        services = build_services(settings, role="api")
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None
    _serve_api(settings, services, "api", listeners)


@app.command()
def worker(
    model: ModelOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address of the health and metrics port (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Health and metrics port (default 9090; 0 = none).")] = None,
    public_url: PublicUrlOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    storage_url: StorageOption = None,
    retention_hours: RetentionOption = None,
    base: BaseOption = None,
    layer_weights: LayerWeightsOption = None,
    decoder: DecoderOption = None,
    decoder_passes: PassesOption = 8,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    memory_mode: MemoryModeOption = "default",
    vae_tiling: TilingOption = False,
    channels_last: ChannelsLastOption = False,
    compile: CompileOption = False,
    warmup: WarmupOption = None,
    max_batch_size: BatchOption = None,
    log_format: LogFormatOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a GPU worker: claim requests from the shared store, generate, store the images."""
    from .server.engine_options import EngineOptions
    from .server.worker_node import run_worker

    try:
        settings = _settings(
            model=model, host=host, worker_port=port, public_url=public_url, data_dir=data_dir,
            database_url=database_url, storage_url=storage_url, retention_hours=retention_hours, device=device,
            dtype=dtype, threads=threads, log_format=log_format, log_level=log_level, max_batch_size=max_batch_size,
        )  # fmt: skip
        configure_logging(settings.log_format, settings.log_level)
        options = EngineOptions(
            settings.model, base=base, layer_weights=layer_weights, decoder=decoder, decoder_passes=decoder_passes,
            memory_mode=memory_mode, vae_tiling=vae_tiling, channels_last=channels_last, compile=compile,
            warmup=warmup,
        )  # fmt: skip
        if settings.public_url is None:
            logging.getLogger(__name__).warning(
                "no --public-url: image URLs will point at %s; set it to the API's address", settings.base_url
            )
        run_worker(settings, options)
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None


@app.command("signing-key")
def signing_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new private key (PEM, mode 0600).")],
) -> None:
    """Create the ed25519 key that signs webhooks and upload tokens; give the same file to every API node."""
    from .signing import generate_key_file, key_id

    try:
        key = generate_key_file(path)
    except LayerDiffuseError as error:
        raise _fail(str(error)) from None
    console.print(
        f"wrote [bold]{path}[/] (key id {key_id(key.public_key())}); set LAYERDIFFUSE_SIGNING_KEY_FILE={path}"
    )


keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed in the server's database).")
app.add_typer(keys_app, name="keys")


def _open_store(settings: Settings) -> Any:
    from .store import open_store

    try:
        return open_store(settings.store_url)
    except LayerDiffuseError as error:
        raise _fail(str(error)) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    admin: Annotated[bool, typer.Option(help="May read every key's requests.")] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create a key and print it (the only time it is shown)."""
    from .auth import issue_key

    store = _open_store(_settings(data_dir=data_dir, database_url=database_url))
    issued = issue_key(store.keys, name, admin=admin)
    console.print(f"created key [bold]{issued.key.id}[/] ({name}{', admin' if admin else ''}); it is shown once:")
    typer.echo(issued.value)


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None, database_url: DatabaseOption = None) -> None:
    """List keys (ids and names; secrets are not stored)."""
    from datetime import datetime

    from rich.table import Table

    table = Table("id", "name", "admin", "created", "revoked")
    for key in _open_store(_settings(data_dir=data_dir, database_url=database_url)).keys.all():
        created = datetime.fromtimestamp(key.created_at).isoformat(timespec="seconds")
        revoked = datetime.fromtimestamp(key.revoked_at).isoformat(timespec="seconds") if key.revoked_at else ""
        table.add_row(key.id, key.name, "yes" if key.admin else "", created, revoked)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part before ':').")],
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key: requests and uploads with it are refused from now on."""
    import time

    store = _open_store(_settings(data_dir=data_dir, database_url=database_url))
    if not store.keys.revoke(key_id.split(":")[0], time.time()):
        raise _fail(f"no active key with id {key_id!r}")
    console.print(f"revoked key [bold]{key_id.split(':')[0]}[/]")


@app.command()
def status(
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show the queue, running requests, workers and the last hour's outcomes, read from the server's store."""
    import json
    from dataclasses import asdict

    from .observability.status import collect_status, render_status

    settings = _settings(data_dir=data_dir, database_url=database_url)
    report = collect_status(_open_store(settings), files=settings.blob_url)
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        render_status(report, Console())


def main() -> None:
    # First of all: torch (imported by the commands that need it) reads the OpenMP policy once, at load.
    prepare_environment()
    app()
