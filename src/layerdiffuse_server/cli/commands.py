"""The ``layerdiffuse`` commands, one function each: what it takes and which module does the work.

Options that are settings come from :mod:`.options` (help, default and ``LAYERDIFFUSE_*`` variable
from the ``Settings`` field), so a role lists the groups of settings it reads and nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..cpu_threads import prepare_environment
from ..errors import LayerDiffuseError
from ..observability import configure_logging
from ..settings import Settings
from .console import configure_console_logging, console, fail, training_reporter
from .options import settings_options

app = typer.Typer(
    name="layerdiffuse",
    help="Transparent images (RGBA PNG) from text with SDXL + LayerDiffuse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help (no rich boxes): it stays readable at 80 columns and in a pipe.
    rich_markup_mode=None,
)

#: The settings each command reads, in groups.
WEIGHTS = ("model", "base", "layer_weights", "decoder")
MODEL = (*WEIGHTS, "decoder_passes", "device", "dtype", "threads")
#: The checkpoints requests may name: the API checks the names, workers load them.
CHECKPOINTS = ("checkpoints",)
RUNTIME = (
    "memory_mode",
    "vae_tiling",
    "channels_last",
    "compile",
    "compile_cache_folder",
    "compile_recompile_limit",
    "warmup",
    "warmup_sizes",
    "max_batch_size",
    "png_compression",
)
STORE = ("data_dir", "database_url", "storage_url")
LISTENERS = ("host", "port", "tls_port", "tls_cert", "tls_key", "tls_names", "public_url")
HOUSE = ("webhook_allowed_networks", "retention_hours")
LOGS = ("log_format", "log_level")
LORAS = ("lora_folder", "max_lora_bytes", "lora_disk_bytes")


@app.command()
@settings_options(*MODEL, *CHECKPOINTS, *LORAS, "png_compression")
def generate(
    settings: Settings,
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
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Inpainting (with --image): a mask read from its alpha, 0 where the image is regenerated and 255 "
            "where it is kept; --strength defaults to 1 then."
        ),
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
    layer_strength: Annotated[float, typer.Option(help="Strength of the LayerDiffuse weights.")] = 1.0,
    model_name: Annotated[
        str | None,
        typer.Option(help="One of the --checkpoint names: that checkpoint as the base, as a request's model_name."),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            help="A style LoRA, PATH[:SCALE] (scale 1 when absent); repeat for several. PATH: a local .safetensors "
            "file, an http(s) URL, a Hugging Face owner/repo/file.safetensors, or a name in --lora-folder."
        ),
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a checkerboard preview PNG here.")] = None,
    safety_checker: Annotated[
        bool, typer.Option("--safety-checker/--no-safety-checker", help="Run the NSFW safety checker.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet", help="Show model loading messages.")] = True,
) -> None:
    """Generate transparent images from a prompt and write them as RGBA PNG files.

    With --image it re-generates an image (image to image), with --mask too only the area the mask
    makes transparent (inpainting); with --foreground, --background and
    --blended it runs the conditioned-layer models, like the server's endpoints of those names.
    """
    from .generation import check_model, generate_and_write, generation_input, read_image_files
    from .loras import command_line_loras

    configure_console_logging(verbose)
    loras, lora_files = command_line_loras(lora or [], settings)
    if model_name is not None and model_name not in settings.checkpoints:
        listed = ", ".join(sorted(settings.checkpoints)) or "none: give them with --checkpoint NAME=SOURCE"
        raise fail(f"--model-name {model_name}: not one of the checkpoints ({listed})", 2)
    named = {"image_url": image, "mask_url": mask, "foreground_image_url": foreground}
    named |= {"background_image_url": background, "blended_image_url": blended}
    files = {name: path for name, path in named.items() if path is not None}
    common = {
        "prompt": prompt, "negative_prompt": negative, "seed": seed, "num_inference_steps": steps,
        "guidance_scale": guidance, "width": width, "height": height, "enable_safety_checker": safety_checker,
        "loras": loras,
    } | ({"scheduler": scheduler} if scheduler else {})  # fmt: skip
    if strength is not None and "image_url" not in files:
        raise fail("--strength: only image to image has a strength; give the image with --image", 2)
    arrays = read_image_files(files)
    params = generation_input(common, files, num_images=num_images, strength=strength, stop_at=stop_at)
    check_model(settings, prompt)
    generate_and_write(
        settings,
        params,
        arrays,
        output=output,
        preview=preview,
        layer_strength=layer_strength,
        lora_files=lora_files,
        checkpoint=model_name,
    )


@app.command("train-demo")
def train_demo(
    output: Annotated[Path, typer.Argument(help="Folder to write the preset's files to (made if missing).")],
    seed: Annotated[int, typer.Option(help="Seed of the data set and of every initialisation.")] = 0,
    earlier: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="An earlier run's folder: keep its base, encoder and LoRA, refine only its decoder (minutes).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Train the demo model from scratch on a CPU (about 50 minutes on 2 cores): data set, VAE,
    transparent encoder and decoder, base UNet, transparency LoRA, decoder refinement. Writes them
    in the official formats, scores them on the evaluation prompts and records how they were made
    (MANIFEST.json)."""
    from ..engine.making.demo_training import Recipe, write_demo

    if earlier is not None and not (earlier / "MANIFEST.json").is_file():
        raise fail(f"--from {earlier}: no MANIFEST.json there; give a folder that train-demo wrote", 2)
    command = f"layerdiffuse train-demo {output}" + (f" --from {earlier}" if earlier else f" --seed {seed}")
    configure_console_logging(False)
    with training_reporter() as progress:
        manifest = write_demo(output, Recipe(seed=seed), progress, command=command, earlier=earlier)
    scores = manifest["evaluation"]
    console.print(
        f"wrote [bold]{output}[/]: shape accuracy {scores['shape_accuracy']:.0%}, colour accuracy "
        f"{scores['colour_accuracy']:.0%}, clear backgrounds {scores['clear_background_images']:.0%}, "
        f"trained in {sum(manifest['seconds'].values()) / 60:.1f} min"
    )


@app.command()
@settings_options(*WEIGHTS)
def download(
    settings: Settings,
    layers: Annotated[
        bool, typer.Option(help="Also the four conditioned-layer models (5.7 GB for sdxl; else fetched on first use).")
    ] = False,
) -> None:
    """Fetch a preset's weights into the Hugging Face cache (or write a random preset's files)."""
    from ..engine.presets import download as fetch
    from ..engine.presets import preset_sources

    configure_console_logging(True)
    try:
        sources = preset_sources(settings.model, settings.presets_dir).with_overrides(
            base=settings.base, layer_weights=settings.layer_weights, decoder=settings.decoder
        )
        paths = fetch(sources, layers=layers)
    except (LayerDiffuseError, ValueError) as error:
        raise fail(str(error)) from None
    for name, path in paths.items():
        console.print(f"{name}: [bold]{path}[/]")


# -- the server's roles ---------------------------------------------------------------------------


def _run_role(role: Callable[[Settings], None], settings: Settings) -> None:
    """Start a role with its logging configured; a setting that does not describe a service that can
    run (a taken port, a missing key) ends it with the reason."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        role(settings)
    except (LayerDiffuseError, ValueError) as error:
        raise fail(str(error)) from None


@app.command()
@settings_options(*LISTENERS, *STORE, *HOUSE, *MODEL, *CHECKPOINTS, "max_loaded_models", *RUNTIME, *LORAS, *LOGS)
def serve(settings: Settings) -> None:
    """Run everything in one process: the fal-compatible API and a worker, on SQLite and local files."""
    from ..server.embedded import run_embedded

    _run_role(run_embedded, settings)


@app.command()
@settings_options(*LISTENERS, *STORE, "signing_key_file", *HOUSE, *CHECKPOINTS, *LOGS)
def api(settings: Settings) -> None:
    """Run an API node: the fal-compatible API with no worker (and no torch); workers run apart."""
    from ..server.api_node import run_api

    _run_role(run_api, settings)


@app.command()
@settings_options("host", "worker_port", "public_url", *STORE, *HOUSE, *MODEL, *CHECKPOINTS, "max_loaded_models",
                  *RUNTIME, *LORAS, *LOGS, flags={"worker_port": "--port"})  # fmt: skip
def worker(settings: Settings) -> None:
    """Run a GPU worker: claim requests from the shared store, generate, store the images."""
    from ..server.worker_node import run_worker

    _run_role(run_worker, settings)


@app.command("signing-key")
def signing_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new private key (PEM, mode 0600).")],
) -> None:
    """Create the ed25519 key that signs webhooks and upload tokens; give the same file to every API node."""
    from ..signing import generate_key_file, key_id

    try:
        key = generate_key_file(path)
    except LayerDiffuseError as error:
        raise fail(str(error)) from None
    console.print(
        f"wrote [bold]{path}[/] (key id {key_id(key.public_key())}); set LAYERDIFFUSE_SIGNING_KEY_FILE={path}"
    )


keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed in the server's database).")
app.add_typer(keys_app, name="keys")


def _open_store(settings: Settings) -> Any:
    from ..store import open_store

    try:
        return open_store(settings.store_url)
    except LayerDiffuseError as error:
        raise fail(str(error)) from None


@keys_app.command("create")
@settings_options(*STORE)
def keys_create(
    settings: Settings,
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    admin: Annotated[bool, typer.Option(help="May read every key's requests.")] = False,
) -> None:
    """Create a key and print it (the only time it is shown)."""
    from ..auth import issue_key

    store = _open_store(settings)
    issued = issue_key(store.keys, name, admin=admin)
    console.print(f"created key [bold]{issued.key.id}[/] ({name}{', admin' if admin else ''}); it is shown once:")
    typer.echo(issued.value)


@keys_app.command("list")
@settings_options(*STORE)
def keys_list(settings: Settings) -> None:
    """List keys (ids and names; secrets are not stored)."""
    from datetime import datetime

    from rich.table import Table

    table = Table("id", "name", "admin", "created", "revoked")
    for key in _open_store(settings).keys.all():
        created = datetime.fromtimestamp(key.created_at).isoformat(timespec="seconds")
        revoked = datetime.fromtimestamp(key.revoked_at).isoformat(timespec="seconds") if key.revoked_at else ""
        table.add_row(key.id, key.name, "yes" if key.admin else "", created, revoked)
    Console().print(table)


@keys_app.command("revoke")
@settings_options(*STORE)
def keys_revoke(
    settings: Settings,
    key_id: Annotated[str, typer.Argument(help="The key id (the part before ':').")],
) -> None:
    """Revoke a key: requests and uploads with it are refused from now on."""

    store = _open_store(settings)
    if not store.keys.revoke(key_id.split(":")[0], time.time()):
        raise fail(f"no active key with id {key_id!r}")
    console.print(f"revoked key [bold]{key_id.split(':')[0]}[/]")


@app.command()
@settings_options(*STORE)
def status(
    settings: Settings,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show the queue, running requests, workers and the last hour's outcomes, read from the server's store."""
    import json
    from dataclasses import asdict

    from ..observability.status import collect_status, render_status

    report = collect_status(_open_store(settings), files=settings.blob_url)
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        render_status(report, Console())


def main() -> None:
    # First of all: torch (imported by the commands that need it) reads the OpenMP policy once, at load.
    prepare_environment()
    app()
