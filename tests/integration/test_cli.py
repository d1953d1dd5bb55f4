"""The ``layerdiffuse`` command, run as a user runs it (and, where a test is about what a flag does
to the image rather than about the process, run in this one)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.demo.quality import judge
from layerdiffuse_server.engine.presets import DEMO_SIZE
from layerdiffuse_server.settings import Settings


def run_cli(*args: str, settings: Settings, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LAYERDIFFUSE_HOME": str(settings.home), "LAYERDIFFUSE_DEVICE": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "layerdiffuse_server", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=900,
    )


def run_cli_here(*args: str, settings: Settings) -> subprocess.CompletedProcess:
    """:func:`run_cli`'s command in this process: for tests of what a flag does to the output, not
    of the process, since a fresh interpreter spends most of a tiny generate importing torch. The
    command's own logging setup (it replaces the root logger's handlers) is undone afterwards."""
    from typer.testing import CliRunner

    from layerdiffuse_server.cli import app

    root, ours = logging.getLogger(), logging.getLogger("layerdiffuse_server")
    handlers, levels = root.handlers[:], (root.level, ours.level)
    environment = {"LAYERDIFFUSE_HOME": str(settings.home), "LAYERDIFFUSE_DEVICE": "cpu"}
    try:
        result = CliRunner().invoke(app, list(args), env=environment)
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, stderr)


def test_generate_writes_an_rgba_png_and_a_preview(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    output, preview = tmp_path / "a.png", tmp_path / "a-preview.png"
    done = run_cli(
        "generate",
        "a red apple",
        "-o",
        str(output),
        "--model",
        "tiny",
        "--seed",
        "7",
        "--width",
        "128",
        "--height",
        "192",
        "--steps",
        "3",
        "--preview",
        str(preview),
        settings=settings,
    )
    assert done.returncode == 0, done.stderr
    image = Image.open(output)
    assert image.mode == "RGBA" and image.size == (128, 192)
    assert Image.open(preview).mode == "RGB"
    assert "seed 7" in done.stderr


def test_num_images_writes_numbered_files(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    done = run_cli(
        "generate",
        "x",
        "-o",
        str(tmp_path / "b.png"),
        "--model",
        "tiny",
        "--seed",
        "1",
        "-n",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        settings=settings,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-0.png", "b-1.png"]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({}, "CPU threads, passive waits"),  # the default: one thread per core, waits that sleep
        ({"LAYERDIFFUSE_THREADS": "1"}, "; 1 CPU thread, passive waits"),
        # The user's own policy wins; the flag wins over OpenMP's thread count.
        ({"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "1", "--threads": "2"}, "; 2 CPU threads, active waits"),
    ],
)
def test_threads_and_their_wait_policy_reach_torch(
    settings: Settings, tiny_folder: Path, tmp_path: Path, given: dict[str, str], said: str
) -> None:
    """As the command reports them after generating, from torch.get_num_threads() and the environment torch
    loaded with; the policy is set by the command itself, so the test's own environment must not carry it."""
    inherited = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "LAYERDIFFUSE_THREADS")
    env = {name: value for name, value in os.environ.items() if name not in inherited}
    env |= {"LAYERDIFFUSE_HOME": str(settings.home), "LAYERDIFFUSE_DEVICE": "cpu", "COLUMNS": "400"}
    env |= {name: value for name, value in given.items() if not name.startswith("--")}
    flags = ["--threads", given["--threads"]] if "--threads" in given else []
    command = [sys.executable, "-m", "layerdiffuse_server", "generate", "x", "--model", "tiny", "--steps", "1"]
    command += ["--width", "64", "--height", "64", "-o", str(tmp_path / "t.png"), "--quiet", *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert said in done.stderr


def test_bad_sizes_are_reported_by_flag(settings: Settings) -> None:
    done = run_cli("generate", "x", "--model", "tiny", "--width", "3000", settings=settings)
    assert done.returncode == 2
    assert "--width" in done.stderr and "2048" in done.stderr


def test_missing_weights_error_offline(settings: Settings, tmp_path: Path) -> None:
    done = run_cli(
        "generate",
        "x",
        "--model",
        "sdxl",
        settings=settings,
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
    )
    assert done.returncode == 1
    assert "layerdiffuse download" in done.stderr and "stabilityai/stable-diffusion-xl-base-1.0" in done.stderr


def test_help_lists_the_commands(settings: Settings) -> None:
    done = run_cli("--help", settings=settings)
    assert done.returncode == 0
    for command in ("generate", "download", "serve", "train-demo"):
        assert command in done.stdout


@pytest.mark.parametrize("role", ["serve", "worker"])
def test_the_roles_that_run_requests_take_the_lora_settings(settings: Settings, role: str) -> None:
    done = run_cli(role, "--help", settings=settings, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for flag in ("--lora-folder", "--max-lora-bytes", "--lora-disk-bytes", "--webhook-allow-network"):
        assert flag in done.stdout, flag
    assert "LAYERDIFFUSE_LORA_FOLDER" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (512, 768)])
def test_full_size_generation_with_the_tiny_model(
    settings: Settings, tiny_folder: Path, tmp_path: Path, width: int, height: int
) -> None:
    output = tmp_path / "apple.png"
    done = run_cli_here(
        "generate",
        "a red apple",
        "-o",
        str(output),
        "--model",
        "tiny",
        "--seed",
        "7",
        "--width",
        str(width),
        "--height",
        str(height),
        "--steps",  # the sizes are what is tested: the decoder at full size, not the sampler
        "4",
        settings=settings,
    )
    assert done.returncode == 0, done.stderr
    image = Image.open(output)
    assert image.mode == "RGBA" and image.size == (width, height)
    assert np.asarray(image).shape == (height, width, 4)


def test_the_readme_generate_line_with_the_demo_model(settings: Settings, tmp_path: Path) -> None:
    """No size given: the demo model's native 128², and the sprite the prompt names."""
    done = run_cli(
        "generate", "a blue heart with a drop shadow", "-o", str(tmp_path / "heart.png"), "--model", "demo",
        "--seed", "7", "--preview", str(tmp_path / "heart-preview.png"), settings=settings,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    image = Image.open(tmp_path / "heart.png")
    assert image.mode == "RGBA" and image.size == (DEMO_SIZE, DEMO_SIZE)
    verdict = judge(np.asarray(image))
    assert (verdict.shape, verdict.colour) == ("heart", "blue") and verdict.soft_edge_pixels > 0, verdict
    assert "ignored" not in done.stderr
    assert not [noise for noise in LIBRARY_NOISE if noise in done.stderr], done.stderr


#: What the libraries under the engine print on their own, which must not come between our lines.
LIBRARY_NOISE = ("torchvision", "Loading pipeline components", "Loading weights", "it/s]", "%|")


def test_strength_without_an_image_is_an_error(settings: Settings, tmp_path: Path) -> None:
    output = tmp_path / "output.png"
    done = run_cli(
        "generate", "a red star", "--strength", "0.3", "--model", "demo", "-o", str(output), settings=settings
    )
    assert done.returncode == 2
    assert "--strength" in done.stderr and "--image" in done.stderr
    assert not output.exists()


def test_a_file_that_is_not_an_image_is_refused_before_the_model_loads(settings: Settings, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    started = time.monotonic()
    done = run_cli(
        "generate", "a red star", "--foreground", str(text), "--blended", str(tmp_path / "gone.png"),
        "--model", "demo", settings=settings,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--foreground: {text} is not a PNG, JPEG or WebP image" in done.stderr
    assert f"--blended: no such image file: {tmp_path / 'gone.png'}" in done.stderr
    assert "Loading" not in done.stderr and "BytesIO" not in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # no model was loaded


def test_the_demo_model_warns_about_words_it_does_not_know(settings: Settings, tmp_path: Path) -> None:
    done = run_cli(
        "generate", "a black cat", "-o", str(tmp_path / "cat.png"), "--model", "demo", "--steps", "2",
        settings=settings,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stderr = " ".join(done.stderr.split())  # the console wraps long lines
    assert "ignored these words of the prompt" in stderr and "black, cat" in stderr
    assert "Model 'demo' ready in" in stderr and stderr.count("ready in") == 1
    assert not [noise for noise in LIBRARY_NOISE if noise in done.stderr], done.stderr


@pytest.mark.parametrize(("role", "variable", "value"), [("worker", "MODEL", "nonsense"), ("serve", "DTYPE", "fp16")])
def test_a_role_with_a_bad_setting_ends_before_loading_anything(
    settings: Settings, role: str, variable: str, value: str
) -> None:
    started = time.monotonic()
    done = run_cli(role, settings=settings, env={f"LAYERDIFFUSE_{variable}": value})
    assert done.returncode == 2, done.stderr
    assert f"LAYERDIFFUSE_{variable}={value}: input should be" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


def test_a_local_lora_file_changes_the_image_and_scale_zero_does_not(
    settings: Settings, tiny_folder: Path, tiny_pipeline: object, tmp_path: Path
) -> None:
    from ..support.lora_files import write_kohya_lora

    lora = write_kohya_lora(tmp_path, tiny_pipeline.style_loras.targets.shapes)  # type: ignore[attr-defined]
    tiny = ("--model", "tiny", "--seed", "7", "--width", "64", "--height", "64", "--steps", "2")
    outputs = {}
    for name, extra in {"plain": (), "styled": ("--lora", f"{lora}:1.5"), "unset": ("--lora", f"{lora}:0")}.items():
        outputs[name] = tmp_path / f"{name}.png"
        done = run_cli_here("generate", "a lamp", "-o", str(outputs[name]), *tiny, *extra, settings=settings)
        assert done.returncode == 0, done.stderr
    plain, styled, unset = (outputs[name].read_bytes() for name in ("plain", "styled", "unset"))
    assert styled != plain and unset == plain


def test_a_missing_or_pickled_lora_is_refused_before_the_model_loads(settings: Settings, tmp_path: Path) -> None:
    pickled = tmp_path / "style.ckpt"
    pickled.write_bytes(b"\x80\x04")
    for value, message in (
        (str(tmp_path / "gone.safetensors"), "no such LoRA file"),
        (str(pickled), "not a .safetensors"),
    ):
        done = run_cli("generate", "x", "--model", "tiny", "--lora", value, settings=settings)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    bad_name = run_cli("generate", "x", "--model", "tiny", "--lora", "a b/c", settings=settings)
    assert bad_name.returncode == 2 and "--lora" in bad_name.stderr, bad_name.stderr


def test_generate_with_a_mask_inpaints_it(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    source = np.zeros((64, 64, 4), np.uint8)
    source[..., 0], source[..., 3] = 220, 160
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:48, 16:48, 3] = 0
    Image.fromarray(source).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    output = tmp_path / "out.png"
    done = run_cli(
        "generate", "a lamp", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
        "-o", str(output), "--model", "tiny", "--seed", "3", "--steps", "2", settings=settings,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = np.asarray(Image.open(output).convert("RGBA"))
    kept = mask[..., 3] == 255
    assert np.array_equal(result[kept], source[kept]) and not np.array_equal(result, source)
    alone = run_cli("generate", "x", "--mask", str(tmp_path / "mask.png"), "--model", "tiny", settings=settings)
    assert alone.returncode == 2 and "--mask" in alone.stderr
