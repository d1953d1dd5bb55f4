#!/usr/bin/env python3
"""Host memory of the conditioned-layer models: what the process holds after each model's first use.

The one UNet is switched as the worker switches it: text to image (the transparent attention
weights) at load, then each conditioned model named (loaded and merged on first use, as a request
for it does), back to text to image after each. After every switch the process's memory is read
from ``/proc/self``: RSS with its anonymous and file-backed parts, USS and PSS (``smaps_rollup``)
and the peak RSS so far. The UNet has SDXL's full topology with random weights (``--spec sdxl``,
fp16 as on a GPU, where the UNet itself would not be in host memory) or the tiny test topology;
the weight files are random files in the official formats, written once into ``--folder`` by a
separate process (several GB for SDXL, delete them afterwards), so writing them is not measured.

    python benchmarks/layer_memory.py --spec sdxl --models fg2ble bgble2fg --folder /tmp/layer-memory
    python benchmarks/layer_memory.py --spec tiny                 # seconds

The same script measures another checkout's code when run with ``PYTHONPATH`` at its ``src``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from layerdiffuse_server.cpu_threads import prepare_environment

prepare_environment()

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from layerdiffuse_server.engine.making.random_weights import (  # noqa: E402
    CONDITION_LATENTS,
    SDXL_SPEC,
    TINY_SPEC,
    ArchitectureSpec,
    build_unet,
    conditioned_diff_state_dict,
    forge_lora_state_dict,
)
from layerdiffuse_server.engine.pipelines.layers import ensure_layer_model  # noqa: E402
from layerdiffuse_server.engine.weights.layer_weights import TEXT_TO_IMAGE, transparency_patch  # noqa: E402
from layerdiffuse_server.engine.weights.unet_patches import UNetPatches  # noqa: E402

SPECS: dict[str, ArchitectureSpec] = {"sdxl": SDXL_SPEC, "tiny": TINY_SPEC}
ATTENTION_FILE = "layer_xl_transparent_attn.safetensors"
GIB = 2**30


def build(spec: ArchitectureSpec, device: str = "cpu") -> Any:
    """The UNet in the spec's dtype, built directly in it (building SDXL in float32 doubles peak RAM)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(spec.dtype)
    try:
        with torch.device(device):
            return build_unet(spec).eval()
    finally:
        torch.set_default_dtype(previous)


def write_files(spec: ArchitectureSpec, folder: Path, models: list[str]) -> None:
    """The random weight files the measurement loads, each written once (from a meta-device UNet)."""
    folder.mkdir(parents=True, exist_ok=True)
    unet = build(spec, "meta")
    if not (folder / ATTENTION_FILE).exists():
        shapes = {key: value.shape for key, value in unet.state_dict().items()}
        lora = forge_lora_state_dict(shapes, spec.lora_rank, torch.Generator().manual_seed(1))
        save_file(lora, folder / ATTENTION_FILE)
        del lora
    for model in models:
        path = folder / f"layer_xl_{model}.safetensors"
        if not path.exists():
            state = conditioned_diff_state_dict(unet, model, seed=2)  # type: ignore[arg-type]
            save_file(state, path)
            del state
            gc.collect()


def memory() -> dict[str, float]:
    """This process's memory in GiB, from /proc/self (Linux)."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024 / GIB
    rollup: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        rollup[name] = int(value.split()[0]) * 1024
    fields["USS"] = (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / GIB
    fields["PSS"] = rollup.get("Pss", 0) / GIB
    return fields


def kept(patches: UNetPatches) -> tuple[float, float]:
    """(host GiB, disk GiB) of the kept base values, whichever of the two this code keeps."""
    host = getattr(patches, "host_bytes", 0)
    disk = getattr(patches, "kept_bytes", 0)
    return host / GIB, disk / GIB


def measure(spec_name: str, folder: Path, models: list[str]) -> list[dict[str, Any]]:
    """Load the UNet with the text-to-image patch, then each model in turn; a row after every switch."""
    spec = SPECS[spec_name]
    rows: list[dict[str, Any]] = []

    def row(stage: str, seconds: float | None = None, cpu: float | None = None) -> None:
        gc.collect()
        host, disk = kept(patches)
        rows.append({"stage": stage, **memory(), "kept_host": host, "kept_disk": disk, "wall": seconds, "cpu": cpu})

    torch.manual_seed(0)
    unet = build(spec)
    patches = UNetPatches(unet)
    row("UNet built")
    keys, merge = transparency_patch(folder / ATTENTION_FILE, unet)
    patches.register(TEXT_TO_IMAGE, keys, merge)
    patches.use(TEXT_TO_IMAGE)
    row("engine loaded (text to image)")
    # ensure_layer_model reads only these two of the pipeline; the rest of it has no part here.
    pipeline: Any = SimpleNamespace(
        patches=patches, layer_files={model: str(folder / f"layer_xl_{model}.safetensors") for model in models}
    )
    for model in models:
        for target, stage in ((model, f"first use of {model}"), (TEXT_TO_IMAGE, "back to text to image")):
            wall, cpu = time.perf_counter(), time.process_time()
            if target == model:
                ensure_layer_model(pipeline, model)  # type: ignore[arg-type]
            patches.use(target)
            row(stage, time.perf_counter() - wall, time.process_time() - cpu)
    return rows


def show(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("stage", "RSS", "anon", "file", "USS", "PSS", "peak RSS", "base kept: host", "disk", "switch s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in rows:
        switch = "" if row["wall"] is None else f"{row['wall']:.1f} ({row['cpu']:.1f} cpu)"
        table.add_row(
            row["stage"],
            *(
                f"{row[key]:.2f}"
                for key in ("VmRSS", "RssAnon", "RssFile", "USS", "PSS", "VmHWM", "kept_host", "kept_disk")
            ),
            switch,
        )
    Console(width=160).print(table)
    print("GiB; switch s: wall seconds (CPU seconds of the process) of loading and merging, or restoring")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", choices=sorted(SPECS), default="tiny")
    parser.add_argument("--models", nargs="+", choices=sorted(CONDITION_LATENTS), default=["fg2ble", "bgble2fg"])
    parser.add_argument("--folder", type=Path, help="where the random weight files are (written if missing)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="layer-memory-") as scratch:
        folder = args.folder or Path(scratch)
        if args.measure_only:
            rows = measure(args.spec, folder, args.models)
            print(json.dumps(rows))
            return
        write_files(SPECS[args.spec], folder, args.models)
        # A fresh process, so that nothing of writing the files is in its memory.
        command = [sys.executable, __file__, "--spec", args.spec, "--folder", str(folder), "--measure-only"]
        done = subprocess.run([*command, "--models", *args.models], capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    dtype = str(SPECS[args.spec].dtype).removeprefix("torch.")
    show(rows, f"Host memory of the layer models ({args.spec} UNet, {dtype}, torch {torch.__version__})")
    if args.json:
        args.json.write_text(json.dumps({"spec": args.spec, "models": args.models, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
