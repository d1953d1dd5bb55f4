"""Operator-named checkpoints: a request's ``model_name`` picks one, the API refuses a name it does
not list (with the list), and a worker loads checkpoints on demand within ``max_loaded_models``,
unloading the least recently used. A v-prediction checkpoint gets v-prediction samplers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from layerdiffuse_server.api import create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.engine.pipelines.schedulers import SCHEDULERS, make_scheduler
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.engine.presets import SDXL_BASE, SDXL_SOURCES
from layerdiffuse_server.engine.weights.prediction import sampling_overrides
from layerdiffuse_server.errors import WeightFormatError
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.server.engine_loader import checkpoint_loader
from layerdiffuse_server.settings import Settings

from ..support.checkpoints import reweighted_copy, scheduler_configured_copy
from .api_support import APP, SMALL, server_settings, wait_completed

V_PREDICTION = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@pytest.fixture(scope="session")
def other_checkpoint(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reweighted_copy(tiny_folder / "base", tmp_path_factory.mktemp("checkpoints") / "other")


@pytest.fixture(scope="session")
def v_prediction_checkpoint(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("checkpoints") / "vpred"
    return scheduler_configured_copy(tiny_folder / "base", target, prediction_type="v_prediction",
                                     rescale_betas_zero_snr=True)  # fmt: skip


@pytest.fixture
def checkpoint_client(
    settings: Settings, tmp_path: Path, tiny_pipeline: object, other_checkpoint: Path
) -> Iterator[TestClient]:
    """The API with a worker whose model is tiny and whose operator lists the checkpoints ``other``
    and ``gone`` (whose folder is missing); it holds one model at a time, so every switch unloads the other."""
    configured = server_settings(
        settings,
        tmp_path,
        model="tiny",
        checkpoints={"other": str(other_checkpoint), "gone": str(tmp_path / "no-such-folder")},
        max_loaded_models=1,
    )
    services = build_services(
        configured, lambda: tiny_pipeline, model_name="tiny", load_checkpoint=checkpoint_loader(configured)
    )
    with TestClient(create_app(services)) as client:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield client


def generated(client: TestClient, **fields: object) -> tuple[bytes, list[str]]:
    """The first image's bytes and the log messages of one queued request."""
    request_id = client.post(f"/queue{APP}", json=SMALL | fields).json()["request_id"]
    status = wait_completed(client, request_id)
    result = client.get(f"/queue{APP}/requests/{request_id}")
    assert result.status_code == 200, result.text
    image = client.get(result.json()["image"]["url"].removeprefix("http://testserver")).content
    return image, [line["message"] for line in status["logs"]]


def test_a_checkpoint_switch_in_a_worker_and_back(checkpoint_client: TestClient) -> None:
    default, _ = generated(checkpoint_client)
    other, other_logs = generated(checkpoint_client, model_name="other")
    assert other != default
    assert "Loading checkpoint 'other' (this worker does not hold it)." in other_logs
    assert any(
        line.startswith("Loaded checkpoint 'other' in") and "model 'tiny' unloaded" in line for line in other_logs
    )
    again, again_logs = generated(checkpoint_client, model_name="other")
    assert again == other and not any(line.startswith("Loading") for line in again_logs)
    back, back_logs = generated(checkpoint_client)
    assert back == default
    assert any("checkpoint 'other' unloaded to make room" in line for line in back_logs)


def test_a_checkpoint_that_cannot_load_fails_its_request_and_the_worker_goes_on(checkpoint_client: TestClient) -> None:
    request_id = checkpoint_client.post(f"/queue{APP}", json=SMALL | {"model_name": "gone"}).json()["request_id"]
    status = wait_completed(checkpoint_client, request_id)
    assert status["error_type"] == "runner_scheduling_failure"
    assert "no-such-folder" in status["error"]
    assert any(line["message"].startswith("Loading checkpoint 'gone'") for line in status["logs"])
    image, logs = generated(checkpoint_client)  # the model, loaded again: the failed load unloaded it
    assert image and "Loading model 'tiny' (this worker does not hold it)." in logs


def test_an_unknown_model_name_is_refused_naming_the_checkpoints(checkpoint_client: TestClient) -> None:
    run = checkpoint_client.post(f"/run{APP}", json=SMALL | {"model_name": "nope"})
    assert run.status_code == 422
    problem = run.json()["detail"][0]
    assert (
        problem["loc"] == ["body", "model_name"] and "'gone', 'other'" in problem["msg"] and "'nope'" in problem["msg"]
    )
    queued = checkpoint_client.post(f"/queue{APP}", json=SMALL | {"model_name": "nope"}).json()["request_id"]
    assert wait_completed(checkpoint_client, queued)["error_type"] == "validation_error"
    layered = checkpoint_client.post(
        f"/run{APP}/foreground-to-blended", json={"foreground_image_url": "data:,", "model_name": "nope"}
    )
    assert layered.status_code == 422 and {tuple(p["loc"]) for p in layered.json()["detail"]} >= {
        ("body", "model_name")
    }


def test_the_checkpoints_are_published_in_openapi_and_api_info(checkpoint_client: TestClient) -> None:
    schemas = checkpoint_client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("LayerDiffusionInput", "ImageToImageInput", "ForegroundToBlendedInput"):
        assert schemas[name]["properties"]["model_name"]["anyOf"] == [
            {"type": "string", "enum": ["gone", "other"]},
            {"type": "null"},
        ]
    assert checkpoint_client.get("/api/info").json()["checkpoints"] == ["gone", "other"]


def test_without_checkpoints_only_the_model_is_offered(idle_client: TestClient) -> None:
    schema = idle_client.get("/openapi.json").json()["components"]["schemas"]["LayerDiffusionInput"]
    assert schema["properties"]["model_name"]["anyOf"] == [{"type": "null"}]
    refused = idle_client.post(f"/run{APP}", json=SMALL | {"model_name": "anything"})
    assert refused.status_code == 422 and "lists no checkpoints" in refused.json()["detail"][0]["msg"]


def test_a_v_prediction_checkpoint_gets_v_prediction_samplers(
    settings: Settings, v_prediction_checkpoint: Path
) -> None:
    pipeline = TransparentSDXLPipeline.from_preset(
        "tiny", settings=settings, device="cpu", checkpoint=str(v_prediction_checkpoint)
    )
    assert pipeline.sampling == V_PREDICTION
    for name in SCHEDULERS:
        config = make_scheduler(name, pipeline.sdxl.scheduler.config, pipeline.sampling).config
        assert {key: config[key] for key in V_PREDICTION} == V_PREDICTION, name
    result = pipeline.generate(prompt="a cat", width=64, height=64, num_inference_steps=2, seed=1)
    assert result.images[0].rgba.shape == (64, 64, 4)
    assert pipeline.sdxl.scheduler.config.prediction_type == "v_prediction"  # the run's own


def test_single_file_markers_say_v_prediction(tmp_path: Path) -> None:
    marked = tmp_path / "noob.safetensors"
    save_file({"v_pred": torch.tensor([]), "ztsnr": torch.tensor([]), "model.w": torch.zeros(2)}, marked)
    assert sampling_overrides(marked) == V_PREDICTION
    plain = tmp_path / "plain.safetensors"
    save_file({"model.w": torch.zeros(2)}, plain)
    assert sampling_overrides(plain) == {}


def test_bases_no_sampler_runs_right_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    sample = scheduler_configured_copy(tiny_folder / "base", tmp_path / "sample", prediction_type="sample")
    with pytest.raises(WeightFormatError, match="predicts 'sample'"):
        sampling_overrides(sample)
    zero_snr = scheduler_configured_copy(tiny_folder / "base", tmp_path / "eps", rescale_betas_zero_snr=True)
    with pytest.raises(WeightFormatError, match="zero terminal SNR schedule with epsilon"):
        sampling_overrides(zero_snr)


def test_a_checkpoint_keeps_the_models_layerdiffuse_files_and_takes_configs_from_its_base() -> None:
    house = SDXL_SOURCES.as_checkpoint("/models/house.safetensors")
    assert (house.base, house.base_variant, house.single_file_config) == ("/models/house.safetensors", None, SDXL_BASE)
    assert (house.layer_weights, house.decoder, house.encoder) == (
        SDXL_SOURCES.layer_weights,
        SDXL_SOURCES.decoder,
        SDXL_SOURCES.encoder,
    )
    from_a_single_file_base = house.as_checkpoint("/models/other.safetensors")
    assert from_a_single_file_base.single_file_config == SDXL_BASE  # a file carries no configs to lend


def test_generate_takes_a_checkpoint_by_its_name(
    settings: Settings, tiny_folder: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    from .test_cli import run_cli_here

    tiny = ("--model", "tiny", "--seed", "7", "--width", "64", "--height", "64", "--steps", "2")
    listed = ("--checkpoint", f"other={other_checkpoint}")
    plain, named = tmp_path / "plain.png", tmp_path / "named.png"
    assert run_cli_here("generate", "a lamp", "-o", str(plain), *tiny, settings=settings).returncode == 0
    done = run_cli_here(
        "generate", "a lamp", "-o", str(named), *tiny, *listed, "--model-name", "other", settings=settings
    )
    assert done.returncode == 0, done.stderr
    assert named.read_bytes() != plain.read_bytes()
    unknown = run_cli_here("generate", "a lamp", *tiny, *listed, "--model-name", "nope", settings=settings)
    assert unknown.returncode == 2 and "not one of the checkpoints (other)" in unknown.stderr, unknown.stderr


def test_the_openai_routes_pick_a_checkpoint_by_model(checkpoint_client: TestClient) -> None:
    import base64

    import openai

    key = checkpoint_client.headers["Authorization"].removeprefix("Key ")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=checkpoint_client, max_retries=0)
    assert {"tiny", "other", "gone"} <= {model.id for model in client.models.list()}
    small = {"seed": 5, "num_inference_steps": 2}

    def png(model: str) -> bytes:
        result = client.images.generate(model=model, prompt="a glass bottle", size="64x64", extra_body=small)
        assert result.data is not None and result.data[0].b64_json is not None
        return base64.b64decode(result.data[0].b64_json)

    assert png("other") != png("tiny")
