"""``layerdiffuse generate``'s work: the flags made into an input of the server's endpoints, checked
before anything slow; then the model loaded, the images made and written.

Everything that can be checked without torch is checked first (image files, input values, weight
paths), so a typo is answered in a second with the flag it came from, not after the model loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..cpu_threads import describe_threads
from ..errors import LayerDiffuseError, plain_message
from ..schemas import GenerationParams, ImageToImageInput
from ..settings import Settings
from .console import console, fail, step_reporter

logger = logging.getLogger(__name__)

#: The flag of each input field.
FLAGS = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative",
    "guidance_scale": "--guidance",
    "num_inference_steps": "--steps",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "num_images": "--num-images",
    "loras": "--lora",
    "scheduler": "--scheduler",
}
#: The flag of each image field of the endpoints.
IMAGE_FLAGS = {
    "image_url": "--image",
    "foreground_image_url": "--foreground",
    "background_image_url": "--background",
    "blended_image_url": "--blended",
    "mask_url": "--mask",
}


def generation_input(
    common: dict[str, Any],
    files: dict[str, Path],
    *,
    num_images: int,
    strength: float | None,
    stop_at: float,
) -> GenerationParams:
    """The input of the endpoint the image files call for (text to image without any), with a seed.

    Raises:
        typer.Exit: status 2, naming each flag whose value is refused.
    """
    try:
        if not files:
            return GenerationParams(**common, num_images=num_images).with_seed()
        endpoint = _endpoint_for_files(set(files), num_images)
        extra = {"stop_at": stop_at} if "stop_at" in endpoint.input_model.model_fields else {}
        if strength is not None:
            extra = {"strength": strength}
        params = endpoint.input_model(**common, **extra, **{name: str(path) for name, path in files.items()})
        return params.with_seed()
    except ValidationError as error:
        problems = [f"{FLAGS.get(str(e['loc'][0]), e['loc'][0])}: {plain_message(e['msg'])}" for e in error.errors()]
        raise fail("; ".join(problems), 2) from None


def _endpoint_for_files(given: set[str], num_images: int) -> Any:
    """The endpoint whose image inputs are exactly the files given (a clear error otherwise)."""
    from ..endpoints import ENDPOINTS

    for endpoint in ENDPOINTS:
        if set(endpoint.image_fields) == given:
            if num_images != 1:
                raise fail("--num-images: image inputs make one image per run", 2)
            return endpoint
    raise fail(
        "give --image alone or with --mask, or --foreground or --background alone, or one of them with --blended", 2
    )


def read_image_files(files: dict[str, Path]) -> dict[str, Any]:
    """The image files given as RGBA arrays, read before the model loads: a file that is missing or
    not an image is answered at once, naming its flag and path (exit status 2)."""
    from ..files.image_inputs import decode_rgba

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
        raise fail("; ".join(problems), 2)
    return arrays


def check_model(settings: Settings, prompt: str) -> None:
    """Weight files named as paths must exist (status 2); a model with a closed vocabulary warns of
    the prompt's words it does not know."""
    from ..engine.catalog import check_choices
    from ..model_profiles import profile_of

    weights = {"--base": settings.base, "--layer-weights": settings.layer_weights, "--decoder": settings.decoder}
    if problems := check_choices(files=weights):
        raise fail("; ".join(problems), 2)
    profile = profile_of(settings.model)
    if ignored := profile.ignored_words(prompt):
        console.print(f"[yellow]warning:[/] {profile.ignored_words_line(ignored)}", highlight=False)


def generate_and_write(
    settings: Settings,
    params: GenerationParams,
    arrays: dict[str, Any],
    *,
    output: Path,
    preview: Path | None,
    layer_strength: float,
    lora_files: Callable[[str], Path] | None = None,
    checkpoint: str | None = None,
) -> None:
    """Load the model, generate with progress on stderr, write the PNGs and say what was written."""
    from ..server.engine_loader import pipeline_from_settings

    loading = time.perf_counter()
    try:
        pipeline = pipeline_from_settings(
            settings, checkpoint, layer_strength=layer_strength, safety_checker=params.enable_safety_checker
        )
        if lora_files is not None:
            pipeline.use_lora_files(lora_files)
        logger.info("Model %r ready in %.1f s", settings.model, time.perf_counter() - loading)
        total = params.num_inference_steps
        if isinstance(params, ImageToImageInput):  # only the end of the schedule runs
            total = params.denoising_steps
        with step_reporter(total) as on_step:
            if arrays:
                result = pipeline.generate_from_images(params, arrays, on_step=on_step)
            else:
                result = pipeline.generate(params, on_step=on_step)
    except (LayerDiffuseError, ValueError, OSError) as error:
        raise fail(str(error)) from None

    for image, path in zip(result.images, _output_paths(output, len(result.images)), strict=True):
        image.save(path, settings.png_compression)
        flagged = " [yellow](flagged by the safety checker: transparent)[/]" if image.nsfw else ""
        console.print(f"wrote [bold]{path}[/] ({image.width}×{image.height} RGBA, seed {image.seed}){flagged}")
    if preview is not None:
        for image, path in zip(result.images, _output_paths(preview, len(result.images)), strict=True):
            image.save_preview(path)
            console.print(f"wrote preview [bold]{path}[/]")
    timings = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
    console.print(f"seed {result.seed}; {timings}; {describe_threads(pipeline.threads)}", style="dim")


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(count)]
