"""Every setting reaches the roles by flag or by ``LAYERDIFFUSE_*`` variable, and a value that can
never work ends the command at once, naming where it came from: run in-process, with the roles'
start-up replaced by a recorder so nothing binds a port or loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from layerdiffuse_server.cli import app
from layerdiffuse_server.cli.options import environment_variable
from layerdiffuse_server.engine.pipelines.acceleration import RuntimeOptions
from layerdiffuse_server.server import api_node, embedded, engine_loader, worker_node
from layerdiffuse_server.settings import Settings

ROLES = ("serve", "api", "worker")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings each role was started with; loading a model fails the test."""
    calls: list[Settings] = []
    for module, name in ((embedded, "run_embedded"), (api_node, "run_api"), (worker_node, "run_worker")):
        monkeypatch.setattr(module, name, calls.append)

    def no_model(settings: Settings) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine_loader, "load_engine", no_model)
    return calls


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, " ".join((result.output + (result.stderr or "")).split())


@pytest.mark.parametrize(
    ("role", "env", "said"),
    [
        ("worker", {"LAYERDIFFUSE_MODEL": "nonsense"}, "LAYERDIFFUSE_MODEL=nonsense: input should be 'sdxl', 'demo'"),
        ("serve", {"LAYERDIFFUSE_DTYPE": "fp16"}, "LAYERDIFFUSE_DTYPE=fp16: input should be 'auto', 'float32'"),
        ("serve", {"LAYERDIFFUSE_DEVICE": "gpu0"}, "LAYERDIFFUSE_DEVICE=gpu0: input should be auto, cpu, cuda, cuda:N"),
        ("worker", {"LAYERDIFFUSE_MEMORY_MODE": "huge"}, "LAYERDIFFUSE_MEMORY_MODE=huge: input should be 'fast'"),
        ("worker", {"LAYERDIFFUSE_DECODER_PASSES": "3"}, "LAYERDIFFUSE_DECODER_PASSES=3: input should be 8, 4, 2 or 1"),
        ("api", {"LAYERDIFFUSE_LOG_FORMAT": "xml"}, "LAYERDIFFUSE_LOG_FORMAT=xml: input should be 'text' or 'json'"),
        ("api", {"LAYERDIFFUSE_PORT": "http"}, "LAYERDIFFUSE_PORT=http: input should be a valid integer"),
        ("api", {"LAYERDIFFUSE_TLS_NAMES": "a.example"}, "LAYERDIFFUSE_TLS_NAMES: lists are written as JSON"),
        ("generate", {"LAYERDIFFUSE_DTYPE": "bf16"}, "LAYERDIFFUSE_DTYPE=bf16: input should be"),
        ("worker", {"LAYERDIFFUSE_PNG_COMPRESSION": "9"}, "LAYERDIFFUSE_PNG_COMPRESSION=9: input should be 'fast'"),
    ],
)
def test_a_bad_variable_ends_each_role_at_once_naming_it(
    started: list[Settings], role: str, env: dict[str, str], said: str
) -> None:
    code, output = invoke(role, env=env)
    assert code == 2, output
    assert said in output and not started


@pytest.mark.parametrize("role", ["serve", "worker", "generate"])
def test_a_bad_flag_is_named_as_the_flag(started: list[Settings], role: str) -> None:
    code, output = invoke(role, "--model", "sdxl-typo", "--device", "cuda:x")
    assert code == 2, output
    assert "--model sdxl-typo: input should be 'sdxl'" in output and "--device cuda:x: input should be" in output
    assert not started


def test_the_settings_refuse_what_can_never_load() -> None:
    for bad in ({"dtype": "fp16"}, {"device": "gpu0"}, {"model": "sdxl-typo"}, {"decoder_passes": 3}):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]
    assert Settings(device="cuda:1", dtype="bfloat16", model="demo").device == "cuda:1"


def test_variables_reach_the_engine_options(started: list[Settings]) -> None:
    env = {
        "LAYERDIFFUSE_MODEL": "tiny",
        "LAYERDIFFUSE_DEVICE": "cpu",
        "LAYERDIFFUSE_DTYPE": "float32",
        "LAYERDIFFUSE_DECODER_PASSES": "4",
        "LAYERDIFFUSE_MEMORY_MODE": "low",
        "LAYERDIFFUSE_VAE_TILING": "1",
        "LAYERDIFFUSE_CHANNELS_LAST": "true",
        "LAYERDIFFUSE_WARMUP": "false",
        "LAYERDIFFUSE_MAX_BATCH_SIZE": "2",
        "LAYERDIFFUSE_WORKER_PORT": "0",
        "LAYERDIFFUSE_PNG_COMPRESSION": "small",
    }
    code, output = invoke("worker", env=env)
    assert code == 0, output
    [settings] = started
    assert (settings.model, settings.device, settings.dtype, settings.decoder_passes) == ("tiny", "cpu", "float32", 4)
    assert (settings.warmup, settings.max_batch_size, settings.worker_port) == (False, 2, 0)
    assert settings.png_compression == "small"
    assert RuntimeOptions.from_settings(settings) == RuntimeOptions(
        memory_mode="low", vae_tiling=True, channels_last=True, compile_cache_folder=settings.data_dir / "compile-cache"
    )


def test_flags_win_over_variables(started: list[Settings]) -> None:
    env = {"LAYERDIFFUSE_MEMORY_MODE": "low", "LAYERDIFFUSE_COMPILE": "1", "LAYERDIFFUSE_PORT": "1234"}
    env |= {"LAYERDIFFUSE_PNG_COMPRESSION": "small"}
    flags = ("--memory-mode", "fast", "--no-compile", "--port", "4321", "--png-compression", "balanced")
    code, output = invoke("serve", *flags, env=env)
    assert code == 0, output
    [settings] = started
    assert (settings.memory_mode, settings.compile, settings.port) == ("fast", False, 4321)
    assert settings.png_compression == "balanced"
    code, output = invoke("worker", "--port", "0", env=env)  # the worker's --port is its health port
    assert code == 0, output
    assert (started[1].worker_port, started[1].port) == (0, 1234)


@pytest.mark.parametrize("role", ROLES)
def test_help_shows_every_setting_with_its_default_and_variable(role: str) -> None:
    command = typer.main.get_command(app).commands[role]  # type: ignore[attr-defined]
    options = [option for option in command.params if option.name != "help"]
    for option in options:
        field = Settings.model_fields[option.name]
        assert f"env: {environment_variable(option.name)}" in option.help, (role, option.help)
        if field.get_default(call_default_factory=True) not in (None, [], {}):  # no default is said as none
            assert "[default: " in option.help, (role, option.help)
    code, output = invoke(role, "--help")
    assert code == 0, output
    assert "--data-dir" in output and "[default: ~/.local/share/layerdiffuse; env: LAYERDIFFUSE_DATA_DIR]" in output
    assert output.count("env: LAYERDIFFUSE_") == len(options)


def test_checkpoints_come_as_a_json_object_or_as_repeated_flags(started: list[Settings]) -> None:
    env = {"LAYERDIFFUSE_CHECKPOINTS": '{"anime": "owner/anime-xl", "house": "/models/house.safetensors"}'}
    code, output = invoke("api", env=env)
    assert code == 0, output
    assert started[0].checkpoints == {"anime": "owner/anime-xl", "house": "/models/house.safetensors"}
    code, output = invoke("worker", "--checkpoint", "anime=owner/anime-xl", "--checkpoint", "v1.5=./folder", env=env)
    assert code == 0, output
    assert started[1].checkpoints == {"anime": "owner/anime-xl", "v1.5": "./folder"}  # the flags replace the variable
    code, output = invoke("serve", "--checkpoint", "no-source")
    assert code == 2 and "--checkpoint" in output and "NAME=SOURCE" in output, output
    with pytest.raises(ValidationError, match="checkpoint name 'a b'"):
        Settings(checkpoints={"a b": "x/y"})


def test_warmup_sizes_and_compile_cache_come_by_repeated_flags_or_a_json_variable(
    started: list[Settings], tmp_path: Path
) -> None:
    env = {"LAYERDIFFUSE_WARMUP_SIZES": '["256x256"]', "LAYERDIFFUSE_COMPILE_RECOMPILE_LIMIT": "3"}
    code, output = invoke("worker", "--port", "0", env=env)
    assert code == 0, output
    assert (started[0].warmup_dimensions, started[0].compile_recompile_limit) == ([(256, 256)], 3)
    flags = ("--warmup-size", "64x64", "--warmup-size", "128X96", "--compile-cache-folder", str(tmp_path))
    code, output = invoke("serve", *flags, env=env)
    assert code == 0, output
    assert started[1].warmup_sizes == ["64x64", "128x96"] and started[1].warmup_dimensions == [(64, 64), (128, 96)]
    assert RuntimeOptions.from_settings(started[1]) == RuntimeOptions(compile_cache_folder=tmp_path, recompile_limit=3)
    assert Settings(data_dir=tmp_path).warmup_dimensions == [(1024, 1024)]
    assert Settings(data_dir=tmp_path).compile_cache_dir == tmp_path / "compile-cache"


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (("--warmup-size", "100x7"), {}, "--warmup-size 100x7: each side of a warm-up size is a multiple of 8"),
        (("--warmup-size", "1024"), {}, "--warmup-size 1024: a warm-up size is written WIDTHxHEIGHT"),
        ((), {"LAYERDIFFUSE_WARMUP_SIZES": '["4096x64"]'}, "LAYERDIFFUSE_WARMUP_SIZES=4096x64: each side"),
        (("--compile-recompile-limit", "0"), {}, "--compile-recompile-limit 0: input should be greater than"),
    ],
)
def test_a_warmup_size_that_no_request_has_is_refused(
    started: list[Settings], args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    code, output = invoke("worker", *args, env=env)
    assert code == 2, output
    assert said in output and not started


def test_compile_warms_up_even_on_a_cpu_unless_the_operator_says_not(tmp_path: Path) -> None:
    def warms(**given: object) -> tuple[bool, bool]:
        settings = Settings(data_dir=tmp_path, **given)  # type: ignore[arg-type]
        return engine_loader.warms_up(settings, "cpu"), engine_loader.warms_up(settings, "cuda")

    assert warms() == (False, True)
    assert warms(compile=True) == (True, True)
    assert warms(compile=True, warmup=False) == (False, False)
    assert warms(warmup=True) == (True, True)


def test_compile_warms_up_every_batch_size_the_worker_may_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def batches(**given: object) -> list[int]:
        return engine_loader.warmup_batch_sizes(Settings(data_dir=tmp_path, **given))  # type: ignore[arg-type]

    assert batches() == [1] and batches(max_batch_size=3) == [1]  # uncompiled: any batch warms everything
    assert batches(compile=True) == [1, 2, 3, 4]
    assert batches(compile=True, max_batch_size=1) == [1] and not caplog.records
    assert batches(compile=True, max_batch_size=16) == list(range(1, 9))  # never more than a request's images
    assert "needs 8 compiled graphs" not in caplog.text
    assert batches(compile=True, warmup_sizes=["64x64", "128x128", "256x256"]) == [1, 2, 3, 4]
    assert "needs 12 compiled graphs of the UNet (3 sizes × batches of 1 to 4), more than --compile-recompile" in (
        caplog.text
    )
