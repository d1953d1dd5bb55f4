"""Style LoRAs on the tiny model: each layout read as diffusers reads it, merged on the switched UNet
and the text encoders, taken out exactly, cached within a budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from layerdiffuse_server.api import Services
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.engine.weights.lora_cache import StyleLoraCache
from layerdiffuse_server.engine.weights.lora_files import COMPONENTS, LoraTargets, StyleLora, read_style_lora
from layerdiffuse_server.engine.weights.style_loras import add_updates
from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.loras.cache import LoraCache
from layerdiffuse_server.loras.fetch import LoraFetchPolicy
from layerdiffuse_server.loras.sources import LoraSources
from layerdiffuse_server.schemas import (
    MAX_LORAS,
    ForegroundToBlendedInput,
    GenerationParams,
    ImageToImageInput,
    LoraWeight,
)
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.server.engine_loader import pipeline_from_settings
from layerdiffuse_server.settings import Settings

from ..support.lora_files import (
    UNET_ATTENTION,
    kohya_state_dict,
    write_diffusers_lora,
    write_kohya_lora,
    write_peft_lora,
)
from .api_support import APP, SMALL, server_settings
from .test_layers import picture

WRITERS: dict[str, Callable[..., Path]] = {
    "kohya": write_kohya_lora,
    "diffusers": write_diffusers_lora,
    "peft": write_peft_lora,
}
TINY_RUN = {"prompt": "a lamp", "seed": 9, "width": 64, "height": 64, "num_inference_steps": 2}


def plain_sdxl(tiny_folder: Path) -> object:
    return TransparentSDXLPipeline.load_sdxl(tiny_folder / "base", None, torch.float32)


def weights(sdxl: object) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in getattr(sdxl, name).state_dict().items()} for name in COMPONENTS}


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline: TransparentSDXLPipeline) -> Path:
    """One file of each layout, made for the tiny model."""
    folder = tmp_path_factory.mktemp("loras")
    shapes = tiny_pipeline.style_loras.targets.shapes
    for writer in WRITERS.values():
        writer(folder, shapes)
    return folder


def lora_path(folder: Path, layout: str) -> Path:
    return folder / f"{layout}_lora.safetensors"


def lora_name(layout: str) -> str:
    """How a request names the file: by its name in the operator's LoRA folder."""
    return f"{layout}_lora"


@pytest.fixture
def pipeline(
    tiny_pipeline: TransparentSDXLPipeline, lora_folder: Path, tmp_path: Path
) -> Iterator[TransparentSDXLPipeline]:
    """The shared tiny pipeline reading LoRAs from ``lora_folder`` as a worker's sources would, its
    LoRAs taken out afterwards whatever the test did."""
    tiny_pipeline.use_lora_files(
        LoraSources(LoraCache(tmp_path / "fetched", 2**30), LoraFetchPolicy(), folder=lora_folder)
    )
    yield tiny_pipeline
    tiny_pipeline.style_loras.apply([])


@pytest.fixture
def services(settings: Settings, tmp_path: Path, lora_folder: Path, tiny_pipeline: object) -> Services:
    """The API with a worker whose operator's LoRA folder is ``lora_folder``."""
    configured = server_settings(settings, tmp_path, lora_folder=lora_folder)
    return build_services(configured, lambda: tiny_pipeline, model_name="tiny")


@pytest.mark.parametrize("layout", list(WRITERS))
def test_merged_weights_equal_diffusers_own_fusing(tiny_folder: Path, lora_folder: Path, layout: str) -> None:
    path = lora_path(lora_folder, layout)
    reference = plain_sdxl(tiny_folder)
    base = weights(reference)
    reference.load_lora_weights(str(path))  # type: ignore[attr-defined]
    reference.fuse_lora(lora_scale=0.7)  # type: ignore[attr-defined]
    reference.unload_lora_weights()  # type: ignore[attr-defined]
    fused = weights(reference)

    ours = plain_sdxl(tiny_folder)
    lora = read_style_lora(path, LoraTargets.of(ours))
    assert set(lora.updates) == set(COMPONENTS)  # every layout carries both text encoders' parts
    for component in COMPONENTS:
        add_updates(getattr(ours, component), [(lora.updates[component], 0.7)])
        merged = getattr(ours, component).state_dict()
        changed = {key for key in fused[component] if not torch.equal(fused[component][key], base[component][key])}
        assert changed == set(lora.updates[component])
        for key in fused[component]:
            torch.testing.assert_close(merged[key], fused[component][key], rtol=1e-5, atol=1e-6)


def test_kohya_alpha_scales_each_module(tiny_folder: Path, tmp_path: Path) -> None:
    sdxl = plain_sdxl(tiny_folder)
    targets = LoraTargets.of(sdxl)
    state = kohya_state_dict(targets.shapes, rank=4, alpha=2.0)
    save_file(state, str(tmp_path / "half.safetensors"))
    state = {key: torch.tensor(4.0) if key.endswith(".alpha") else value for key, value in state.items()}
    save_file(state, str(tmp_path / "whole.safetensors"))
    half = read_style_lora(tmp_path / "half.safetensors", targets).updates["unet"]
    whole = read_style_lora(tmp_path / "whole.safetensors", targets).updates["unet"]
    key = f"{UNET_ATTENTION[0]}.weight"
    shape = targets.shapes["unet"][key]
    cpu = torch.device("cpu")
    torch.testing.assert_close(half[key].delta(shape, device=cpu) * 2, whole[key].delta(shape, device=cpu))


def test_a_file_of_no_known_layout_is_refused_naming_its_keys(tiny_folder: Path, tmp_path: Path) -> None:
    targets = LoraTargets.of(plain_sdxl(tiny_folder))
    path = tmp_path / "checkpoint.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2, 2), "first_stage.bias": torch.zeros(2)}, str(path))
    with pytest.raises(InvalidInputError, match=r"first_stage\.bias") as refused:
        read_style_lora(path, targets)
    assert refused.value.status_code == 422 and refused.value.field == "loras"

    other_model = tmp_path / "sd15.safetensors"  # kohya keys, but shapes of another model
    save_file(
        {
            "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 7),
            "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(7, 4),
        },
        str(other_model),
    )
    with pytest.raises(InvalidInputError, match="proj_in"):
        read_style_lora(other_model, targets)

    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(InvalidInputError, match="not a readable safetensors file"):
        read_style_lora(tmp_path / "text.safetensors", targets)


def test_the_cache_keeps_the_most_recent_within_its_budget(tiny_folder: Path, lora_folder: Path) -> None:
    targets = LoraTargets.of(plain_sdxl(tiny_folder))
    reads: list[str] = []

    def read(path: Path) -> StyleLora:
        reads.append(path.name.removesuffix("_lora.safetensors"))
        return read_style_lora(path, targets)

    one = read(lora_path(lora_folder, "kohya")).nbytes
    reads.clear()
    cache = StyleLoraCache(read, max_bytes=2 * one + one // 2)  # room for two
    kohya, peft, diffusers = (lora_path(lora_folder, layout) for layout in ("kohya", "peft", "diffusers"))
    cache.get(kohya)
    cache.get(peft)
    cache.get(kohya)  # now the most recent: peft goes first
    cache.get(diffusers)
    assert kohya in cache and diffusers in cache and peft not in cache
    assert cache.nbytes <= cache.max_bytes and len(cache) == 2
    cache.get(peft)
    assert reads == ["kohya", "peft", "diffusers", "peft"]  # peft read again once evicted


def test_scale_zero_gives_the_bytes_of_no_lora_and_removal_restores_them(
    pipeline: TransparentSDXLPipeline, lora_folder: Path
) -> None:
    plain = pipeline.generate(**TINY_RUN).images[0].png()
    kohya = lora_name("kohya")
    unset = pipeline.generate(**TINY_RUN, loras=[LoraWeight(path=kohya, scale=0.0)]).images[0].png()
    styled = pipeline.generate(**TINY_RUN, loras=[LoraWeight(path=kohya, scale=1.5)]).images[0].png()
    again = pipeline.generate(**TINY_RUN).images[0].png()
    assert unset == plain
    assert styled != plain
    assert again == plain


def test_the_lora_goes_on_top_of_the_transparency_weights(pipeline: TransparentSDXLPipeline, lora_folder: Path) -> None:
    pipeline.use_text_to_image_weights()
    unet = pipeline.patches.unet
    transparent = {key: value.clone() for key, value in unet.state_dict().items()}
    encoder = {key: value.clone() for key, value in pipeline.sdxl.text_encoder_2.state_dict().items()}
    path = lora_path(lora_folder, "peft")
    pipeline.style_loras.apply([LoraWeight(path=lora_name("peft"), scale=0.5)])
    lora = pipeline.style_loras.cache.get(path)
    merged = unet.state_dict()
    for key, value in transparent.items():
        update = lora.updates["unet"].get(key)
        expected = value if update is None else value + update.delta(value.shape, device=value.device, factor=0.5)
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(v, encoder[k]) for k, v in pipeline.sdxl.text_encoder_2.state_dict().items())
    pipeline.style_loras.apply([])
    assert all(torch.equal(value, transparent[key]) for key, value in unet.state_dict().items())
    assert all(torch.equal(v, encoder[k]) for k, v in pipeline.sdxl.text_encoder_2.state_dict().items())


def test_a_lora_stays_through_a_conditioned_layer_switch_and_leaves_no_trace(
    pipeline: TransparentSDXLPipeline, lora_folder: Path
) -> None:
    before = pipeline.generate(**TINY_RUN).images[0].png()
    lora = [LoraWeight(path=lora_name("peft"))]  # it changes conv_in, which fg2ble widens
    params = ForegroundToBlendedInput(
        foreground_image_url="stored", seed=4, num_inference_steps=3, stop_at=0.5, loras=lora
    )
    styled = pipeline.generate_from_images(params, {"foreground_image_url": picture((200, 30, 30))})
    plain = pipeline.generate_from_images(
        params.model_copy(update={"loras": []}), {"foreground_image_url": picture((200, 30, 30))}
    )
    assert styled.images[0].png() != plain.images[0].png()
    assert pipeline.generate(**TINY_RUN).images[0].png() == before


def test_requests_with_other_loras_never_share_a_batch(pipeline: TransparentSDXLPipeline, lora_folder: Path) -> None:
    kohya, peft = lora_name("kohya"), lora_name("peft")
    requests = [
        GenerationParams(**TINY_RUN, loras=[LoraWeight(path=kohya)]),
        GenerationParams(**TINY_RUN, loras=[LoraWeight(path=peft)]),
    ]
    with pytest.raises(ValueError, match="LoRAs"):
        pipeline.generate_batch(requests)
    alone = [pipeline.generate_batch([params])[0].images[0].rgba for params in requests]
    assert not np.array_equal(alone[0], alone[1])
    together = pipeline.generate_batch([requests[0], requests[0].model_copy(update={"seed": 10})])
    # the same LoRA: one batch, and the image it gives alone (up to the float differences of batched kernels)
    assert np.abs(together[0].images[0].rgba.astype(int) - alone[0].astype(int)).max() <= 2


def test_a_missing_lora_file_is_a_clear_input_error(pipeline: TransparentSDXLPipeline) -> None:
    with pytest.raises(InvalidInputError, match="no LoRA named 'gone'") as refused:
        pipeline.generate(**TINY_RUN, loras=[LoraWeight(path="gone")])
    assert refused.value.field == "loras"


def test_a_pipeline_without_sources_reads_no_lora(tiny_folder: Path, settings: Settings) -> None:
    bare = pipeline_from_settings(settings.model_copy(update={"model": "tiny"}))
    with pytest.raises(InvalidInputError, match="no source of LoRA files") as refused:
        bare.generate(**TINY_RUN, loras=[LoraWeight(path="kohya_lora")])
    assert refused.value.field == "loras"


def test_the_api_runs_a_lora_and_refuses_bad_ones_in_fal_format(
    pipeline: TransparentSDXLPipeline, client: TestClient, lora_folder: Path
) -> None:
    """(``pipeline``: the API's worker runs the shared tiny pipeline, whose LoRAs are taken out after.)"""
    styled = client.post(f"/run{APP}", json={**SMALL, "loras": [{"path": lora_name("kohya")}]})
    assert styled.status_code == 200, styled.text
    too_many = client.post(f"/run{APP}", json={**SMALL, "loras": [{"path": "a.safetensors"}] * (MAX_LORAS + 1)})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "loras"]
    local = client.post(f"/run{APP}", json={**SMALL, "loras": [{"path": "/etc/style.safetensors"}]})
    assert local.status_code == 422 and local.json()["detail"][0]["loc"] == ["body", "loras", 0, "path"]
    missing = client.post(f"/run{APP}", json={**SMALL, "loras": [{"path": "nowhere"}]})
    assert missing.status_code == 422
    # found by the worker, answered as admission answers: fal's detail list, naming the field
    [problem] = missing.json()["detail"]
    assert problem["loc"] == ["body", "loras"] and "no LoRA named 'nowhere'" in problem["msg"], problem


def test_the_cache_budget_is_a_setting(settings: Settings, tiny_folder: Path) -> None:
    configured = settings.model_copy(update={"model": "tiny", "lora_memory_mb": 3})
    assert pipeline_from_settings(configured).style_loras.cache.max_bytes == 3 << 20


def test_several_loras_add_up_in_one_request(pipeline: TransparentSDXLPipeline, lora_folder: Path) -> None:
    pipeline.use_text_to_image_weights()
    unet = pipeline.patches.unet
    transparent = {key: value.clone() for key, value in unet.state_dict().items()}
    kohya, diffusers = lora_path(lora_folder, "kohya"), lora_path(lora_folder, "diffusers")
    pipeline.style_loras.apply(
        [LoraWeight(path=lora_name("kohya"), scale=0.5), LoraWeight(path=lora_name("diffusers"), scale=-1.0)]
    )
    merged = unet.state_dict()
    key = f"{UNET_ATTENTION[0]}.weight"
    expected = transparent[key].clone()
    for path, scale in ((kohya, 0.5), (diffusers, -1.0)):
        update = pipeline.style_loras.cache.get(path).updates["unet"][key]
        expected += update.delta(expected.shape, device=expected.device, factor=scale)
    torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)


def test_image_to_image_takes_loras_too(pipeline: TransparentSDXLPipeline, lora_folder: Path) -> None:
    image = picture((30, 200, 30), alpha=128)
    params = ImageToImageInput(image_url="stored", seed=3, num_inference_steps=3, strength=0.7)
    plain = pipeline.generate_from_images(params, {"image_url": image}).images[0].png()
    styled = pipeline.generate_from_images(
        params.model_copy(update={"loras": [LoraWeight(path=lora_name("diffusers"))]}),
        {"image_url": image},
    )
    assert styled.images[0].png() != plain
    assert pipeline.generate_from_images(params, {"image_url": image}).images[0].png() == plain


def test_lycoris_files_are_refused_naming_their_keys(tiny_folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "loha.safetensors"
    name = "lora_unet_mid_block_attentions_0_proj_in"
    save_file({f"{name}.hada_w1_a": torch.zeros(64, 4), f"{name}.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(InvalidInputError, match="hada_w1_a"):
        read_style_lora(path, LoraTargets.of(plain_sdxl(tiny_folder)))
