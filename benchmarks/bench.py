#!/usr/bin/env python3
"""What a transparent image costs over a plain SDXL image, and what the server adds, in one run.

Everything is measured in this process on this device: the baseline is diffusers' own
``StableDiffusionXLPipeline`` loaded from the same base weights and run with the same size, steps,
guidance, dtype and sampler (an ordinary RGB image, PNG-encoded); ours is prompt → RGBA PNG bytes.

    python benchmarks/bench.py --model tiny --size 256 --steps 8                  # CPU, about a minute
    python benchmarks/bench.py --model sdxl-random --size 1024 --steps 20 --variants compile   # CUDA

Prints a table and writes the same numbers as JSON (``--json``, default under benchmarks/results/).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdiffuse_server.cpu_threads import prepare_environment

sys.path.insert(0, str(Path(__file__).parent))  # its sibling modules, also when imported from elsewhere

# Measured as the product runs: OpenMP waits that sleep, chosen before torch loads (see cpu_threads).
prepare_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from png_stage import Measurement, encoder_measurements, generated_looking_asset, pipelining_measurements  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from layerdiffuse_server import __version__  # noqa: E402
from layerdiffuse_server.engine.pipelines.acceleration import RuntimeOptions  # noqa: E402
from layerdiffuse_server.engine.pipelines.schedulers import make_scheduler  # noqa: E402
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline  # noqa: E402
from layerdiffuse_server.engine.pipelines.unet_tracing import trace_from_next_call  # noqa: E402
from layerdiffuse_server.engine.presets import preset_sources, resolve_base  # noqa: E402
from layerdiffuse_server.engine.timing import StageTimer  # noqa: E402
from layerdiffuse_server.images import encode_png  # noqa: E402
from layerdiffuse_server.schemas import ForegroundToBlendedInput, GenerationParams, ImageToImageInput  # noqa: E402
from layerdiffuse_server.settings import Settings  # noqa: E402

APP_ID = "fal-ai/layer-diffusion"
PROMPT = "a glass teapot, studio light"
NEGATIVE = "text, watermark"
console = Console(width=max(Console().width, 150))


# -- measuring -------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device, into: dict[str, float]) -> Iterator[None]:
    """Peak memory of the block above what was held before it: CUDA max allocated, else sampled RSS."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        sync(device)
        into["peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - before
        into["peak_total_bytes"] = torch.cuda.max_memory_allocated(device)
        return
    before = rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        into["peak_extra_bytes"] = max(peak, rss_bytes()) - before
        into["peak_total_bytes"] = max(peak, rss_bytes())


def timed_runs(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = fn()
        sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds, result


@dataclass
class Row:
    name: str
    seconds: float | None = None
    baseline: float | None = None  # what the ratio is against
    note: str = ""
    memory: float | None = None  # bytes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.seconds / self.baseline if self.seconds is not None and self.baseline else None


# -- the two pipelines -----------------------------------------------------------------------


def load_plain(model: str, settings: Settings, device: torch.device, dtype: torch.dtype) -> Any:
    """diffusers' SDXL pipeline as a user would load it, from the same base weights."""
    sources = preset_sources(model, settings.presets_dir)
    pipe = TransparentSDXLPipeline.load_sdxl(resolve_base(sources), sources.base_variant, dtype).to(device)
    pipe.scheduler = make_scheduler("dpmpp_2m_karras", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_png(pipe: Any, params: GenerationParams, png_seconds: list[float] | None = None) -> bytes:
    """One baseline image; ``png_seconds`` collects the PNG encoding time, which depends on the
    pixels (a random-weight model's noisy images compress slowly) and is paid by both sides."""
    image = pipe(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width,
        height=params.height,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(params.seed or 0),
    ).images[0]
    started = time.perf_counter()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    if png_seconds is not None:
        png_seconds.append(time.perf_counter() - started)
    return buffer.getvalue()


def ours_png(pipeline: TransparentSDXLPipeline, params: GenerationParams) -> tuple[bytes, dict[str, float], np.ndarray]:
    result = pipeline.generate(params)
    started = time.perf_counter()
    png = encode_png(result.images[0].rgba)
    timings = dict(result.timings) | {"png_encode": time.perf_counter() - started}
    return png, timings, result.images[0].rgba


def median_timings(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


# -- phases ----------------------------------------------------------------------------------


def engine_phase(args: argparse.Namespace, settings: Settings, report: dict[str, Any]) -> TransparentSDXLPipeline:
    device_name = args.device
    started = time.perf_counter()
    ours = TransparentSDXLPipeline.from_preset(args.model, settings=settings, device=device_name, dtype=args.dtype)
    report["load_seconds"] = {"ours": time.perf_counter() - started}
    device, dtype = ours.device, ours.dtype
    if args.warmup:  # a warm server's UNet on a CPU runs traced; the warm-up takes the trace
        trace_from_next_call(ours.sdxl.unet)
    started = time.perf_counter()
    plain = load_plain(args.model, settings, device, dtype)
    report["load_seconds"]["plain"] = time.perf_counter() - started
    params = GenerationParams(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=args.width,
        height=args.height,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=42,
        enable_safety_checker=True,
    )
    rows: list[Row] = []

    memory: dict[str, float] = {}
    plain_png_seconds: list[float] = []
    with peak_memory(device, memory):
        plain_seconds, plain_bytes = timed_runs(
            functools.partial(plain_png, plain, params, plain_png_seconds), device, args.repeats, args.warmup
        )
    baseline = statistics.median(plain_seconds)
    report["baseline"] = baseline
    rows.append(
        Row(
            "plain diffusers SDXL → RGB PNG (baseline)",
            baseline,
            baseline,
            memory=memory["peak_extra_bytes"],
            extra={"samples": plain_seconds},
        )
    )
    rows.append(
        Row(
            "  baseline PNG encode",
            statistics.median(plain_png_seconds[args.warmup :]),
            baseline,
            note=f"RGB, {len(plain_bytes) / 1e6:.2f} MB",
        )
    )
    # The baseline's models leave the device so that ours is measured with the same room.
    plain.to("cpu")
    del plain
    if device.type == "cuda":
        torch.cuda.empty_cache()

    stage_runs: list[dict[str, float]] = []

    def ours_once() -> tuple[bytes, dict[str, float], np.ndarray]:
        out = ours_png(ours, params)
        stage_runs.append(out[1])
        return out

    memory = {}
    with peak_memory(device, memory):
        ours_seconds, (png, _, reference_pixels) = timed_runs(ours_once, device, args.repeats, args.warmup)
    ours_e2e = statistics.median(ours_seconds)
    stages = median_timings(stage_runs[args.warmup :])
    rows.append(
        Row(
            "ours end to end → RGBA PNG",
            ours_e2e,
            baseline,
            memory=memory["peak_extra_bytes"],
            extra={"png_bytes": len(png), "samples": ours_seconds},
        )
    )
    per_step = stages["denoising"] / args.steps
    rows += [
        Row("  text encoding", stages["text_encoding"], baseline),
        Row("  denoising", stages["denoising"], baseline, note=f"{per_step * 1000:.1f} ms/step"),
        Row("  SDXL VAE decode", stages["vae_decode"], baseline),
        Row(
            f"  transparent decode ({ours.decoder.passes} passes, {ours.decoder.max_batch} per call)",
            stages["transparent_decode"],
            baseline,
            note=f"{stages['transparent_decode'] / ours.decoder.passes * 1000:.1f} ms/pass",
        ),
        Row("  safety check", stages.get("safety_check"), baseline),
        Row("  PNG encode", stages["png_encode"], baseline, note=f"RGBA, {len(png) / 1e6:.2f} MB"),
    ]
    report["ours_stages"] = stages

    rows += png_rows(ours, params, reference_pixels, args, baseline)
    rows += decoder_rows(ours, params, device, args, baseline)
    report["direct_seconds"] = ours_e2e
    report["params"] = params
    report["reference_pixels"] = reference_pixels
    report["rows"] = rows
    return ours


def png_rows(
    ours: TransparentSDXLPipeline,
    params: GenerationParams,
    output: np.ndarray,
    args: argparse.Namespace,
    baseline: float,
) -> list[Row]:
    """Each PNG encoder on a generated-looking asset and on this model's output (the ratio is its
    share of a plain generation), then the throughput of finishing generations in line against on
    the worker's output stage (``--pipeline-images``, 0 skips it)."""
    asset = generated_looking_asset(args.size)
    measured = encoder_measurements(asset, "a generated-looking asset", max(args.repeats, 3))
    measured += encoder_measurements(output, "this model's output", max(args.repeats, 3))
    rows = [as_row(measurement, baseline) for measurement in measured]
    if args.pipeline_images:
        generate = lambda: [image.rgba for image in ours.generate(params).images]  # noqa: E731
        rows += [as_row(measurement, None) for measurement in pipelining_measurements(generate, args.pipeline_images)]
    return rows


def as_row(measurement: Measurement, baseline: float | None) -> Row:
    extra = {
        key: value
        for key, value in (
            ("cpu_seconds", measurement.cpu_seconds),
            ("png_bytes", measurement.size_bytes),
            ("images_per_second", measurement.images_per_second),
        )
        if value is not None
    }
    return Row(measurement.name, measurement.seconds, baseline, note=measurement.note, extra=extra)


def decoder_rows(
    ours: TransparentSDXLPipeline,
    params: GenerationParams,
    device: torch.device,
    args: argparse.Namespace,
    baseline: float,
) -> list[Row]:
    """The transparent decode alone, by number of test-time passes and passes per forward call."""
    if not args.passes:  # ``--passes ""``: skip the extra denoising these rows need (minutes on a CPU)
        return []
    latents = ours.denoise(params, [42], ours.encode_prompts([PROMPT], [NEGATIVE], params.guidance_scale))
    rows = []
    default_passes, default_batch = ours.decoder.passes, ours.decoder.max_batch
    for passes, max_batch in [(8, 8), (8, 4), (8, 2), (8, 1), (4, 4), (2, 2), (1, 1)]:
        if passes not in args.passes:
            continue
        ours.decoder.passes, ours.decoder.max_batch = passes, max_batch
        timings: dict[str, float] = {}
        memory: dict[str, float] = {}

        def decode() -> None:
            ours.decoder.decode(latents, ours.sdxl.vae, StageTimer(timings, device))  # noqa: B023

        with peak_memory(device, memory):
            timed_runs(decode, device, args.repeats, 1)
        transparent = timings["transparent_decode"] / (args.repeats + 1)
        rows.append(
            Row(
                f"transparent decode: {passes} passes, {max_batch} per call",
                transparent,
                baseline,
                note=f"{transparent / passes * 1000:.1f} ms/pass",
                memory=memory["peak_extra_bytes"],
            )
        )
    ours.decoder.passes, ours.decoder.max_batch = default_passes, default_batch
    return rows


def image_rows(
    ours: TransparentSDXLPipeline,
    params: GenerationParams,
    reference: np.ndarray,
    device: torch.device,
    args: argparse.Namespace,
    baseline: float,
) -> list[Row]:
    """The image endpoints beside text to image: image to image from ours' own image, and one
    conditioned-layer model (fg2ble; written at random for presets without one), including what
    switching the one UNet between the models costs."""
    if args.no_images:
        return []
    common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": args.width, "height": args.height}
    common |= {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "seed": 42}
    i2i = ImageToImageInput(image_url="bench", strength=0.7, **common)
    memory: dict[str, float] = {}
    with peak_memory(device, memory):
        seconds, _ = timed_runs(
            lambda: ours.generate_from_images(i2i, {"image_url": reference}), device, args.repeats, args.warmup
        )
    steps = min(int(args.steps * 0.7), args.steps)
    rows = [
        Row(
            "image to image, strength 0.7",
            statistics.median(seconds),
            baseline,
            note=f"{steps} of {args.steps} steps, + transparent encoder",
            memory=memory["peak_extra_bytes"],
        )
    ]
    scratch = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    if "fg2ble" not in ours.layer_files:
        from safetensors.torch import save_file

        from layerdiffuse_server.engine.making.random_weights import conditioned_diff_state_dict

        save_file(conditioned_diff_state_dict(ours.patches.unet, "fg2ble"), scratch / "layer_xl_fg2ble.safetensors")
        ours.layer_files["fg2ble"] = str(scratch / "layer_xl_fg2ble.safetensors")
    layer = ForegroundToBlendedInput(foreground_image_url="bench", **common)
    images = {"foreground_image_url": reference}
    started = time.perf_counter()
    ours.generate_from_images(layer, images)  # loads the file and registers it
    first = time.perf_counter() - started
    memory = {}
    with peak_memory(device, memory):
        seconds, _ = timed_runs(lambda: ours.generate_from_images(layer, images), device, args.repeats, 0)
    switch: list[float] = []
    for _ in range(args.repeats):
        sync(device)
        started = time.perf_counter()
        ours.patches.use("text-to-image")
        ours.patches.use("fg2ble")
        sync(device)
        switch.append(time.perf_counter() - started)
    ours.patches.use("text-to-image")
    shutil.rmtree(scratch, ignore_errors=True)
    rows += [
        Row(
            "foreground to blended (fg2ble)",
            statistics.median(seconds),
            baseline,
            note=f"the first call, loading its file: {first:.1f} s",
            memory=memory["peak_extra_bytes"],
        ),
        Row(
            "  switching the UNet: fg2ble → transparent → fg2ble",
            statistics.median(switch),
            baseline,
            note=f"base weights kept on disk, not in host memory: {ours.patches.kept_bytes / 1e9:.2f} GB",
        ),
    ]
    return rows


def write_style_lora(ours: TransparentSDXLPipeline, folder: Path, rank: int = 32) -> str:
    """A kohya-layout LoRA of ``rank`` on every UNet attention projection (the common style LoRA's
    shape), random, for this model's sizes; returns its name in ``folder``."""
    from safetensors.torch import save_file

    from layerdiffuse_server.engine.making.random_weights import DIFFUSERS_TO_SGM_BLOCKS
    from layerdiffuse_server.engine.weights.attention_weights import attention_projection_keys

    shapes = {key: value.shape for key, value in ours.patches.unet.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    state = {}
    for key in sorted(attention_projection_keys(shapes)):
        out_features, in_features = shapes[key]
        block, _, rest = key.removesuffix(".weight").partition(".transformer_blocks.")
        name = f"lora_unet_{DIFFUSERS_TO_SGM_BLOCKS[block]}.transformer_blocks.{rest}".replace(".", "_")
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 1e-3
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(folder / "style.safetensors"))
    return "style"


def lora_rows(
    ours: TransparentSDXLPipeline,
    params: GenerationParams,
    device: torch.device,
    args: argparse.Namespace,
    baseline: float,
) -> list[Row]:
    """What a style LoRA costs: a generation with one (the merge included, as every request with a
    LoRA after one without pays it) and the switch alone, on and off."""
    if args.no_images:
        return []
    from layerdiffuse_server.loras.cache import LoraCache
    from layerdiffuse_server.loras.fetch import LoraFetchPolicy
    from layerdiffuse_server.loras.sources import LoraSources
    from layerdiffuse_server.schemas import LoraWeight

    scratch = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    name = write_style_lora(ours, scratch)
    ours.use_lora_files(LoraSources(LoraCache(scratch / "cache", 2**30), LoraFetchPolicy(), folder=scratch))
    styled = params.model_copy(update={"loras": [LoraWeight(path=name, scale=0.8)]})
    started = time.perf_counter()
    ours.generate(styled)  # reads the file into the cache
    first = time.perf_counter() - started

    def with_then_without() -> None:
        ours.generate(styled)
        ours.style_loras.apply([])

    memory: dict[str, float] = {}
    with peak_memory(device, memory):
        seconds, _ = timed_runs(with_then_without, device, args.repeats, 0)
    switch: list[float] = []
    for _ in range(args.repeats):
        sync(device)
        started = time.perf_counter()
        ours.style_loras.apply(styled.loras)
        ours.style_loras.apply([])
        sync(device)
        switch.append(time.perf_counter() - started)
    shutil.rmtree(scratch, ignore_errors=True)
    return [
        Row(
            "text to image with a style LoRA (rank 32, attention)",
            statistics.median(seconds),
            baseline,
            note=f"merge and removal included; the first call, reading the file: {first:.1f} s",
            memory=memory["peak_extra_bytes"],
        ),
        Row("  switching a style LoRA on and off", statistics.median(switch), baseline, note="exact restore"),
    ]


def variant_rows(
    args: argparse.Namespace,
    settings: Settings,
    ours: TransparentSDXLPipeline,
    params: GenerationParams,
    reference: np.ndarray,
    ours_e2e: float,
    *,
    baseline: float,
) -> list[Row]:
    """Each runtime option on a freshly loaded pipeline, against ours in its default mode."""
    rows = []
    compiled_baseline = None
    for variant in args.variants:
        if variant == "compile":
            # A compiled ours is also compared with a compiled plain pipeline, not only with eager.
            compiled_baseline, row = compiled_plain_row(args, settings, ours.device, ours.dtype, params, baseline)
            rows.append(row)
        options = {
            "low": RuntimeOptions(memory_mode="low"),
            "offload": RuntimeOptions(memory_mode="offload"),
            "vae_tiling": RuntimeOptions(vae_tiling=True),
            "channels_last": RuntimeOptions(channels_last=True),
            "compile": RuntimeOptions(compile=True),
        }[variant]
        pipeline = TransparentSDXLPipeline.from_preset(
            args.model,
            settings=settings,
            device=str(ours.device),
            dtype=str(ours.dtype).removeprefix("torch."),
            runtime=options,
        )
        trace_from_next_call(pipeline.sdxl.unet)
        first_started = time.perf_counter()
        _, _, pixels = ours_png(pipeline, params)  # the first call pays for compilation or the CPU trace
        first_call = time.perf_counter() - first_started
        memory: dict[str, float] = {}
        with peak_memory(pipeline.device, memory):
            seconds, _ = timed_runs(lambda p=pipeline: ours_png(p, params), pipeline.device, args.repeats, 0)
        difference = np.abs(pixels.astype(int) - reference.astype(int))
        median = statistics.median(seconds)
        versus_plain = (
            f"; {median / compiled_baseline:.2f}× compiled plain" if variant == "compile" and compiled_baseline else ""
        )
        rows.append(
            Row(
                f"ours, {variant}",
                median,
                ours_e2e,
                note=f"vs ours default{versus_plain}; max pixel Δ {difference.max()}, "
                f"{100 * (difference > 0).mean():.3f}% differ; first call {first_call:.1f} s",
                memory=memory["peak_extra_bytes"],
            )
        )
        del pipeline
        if ours.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def compiled_plain_row(
    args: argparse.Namespace,
    settings: Settings,
    device: torch.device,
    dtype: torch.dtype,
    params: GenerationParams,
    baseline: float,
) -> tuple[float, Row]:
    plain = load_plain(args.model, settings, device, dtype)
    plain.unet = torch.compile(plain.unet)
    started = time.perf_counter()
    plain_png(plain, params)
    first_call = time.perf_counter() - started
    seconds, _ = timed_runs(functools.partial(plain_png, plain, params), device, args.repeats, 0)
    compiled = statistics.median(seconds)
    return compiled, Row(
        "plain diffusers SDXL, UNet compiled", compiled, baseline, note=f"first call {first_call:.1f} s"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_phase(
    args: argparse.Namespace, settings: Settings, ours: TransparentSDXLPipeline, direct: float
) -> list[Row]:
    """The same engine behind the API, called with the official Python client over HTTPS."""
    import uvicorn

    from layerdiffuse_server.api import create_app
    from layerdiffuse_server.auth import issue_key
    from layerdiffuse_server.server.bootstrap import build_services
    from layerdiffuse_server.server.tls import local_tls
    from layerdiffuse_server.worker import GenerationWorker

    data_dir = Path(tempfile.mkdtemp(prefix="layerdiffuse-bench-"))
    port = free_port()
    server_settings = settings.model_copy(
        update={"data_dir": data_dir, "port": port, "tls_port": port, "public_url": f"https://127.0.0.1:{port}"}
    )
    services = build_services(server_settings, lambda: ours, model_name=args.model)
    key = issue_key(services.store.keys, "benchmark").value
    tls = local_tls(data_dir / "tls", [])
    config = uvicorn.Config(
        create_app(services),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started or not (services.local_worker and services.local_worker.ready):
        time.sleep(0.05)

    os.environ |= {
        "FAL_RUN_HOST": f"127.0.0.1:{port}/run",
        "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{port}/queue",
        "SSL_CERT_FILE": str(tls.ca),
    }
    import fal_client  # reads the hosts above when imported

    client = fal_client.SyncClient(key=key)
    arguments = {
        "prompt": PROMPT,
        "seed": 42,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "width": args.width,
        "height": args.height,
    }
    rows = []
    try:
        run_seconds, _ = timed_runs(lambda: client.run(APP_ID, arguments=arguments), ours.device, args.repeats, 1)
        subscribe_seconds, _ = timed_runs(
            lambda: client.subscribe(APP_ID, arguments=arguments), ours.device, args.repeats, 0
        )
        for name, seconds in (
            ("fal_client.run (sync)", run_seconds),
            ("fal_client.subscribe (queue)", subscribe_seconds),
        ):
            latency = statistics.median(seconds)
            rows.append(
                Row(
                    f"server: {name}",
                    latency,
                    direct,
                    note=f"+{(latency - direct) * 1000:.0f} ms vs direct call",
                    extra={"samples": seconds},
                )
            )

        total = args.clients * args.requests_per_client
        worker = services.local_worker
        assert isinstance(worker, GenerationWorker)
        for batch in sorted({1, args.max_batch_size}):
            worker.max_batch_size = batch

            def one_client() -> None:
                for index in range(args.requests_per_client):
                    client.subscribe(APP_ID, arguments=arguments | {"seed": index})

            threads = [threading.Thread(target=one_client) for _ in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            rows.append(
                Row(
                    f"server: {args.clients} clients × {args.requests_per_client}, batches of ≤{batch}",
                    wall / total,
                    direct,
                    note=f"{total / wall:.2f} images/s (direct calls one after another: {1 / direct:.2f})",
                )
            )
    finally:
        server.should_exit = True
        thread.join(30)
    return rows


# -- output ----------------------------------------------------------------------------------


def contended_rows(args: argparse.Namespace) -> list[Row]:
    """``layerdiffuse generate`` as a user runs it (a fresh process: loading included) with a busy loop
    per core beside it, with OpenMP waits that sleep (the default) and that spin (torch's own default,
    ``OMP_WAIT_POLICY=ACTIVE``): the policy is fixed when torch loads, hence a process each."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for policy, label in (("PASSIVE", "waits that sleep (default)"), ("ACTIVE", "waits that spin")):
                command = [
                    sys.executable, "-m", "layerdiffuse_server", "generate", PROMPT, "--negative", NEGATIVE,
                    "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--seed", "42",
                    "--width", str(args.width), "--height", str(args.height), "--steps", str(args.steps),
                    "--guidance", str(args.guidance), "-o", str(Path(folder) / "contended.png"), "--quiet",
                    *(["--threads", str(args.threads)] if args.threads else []),
                ]  # fmt: skip
                env = {**os.environ, "OMP_WAIT_POLICY": policy, "COLUMNS": "400"}
                started = time.perf_counter()
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
                seconds = time.perf_counter() - started
                if done.returncode != 0:
                    raise RuntimeError(f"generate failed under contention: {done.stderr[-2000:]}")
                denoising = re.search(r"denoising ([\d.]+) s", done.stderr)
                baseline = rows[0].seconds if rows else seconds
                note = f"{len(hogs)} busy loops beside it; denoising {denoising[1] if denoising else '?'} s"
                rows.append(Row(f"contended: generate, {label}", seconds, baseline, note=note))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return rows


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def print_table(rows: list[Row], title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("measurement")
    table.add_column("time", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("peak memory +", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.seconds * 1000:.0f} ms" if row.seconds is not None else "–",
            f"{row.ratio:.2f}×" if row.ratio is not None and not row.name.startswith("plain") else "",
            f"{row.memory / 2**30:.2f} GB" if row.memory is not None else "",
            row.note,
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="preset: tiny (CPU-sized), sdxl-random, sdxl")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=1024, help="width and height")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the median is shown)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--passes", default="8,4,2,1", help='decoder pass counts to time alone ("" skips those rows)')
    parser.add_argument("--variants", default="", help="comma list: low, offload, vae_tiling, channels_last, compile")
    parser.add_argument(
        "--pipeline-images", type=int, default=4, help="generations per PNG pipelining measurement (0 skips them)"
    )
    parser.add_argument("--no-server", action="store_true", help="skip the server measurements")
    parser.add_argument("--no-images", action="store_true", help="skip image to image and the conditioned layers")
    parser.add_argument("--clients", type=int, default=4, help="concurrent fal_client users for throughput")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=4, help="server batching compared against 1")
    parser.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/…)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's); 1 keeps CPU timings steady on a busy host"
    )
    parser.add_argument(
        "--contended",
        action="store_true",
        help="also time `layerdiffuse generate` beside a busy loop per core, with sleeping and spinning waits",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    args.width = args.height = args.size
    args.passes = {int(value) for value in args.passes.split(",") if value}
    args.variants = [value for value in args.variants.split(",") if value]

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    settings = Settings()
    report: dict[str, Any] = {}
    ours = engine_phase(args, settings, report)
    rows: list[Row] = report.pop("rows")
    params, reference = report.pop("params"), report.pop("reference_pixels")
    rows += image_rows(ours, params, reference, ours.device, args, report["baseline"])
    rows += lora_rows(ours, params, ours.device, args, report["baseline"])
    if not args.no_server:
        rows += server_phase(args, settings, ours, report["direct_seconds"])
    # Variants last, compile last of all: its compiled graphs and worker pool stay in the process.
    args.variants.sort(key=lambda variant: variant == "compile")
    rows += variant_rows(args, settings, ours, params, reference, report["direct_seconds"], baseline=report["baseline"])
    if args.contended:
        rows += contended_rows(args)

    device = device_description(ours.device)
    # What else ran meanwhile: on a shared CPU host identical runs differ by the load around them.
    load = {"before": load_before[0], "after": os.getloadavg()[0]}
    title = (
        f"{args.model} · {args.width}×{args.height} · {args.steps} steps · CFG {args.guidance:g} · "
        f"{str(ours.dtype).removeprefix('torch.')} · {device} · load average {load['before']:.2f} → {load['after']:.2f}"
    )
    print_table(rows, title)
    import diffusers

    results = {
        "device": device,
        "model": args.model,
        "dtype": str(ours.dtype).removeprefix("torch."),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "repeats": args.repeats,
        "load_average": load,
        "versions": {
            "layerdiffuse-server": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        **report,
        "rows": [
            {"name": row.name.strip(), "seconds": row.seconds, "ratio": row.ratio, "peak_extra_bytes": row.memory,
             "note": row.note, **row.extra}
            for row in rows
        ],
    }  # fmt: skip
    slug = f"{ours.device.type}-{args.model}-{args.width}x{args.height}-{args.steps}steps"
    path = args.json or Path(__file__).parent / "results" / f"{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
