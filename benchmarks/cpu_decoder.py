#!/usr/bin/env python3
"""The transparent decoder's CPU path against what it replaced, and end to end against plain
diffusers, in process CPU time on one thread: on a shared 2-core host wall time measures the
neighbours, CPU time the work.

Four runs interleave round by round in one process, so drift of the host hits all of them alike:
plain diffusers SDXL (the baseline), ours as it runs (its UNet traced, as a server runs it once
warm: ``engine.pipelines.unet_tracing``), ours with the UNet run eagerly as plain diffusers runs
it, which leaves the transparent decoder as the difference, and that with the decoder's previous
CPU path as well (the network as a module, the passes combined by ``torch.median``). All of ours
must give identical pixels; the script says so or fails.

The process keeps freed memory for reuse, as the engine does (``layerdiffuse_server.cpu_memory``);
``--allocator-baseline`` runs the same benchmark again in a process with glibc's default allocator,
whose table shows what that is worth, each against plain diffusers in its own process.

    python benchmarks/cpu_decoder.py --model tiny --size 256 --steps 20 --rounds 6 --allocator-baseline
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench  # before torch: it prepares the environment torch reads at import
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from layerdiffuse_server.cpu_memory import keep_freed_memory
from layerdiffuse_server.engine.networks import decoder as decoder_module
from layerdiffuse_server.engine.pipelines import unet_tracing
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.schemas import GenerationParams
from layerdiffuse_server.settings import Settings


@contextmanager
def previous_decoder_path(pipeline: TransparentSDXLPipeline) -> Iterator[None]:
    """The decoder as it ran on a CPU before: its network module called directly, ``torch.median``."""
    decoder = pipeline.decoder
    current_median = decoder_module.lower_median

    def module_forward() -> decoder_module.Forward:
        return decoder.network

    decoder._forward = module_forward
    decoder_module.lower_median = lambda values: torch.median(torch.stack(values), dim=0).values
    try:
        yield
    finally:
        del decoder._forward
        decoder_module.lower_median = current_median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="a preset (tiny, sdxl-random, demo)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds after one warm-up round")
    parser.add_argument(
        "--allocator-baseline", action="store_true", help="then the same in a process with glibc's default allocator"
    )
    args = parser.parse_args(argv)
    same = [f"--model={args.model}", f"--size={args.size}", f"--steps={args.steps}", f"--rounds={args.rounds}"]
    identical = measure(args)
    if args.allocator_baseline:
        sys.stdout.flush()
        # Setting any of glibc's own MALLOC_ variables (this one to its default, "off") leaves
        # the allocator as glibc starts it.
        env = {**os.environ, "MALLOC_PERTURB_": "0"}
        done = subprocess.run([sys.executable, __file__, *same], env=env, check=False)
        identical = identical and done.returncode == 0
    return 0 if identical else 1


def measure(args: argparse.Namespace) -> bool:
    """One interleaved benchmark in this process; whether all of ours gave the same pixels."""
    torch.set_num_threads(1)
    # The pipeline's stage timer reads time.perf_counter: this makes the decoder column CPU time too.
    time.perf_counter = time.process_time

    settings = Settings(device="cpu")
    ours = TransparentSDXLPipeline.from_preset(args.model, settings=settings, device="cpu")
    plain = bench.load_plain(args.model, settings, ours.device, ours.dtype)
    unet_tracing.trace_from_next_call(ours.sdxl.unet)  # in the warm-up round, as a warm server runs
    params = GenerationParams(
        prompt=bench.PROMPT, negative_prompt=bench.NEGATIVE, width=args.size, height=args.size,
        num_inference_steps=args.steps, guidance_scale=8.0, seed=42,
    )  # fmt: skip

    seconds: dict[str, list[float]] = {"plain": [], "previous": [], "eager_unet": [], "current": []}
    decode_seconds: dict[str, list[float]] = {name: [] for name in seconds if name != "plain"}
    pixels: dict[str, np.ndarray] = {}
    for round_ in range(args.rounds + 1):
        for name in seconds:
            started = time.process_time()
            if name == "plain":
                bench.plain_png(plain, params)
            elif name == "previous":
                with previous_decoder_path(ours), unet_tracing.eager(ours.sdxl.unet):
                    _, timings, pixels[name] = bench.ours_png(ours, params)
            elif name == "eager_unet":
                with unet_tracing.eager(ours.sdxl.unet):
                    _, timings, pixels[name] = bench.ours_png(ours, params)
            else:
                _, timings, pixels[name] = bench.ours_png(ours, params)
            if round_:  # the first round warms up (and takes the trace)
                seconds[name].append(time.process_time() - started)
                if name != "plain":
                    decode_seconds[name].append(timings["transparent_decode"])
    identical = all(np.array_equal(pixels["current"], pixels[name]) for name in ("previous", "eager_unet"))

    median = {name: statistics.median(values) for name, values in seconds.items()}
    # Asking again is harmless (the same settings) and says whether they are in effect here.
    allocator = "freed memory kept" if keep_freed_memory() else "glibc's defaults"
    table = Table(
        title=f"CPU, 1 thread, {args.model} {args.size}², {args.steps} steps, medians of {args.rounds}; "
        f"allocator: {allocator}"
    )
    # Each round's run against the baseline of the same round: drift of the host between rounds
    # then cancels out instead of widening the spread.
    ratios = {
        name: [own / base for own, base in zip(values, seconds["plain"], strict=True)]
        for name, values in seconds.items()
    }
    # The fastest round is the one its neighbours disturbed least (what ``timeit`` reports): on a
    # shared host, where a busy hyperthread sibling slows every instruction, the two can differ.
    fastest = {name: min(values) for name, values in seconds.items()}
    for column in (
        "run",
        "CPU time",
        "ratio (median of rounds)",
        "ratio range",
        "fastest: ratio",
        "transparent decode",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    labels = {
        "plain": "plain diffusers SDXL → RGB PNG (baseline)",
        "previous": "ours, UNet eager, previous decoder path (module, torch.median)",
        "eager_unet": "ours, UNet eager (traced decoder, sorting-network median)",
        "current": "ours (traced UNet and decoder)",
    }
    for name, label in labels.items():
        decode = f"{statistics.median(decode_seconds[name]) * 1000:.0f} ms" if name in decode_seconds else ""
        spread = f"{min(ratios[name]):.2f}–{max(ratios[name]):.2f}×" if name != "plain" else ""
        best = f"{fastest[name] * 1000:.0f} ms: {fastest[name] / fastest['plain']:.2f}×"
        table.add_row(
            label, f"{median[name] * 1000:.0f} ms", f"{statistics.median(ratios[name]):.2f}×", spread, best, decode
        )
    Console().print(table)
    print(f"RGBA of ours, all three ways: {'identical' if identical else 'DIFFERENT'}")
    return identical


if __name__ == "__main__":
    raise SystemExit(main())
