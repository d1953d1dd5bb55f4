#!/usr/bin/env python3
"""The PNG stage: what each encoder costs on a transparent asset that looks generated and on the
model's own output, and what finishing batches on the worker's output stage gains in throughput.

An encoder's time depends on the pixels: a random-weight model's output is noise, which compresses
slowly and badly, so the stage is timed on both. Every encoder's file is decoded again with Pillow
and compared with the input, so a row exists only for a lossless, standard straight-alpha PNG.

    python benchmarks/png_stage.py --size 1024          # the encoders alone, no model: seconds

``bench.py`` adds these rows to its table, with the pipelining rows on its own model.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from layerdiffuse_server.png_encoding import PNG_COMPRESSIONS, PngCompression, encode_png, fast_encoder_available
from layerdiffuse_server.worker.output_stage import OutputStage


@dataclass(frozen=True)
class Measurement:
    name: str
    seconds: float  # wall time, median
    note: str = ""
    cpu_seconds: float | None = None  # the encoding thread's CPU time, median: steady on a busy host
    size_bytes: int | None = None
    images_per_second: float | None = None


def _pillow_default(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")  # zlib level 6, adaptive filters: Pillow's default
    return buffer.getvalue()


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    """The product's choices, plus Pillow's default (the encoder before ``fast``) as the reference."""
    labels: dict[PngCompression, str] = {
        "fast": "fpng" if fast_encoder_available() else "zlib 1 + RLE (fpng missing)",
        "balanced": "Pillow, zlib 1 + RLE",
        "small": "Pillow, the shorter of balanced and zlib 9 + optimize",
    }
    chosen = {
        f"{compression} ({labels[compression]})": lambda rgba, c=compression: encode_png(rgba, c)
        for compression in PNG_COMPRESSIONS
    }
    return chosen | {"Pillow's default (zlib 6)": _pillow_default}


def generated_looking_asset(size: int) -> np.ndarray:
    """A shaded object with anti-aliased edges and a soft drop shadow, a little grain where it is
    visible, and smooth colour under alpha 0 (a transparent decoder predicts colour everywhere):
    what a real LayerDiffuse output is made of, reproducibly and without weights. At 1024² it
    compresses like the reference's example output (about 0.5–0.9 MB at Pillow's default)."""
    chance = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def ellipse_alpha(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        reach = np.hypot((x - cx) / rx, (y - cy) / ry)
        distance_px = (reach - 1) * min(rx, ry) * size
        return np.clip(0.5 - distance_px / 1.5, 0, 1)  # a 1.5-pixel anti-aliased edge

    body = ellipse_alpha(0.5, 0.58, 0.32, 0.26)
    lid = ellipse_alpha(0.5, 0.3, 0.13, 0.07)
    ring = np.clip(0.5 - (np.abs(np.hypot(x - 0.84, y - 0.56) - 0.09) - 0.022) * size / 1.5, 0, 1)
    solid = np.maximum(np.maximum(body, lid), ring)
    shadow = 0.45 * np.exp(-(((x - 0.52) / 0.3) ** 2) - ((y - 0.9) / 0.035) ** 2)
    alpha = solid + shadow * (1 - solid)

    light = np.clip(1.15 - 1.1 * np.hypot(x - 0.38, y - 0.4), 0.25, 1.0)
    highlight = np.exp(-(((x - 0.4) / 0.05) ** 2) - ((y - 0.45) / 0.03) ** 2)
    base = np.array([0.15, 0.55, 0.62], np.float32)
    colour = base * light[..., None] + highlight[..., None] * 0.6
    behind = np.stack([0.3 + 0.2 * x, 0.35 + 0.1 * y, 0.4 - 0.1 * x], axis=-1)  # under the shadow and beyond
    colour = colour * solid[..., None] + behind * (1 - solid[..., None])
    rgb = colour * 255 + chance.normal(0, 1.0, size=colour.shape) * solid[..., None]
    rgba = np.concatenate([rgb, alpha[..., None] * 255], axis=-1)
    return np.clip(np.rint(rgba), 0, 255).astype(np.uint8)


def encoder_measurements(rgba: np.ndarray, picture: str, repeats: int = 3) -> list[Measurement]:
    """Each encoder on ``rgba``: median wall and CPU time of ``repeats`` runs after one warm-up."""
    results = []
    for name, encode in encoders().items():
        data = encode(rgba)
        if not np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")), rgba):
            raise AssertionError(f"{name} did not write the pixels it was given")
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.thread_time()
            encode(rgba)
            cpus.append(time.thread_time() - cpu)
            walls.append(time.perf_counter() - wall)
        raw = rgba.size
        note = f"{len(data) / 1e6:.2f} MB ({len(data) / raw:.0%} of raw), CPU {statistics.median(cpus) * 1000:.0f} ms"
        results.append(
            Measurement(
                f"PNG, {picture}: {name}",
                statistics.median(walls),
                note,
                cpu_seconds=statistics.median(cpus),
                size_bytes=len(data),
            )
        )
    return results


def pipelining_measurements(
    generate: Callable[[], list[np.ndarray]],
    count: int,
    compressions: dict[str, Callable[[np.ndarray], bytes]] | None = None,
) -> list[Measurement]:
    """Images per second over ``count`` generations, each finished (encoded and written to a file)
    in line, as the worker did before its output stage, and on the output stage's thread, as the
    worker does now, so the next generation starts while the previous one is finished."""
    compressions = compressions or {"default encoder": encode_png, "Pillow's default": _pillow_default}
    results = []
    with tempfile.TemporaryDirectory(prefix="png-stage-") as folder:
        written = 0

        def finish(images: list[np.ndarray], encode: Callable[[np.ndarray], bytes]) -> None:
            nonlocal written
            for rgba in images:
                path = Path(folder) / f"{written}.png"
                path.write_bytes(encode(rgba))
                written += 1

        for label, encode in compressions.items():
            for staged in (False, True):
                stage = OutputStage(name="bench-outputs")
                started, images = time.perf_counter(), 0
                for _ in range(count):
                    batch = generate()
                    images += len(batch)
                    if staged:
                        stage.submit(lambda batch=batch, encode=encode: finish(batch, encode))
                    else:
                        finish(batch, encode)
                stage.drain()
                seconds = time.perf_counter() - started
                how = "on the output stage" if staged else "in line"
                results.append(
                    Measurement(
                        f"{count} generation{'s' * (count != 1)}, {label}, finished {how}",
                        seconds,
                        f"{images / seconds:.3g} images/s",
                        images_per_second=images / seconds,
                    )
                )
    return results


def print_measurements(measurements: list[Measurement], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column, justify in (("measurement", "left"), ("time", "right"), ("note", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for measurement in measurements:
        table.add_row(measurement.name, f"{measurement.seconds * 1000:.1f} ms", measurement.note)
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="width and height")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    noise = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 4), dtype=np.uint8)
    rows = encoder_measurements(generated_looking_asset(args.size), "asset", args.repeats)
    rows += encoder_measurements(noise, "noise", args.repeats)
    print_measurements(rows, f"PNG encoders · {args.size}×{args.size} RGBA · medians of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
