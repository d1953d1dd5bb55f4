"""The ``layerdiffuse`` command: generate images, download weights, run the server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import LayerDiffuseError
from .settings import Settings

app = typer.Typer(
    name="layerdiffuse",
    help="Transparent images (RGBA PNG) from text with SDXL + LayerDiffuse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

PRESET_HELP = "Model preset: sdxl (real weights), tiny (small random model, offline) or sdxl-random."
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


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(count)]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")] = "",
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write (RGBA).")] = Path("output.png"),
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "text, watermark",
    seed: Annotated[int | None, typer.Option(help="Seed; random when absent. Image i uses seed + i.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 8.0,
    width: Annotated[int, typer.Option(help="Width in pixels, a multiple of 64.")] = 1024,
    height: Annotated[int, typer.Option(help="Height in pixels, a multiple of 64.")] = 1024,
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images to generate.")] = 1,
    scheduler: Annotated[
        str, typer.Option(help="Sampler: dpmpp_2m_karras, dpmpp_2m_sde_karras, euler, euler_ancestral, unipc, ddim.")
    ] = "dpmpp_2m_karras",
    model: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    base: Annotated[str | None, typer.Option(help="SDXL base: hub repo id, diffusers folder or .safetensors.")] = None,
    layer_weights: Annotated[str | None, typer.Option(help="LayerDiffuse attention weights (either format).")] = None,
    layer_strength: Annotated[float, typer.Option(help="Strength of the LayerDiffuse weights.")] = 1.0,
    decoder: Annotated[str | None, typer.Option(help="Transparent VAE decoder file.")] = None,
    decoder_passes: Annotated[int, typer.Option(help="Decoder test-time passes: 8 (best), 4, 2 or 1.")] = 8,
    preview: Annotated[Path | None, typer.Option(help="Also write a checkerboard preview PNG here.")] = None,
    safety_checker: Annotated[
        bool, typer.Option("--safety-checker/--no-safety-checker", help="Run the NSFW safety checker.")
    ] = True,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet", help="Show model loading messages.")] = True,
) -> None:
    """Generate transparent images from a prompt and write them as RGBA PNG files."""
    from .engine.pipeline import TransparentSDXLPipeline
    from .schemas import GenerationParams

    _configure_logging(verbose)
    settings = Settings()
    try:
        params = GenerationParams(
            prompt=prompt,
            negative_prompt=negative,
            seed=seed,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            num_images=num_images,
            scheduler=scheduler,
            enable_safety_checker=safety_checker,
        ).with_seed()
    except ValidationError as error:
        problems = "; ".join(f"{CLI_FLAGS.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in error.errors())
        raise _fail(problems, 2) from None
    try:
        pipeline = TransparentSDXLPipeline.from_preset(
            model or settings.model,
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
        with Progress(
            TextColumn("[bold]denoising"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("steps", total=params.num_inference_steps)
            result = pipeline.generate(params, on_step=lambda step, total: progress.update(task, completed=step))
    except (LayerDiffuseError, ValueError) as error:
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
    console.print(f"seed {result.seed}; {timings}", style="dim")


@app.command()
def download(
    model: Annotated[str, typer.Option(help="Preset whose weights to fetch.")] = "sdxl",
    base: Annotated[str | None, typer.Option(help="Another SDXL base (hub repo id).")] = None,
    layer_weights: Annotated[str | None, typer.Option(help="Another attention weights file.")] = None,
    decoder: Annotated[str | None, typer.Option(help="Another decoder file.")] = None,
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
        paths = fetch(sources)
    except (LayerDiffuseError, ValueError) as error:
        raise _fail(str(error)) from None
    for name, path in paths.items():
        console.print(f"{name}: [bold]{path}[/]")


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Run the fal-compatible HTTP API (queue, storage, webhooks) on this machine."""
    raise _fail(
        "the HTTP API is not part of this release yet; use `layerdiffuse generate` or the Python library "
        f"(requested: model={model or Settings().model}, {host}:{port}).",
        3,
    )


def main() -> None:
    app()
