"""The benchmark script keeps working: a tiny run prints every measurement and writes them as JSON.

No timing is asserted here (speed is the benchmark's business, not the tests'); what is checked
is that each measurement exists and is a positive time, so a broken phase cannot go unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerdiffuse_server.settings import Settings

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench.py"
ENCODERS = [
    "fast (fpng)",
    "balanced (Pillow, zlib 1 + RLE)",
    "small (Pillow, the shorter of balanced and zlib 9 + optimize)",
    "Pillow's default (zlib 6)",
]
PICTURES = ["a generated-looking asset", "this model's output"]
FINISHING = [
    f"1 generation, {encoder}, finished {how}"
    for encoder in ("default encoder", "Pillow's default")
    for how in ("in line", "on the output stage")
]
PNG_ROWS = [f"PNG, {picture}: {encoder}" for picture in PICTURES for encoder in ENCODERS] + FINISHING


@pytest.mark.slow
def test_a_tiny_cpu_run_measures_every_phase(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAL_")}
    env |= {"LAYERDIFFUSE_HOME": str(settings.home), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, str(SCRIPT), "--model", "tiny", "--device", "cpu", "--size", "64", "--steps", "2",
        "--repeats", "1", "--warmup", "0", "--passes", "8,1", "--variants", "low",
        "--clients", "2", "--requests-per-client", "1", "--max-batch-size", "2", "--contended",
        "--pipeline-images", "1", "--threads", "1", "--json", str(output),
    ]  # fmt: skip
    # One thread: the contended rows' generate runs beside a busy loop per core, and with several
    # threads every OpenMP barrier waits on a thread the loops have preempted (minutes on 2 cores).
    # The rows and their notes are what is checked here, not their speed.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plain diffusers SDXL" in done.stdout and "transparent decode (8 passes" in done.stdout

    results = json.loads(output.read_text())
    assert results["model"] == "tiny" and results["width"] == 64 and results["device"].startswith("CPU")
    names = [row["name"] for row in results["rows"]]
    expected = [
        "plain diffusers SDXL → RGB PNG (baseline)",
        "baseline PNG encode",
        "ours end to end → RGBA PNG",
        "text encoding",
        "denoising",
        "SDXL VAE decode",
        "transparent decode (8 passes, 1 per call)",
        "safety check",
        "PNG encode",
        *PNG_ROWS,
        "transparent decode: 8 passes, 8 per call",
        "transparent decode: 8 passes, 4 per call",
        "transparent decode: 8 passes, 2 per call",
        "transparent decode: 8 passes, 1 per call",
        "transparent decode: 1 passes, 1 per call",
        "image to image, strength 0.7",
        "foreground to blended (fg2ble)",
        "switching the UNet: fg2ble → transparent → fg2ble",
        "text to image with a style LoRA (rank 32, attention)",
        "switching a style LoRA on and off",
        "server: fal_client.run (sync)",
        "server: fal_client.subscribe (queue)",
        "server: 2 clients × 1, batches of ≤1",
        "server: 2 clients × 1, batches of ≤2",
        "ours, low",
        "contended: generate, waits that sleep (default)",
        "contended: generate, waits that spin",
    ]
    assert names == expected
    assert all(row["seconds"] > 0 for row in results["rows"])
    assert results["rows"][2]["png_bytes"] > 0 and results["rows"][2]["ratio"] > 0
    by_name = {row["name"]: row for row in results["rows"]}
    assert all(by_name[name]["png_bytes"] > 0 and by_name[name]["cpu_seconds"] >= 0 for name in PNG_ROWS[:8])
    assert all(by_name[name]["images_per_second"] > 0 for name in PNG_ROWS[8:])
    assert len(results["rows"][0]["samples"]) == 1 and results["baseline"] == results["rows"][0]["seconds"]
    assert "max pixel Δ 0," in results["rows"][-3]["note"]  # the low-memory mode keeps every pixel
    assert "busy loops beside it; denoising" in results["rows"][-1]["note"]


def test_the_cpu_decoder_benchmark_compares_ours_three_ways(settings: Settings, tiny_folder: Path) -> None:
    """``cpu_decoder.py`` exits non-zero when ours with the UNet traced or eager, or with the previous
    decoder path, differ in a single pixel; with ``--allocator-baseline`` it measures again in a
    process on glibc's default allocator."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("FAL_", "MALLOC_"))}
    env |= {"LAYERDIFFUSE_HOME": str(settings.home), "HF_HUB_OFFLINE": "1"}
    env["COLUMNS"] = "200"  # the table's labels on one line each
    script = SCRIPT.parent / "cpu_decoder.py"
    command = [sys.executable, str(script), "--size", "64", "--steps", "2", "--rounds", "1", "--allocator-baseline"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("RGBA of ours, all three ways: identical") == 2
    assert "allocator: freed memory kept" in done.stdout and "allocator: glibc's defaults" in done.stdout
    for label in (
        "plain diffusers SDXL",
        "previous decoder path",
        "UNet eager (traced decoder",
        "traced UNet and decoder",
    ):
        assert label in done.stdout, done.stdout
