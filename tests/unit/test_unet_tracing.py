"""The UNet's CPU trace: taken once hot, bit-identical to the module, and never where it could be wrong."""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from layerdiffuse_server.engine.making.random_weights import TINY_SPEC, build_unet
from layerdiffuse_server.engine.pipelines import unet_tracing
from layerdiffuse_server.engine.pipelines.unet_tracing import eager, trace_from_next_call, trace_when_hot, traced_module


@pytest.fixture
def unet() -> Any:
    torch.manual_seed(0)
    return build_unet(TINY_SPEC).eval()


def sdxl_inputs(batch: int = 2, height: int = 8, width: int = 8, seed: int = 1) -> dict[str, Any]:
    """What diffusers' SDXL pipeline passes its UNet at each step (CFG doubles the batch)."""
    generator = torch.Generator().manual_seed(seed)
    unet = TINY_SPEC.unet
    return {
        "sample": torch.randn(batch, 4, height, width, generator=generator),
        "timestep": torch.tensor(421.0),
        "encoder_hidden_states": torch.randn(batch, 8, unet["cross_attention_dim"], generator=generator),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, 64, generator=generator),
            "time_ids": torch.randn(batch, 6, generator=generator),
        },
        "timestep_cond": None,
        "cross_attention_kwargs": None,
        "return_dict": False,
    }


def run(unet: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs)[0]  # type: ignore[no-any-return]


def run_eagerly(unet: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with eager(unet):
        return run(unet, inputs)


def test_a_hot_unet_runs_one_trace_for_every_size_and_batch_with_the_modules_bits(unet: Any) -> None:
    trace_when_hot(unet, after_calls=2)
    inputs = sdxl_inputs()
    expected = run_eagerly(unet, inputs)
    for _ in range(2):
        assert torch.equal(run(unet, inputs), expected)
        assert traced_module(unet) is None
    assert torch.equal(run(unet, inputs), expected)
    trace = traced_module(unet)
    assert trace is not None
    for other in (sdxl_inputs(batch=1, seed=2), sdxl_inputs(batch=4, seed=3), sdxl_inputs(height=16, width=8, seed=4)):
        assert torch.equal(run(unet, other), run_eagerly(unet, other))
    assert traced_module(unet) is trace


def test_what_changes_the_traced_code_path_has_a_trace_of_its_own(unet: Any) -> None:
    """A latent that is no multiple of 2 ** num_upsamplers makes diffusers pass upsampling sizes, and
    integer timesteps (DPM++, DDIM) are another input dtype than float ones (Euler)."""
    trace_when_hot(unet, after_calls=0)
    run(unet, sdxl_inputs())
    first = traced_module(unet)
    for inputs in (sdxl_inputs(height=10, width=10, seed=5), sdxl_inputs(seed=6) | {"timestep": torch.tensor(421)}):
        assert torch.equal(run(unet, inputs), run_eagerly(unet, inputs))
        assert traced_module(unet) not in (None, first)
    assert len(unet_tracing._traces[unet].traced) == 3


def test_weights_merged_in_place_or_replaced_reach_the_trace_and_other_processors_trace_again(unet: Any) -> None:
    trace_when_hot(unet, after_calls=0)
    inputs = sdxl_inputs()
    before = run(unet, inputs)
    first = traced_module(unet)
    assert first is not None
    with torch.no_grad():
        unet.conv_in.weight.mul_(1.5)  # as a style LoRA or a layer model merges
    merged = run(unet, inputs)
    assert not torch.equal(merged, before) and torch.equal(merged, run_eagerly(unet, inputs))
    # A conditioned-layer model's conv_in, and the base one put back, are new parameters: the trace
    # reads them from then on, without tracing again.
    unet.conv_in.weight = torch.nn.Parameter(unet.conv_in.weight.detach() * 0.5)
    replaced = run(unet, inputs)
    assert torch.equal(replaced, run_eagerly(unet, inputs)) and not torch.equal(replaced, merged)
    assert traced_module(unet) is first
    # Other attention processors make a new trace: a trace has run through the ones it was taken with.
    unet.set_attn_processor(AttnProcessor())
    assert torch.equal(run(unet, inputs), run_eagerly(unet, inputs))
    assert traced_module(unet) not in (None, first)


def _pre_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0] * 2.0, *args[1:])


@pytest.mark.parametrize("case", ["hook", "gradients", "cross_attention_kwargs", "return_dict"])
def test_what_a_trace_would_get_wrong_runs_eagerly(unet: Any, case: str) -> None:
    trace_when_hot(unet, after_calls=0)
    inputs = sdxl_inputs()
    plain = run_eagerly(unet, inputs)
    if case == "hook":
        # What the conditioned layers do to conv_in: a trace would record its effect for good.
        run(unet, inputs)  # with a trace taken already, as the layers find it
        handle = unet.conv_in.register_forward_pre_hook(_pre_hook)
        try:
            hooked = run_eagerly(unet, inputs)
            assert torch.equal(run(unet, inputs), hooked) and not torch.equal(hooked, plain)
        finally:
            handle.remove()
    elif case == "gradients":
        out = unet(**inputs)[0]
        assert out.requires_grad and torch.equal(out.detach(), plain)
    elif case == "cross_attention_kwargs":
        assert torch.equal(run(unet, inputs | {"cross_attention_kwargs": {"scale": 1.0}}), plain)
    else:
        with torch.no_grad():
            assert torch.equal(unet(**inputs | {"return_dict": True}).sample, plain)
    if case != "hook":
        assert traced_module(unet) is None
    assert torch.equal(run(unet, inputs), plain) and traced_module(unet) is not None  # and then it traces


def test_a_trace_that_cannot_be_taken_is_tried_once_and_the_module_runs(
    unet: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[object] = []

    def failing_trace(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(unet_tracing.torch.jit, "trace", failing_trace)
    trace_when_hot(unet, after_calls=0)
    inputs = sdxl_inputs()
    with caplog.at_level(logging.WARNING, logger=unet_tracing.__name__):
        for _ in range(3):
            assert torch.equal(run(unet, inputs), run_eagerly(unet, inputs))
    assert len(attempts) == 1 and traced_module(unet) is None
    assert "CPU trace failed (unsupported op)" in caplog.text


def test_a_trace_that_fails_to_run_leaves_those_inputs_to_the_module(
    unet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    trace_when_hot(unet, after_calls=0)
    inputs = sdxl_inputs()
    run(unet, inputs)
    # Inputs the module refuses as well raise as the module raises them, and the trace stays.
    wrong = inputs | {"encoder_hidden_states": torch.randn(2, 8, 7)}
    with pytest.raises(RuntimeError):
        run(unet, wrong)
    (traced,) = [traced for traced in unet_tracing._traces[unet].traced.values() if traced is not None]

    def broken(*args: Any) -> Any:
        raise RuntimeError("a kernel the trace alone uses")

    traced.module = broken
    with caplog.at_level(logging.WARNING, logger=unet_tracing.__name__):
        assert torch.equal(run(unet, inputs), run_eagerly(unet, inputs))
    assert "a kernel the trace alone uses" in caplog.text and traced_module(unet) is None
    assert torch.equal(run(unet, inputs), run_eagerly(unet, inputs))  # the module, from now on


def test_a_warm_up_traces_at_the_next_call_and_eager_gives_the_dispatcher_back(unet: Any) -> None:
    trace_when_hot(unet)
    assert trace_from_next_call(unet) and not trace_from_next_call(build_unet(TINY_SPEC))
    with eager(unet):
        assert "forward" not in vars(unet)
        run(unet, sdxl_inputs())
    assert traced_module(unet) is None and "forward" in vars(unet)
    run(unet, sdxl_inputs())
    assert traced_module(unet) is not None


def test_a_unet_let_go_of_is_freed_with_its_traces() -> None:
    """The model shelf swaps checkpoints: what the traces keep must not keep a UNet's GBs alive."""
    gc.collect()
    others = len(unet_tracing._traces)  # the suite's own pipelines
    unet = build_unet(TINY_SPEC).eval()
    trace_when_hot(unet, after_calls=0)
    run(unet, sdxl_inputs())
    assert traced_module(unet) is not None and len(unet_tracing._traces) == others + 1
    gone = weakref.ref(unet)
    del unet
    gc.collect()
    assert gone() is None and len(unet_tracing._traces) == others
