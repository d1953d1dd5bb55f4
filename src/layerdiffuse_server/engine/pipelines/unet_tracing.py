"""The UNet on a CPU as a TorchScript trace, once it has run often enough to pay for one.

On a CPU much of a small UNet's step is Python: diffusers' module calls and dispatch around kernels
that have little to do. The tiny preset at 256² (batch 2, one thread) measured 51–71 ms a step
eagerly and 31–44 ms traced, with identical outputs (the trace runs the same aten ops in the same
order). Tracing costs about 1.9 s of CPU once (some 25 of those steps), so a UNet is traced only
after :data:`HOT_AFTER_CALLS` eager calls with the same weights: a single generation from the CLI
never pays for it, a server from its third request on gains it.

The trace is not frozen. It reads the UNet's own parameters, so weights merged in place (style
LoRAs, the conditioned-layer models) reach it without tracing again; a replaced or cast parameter
or other attention processors make a new trace. Shapes are not part of the key: the tracer records the batch and spatial sizes
as sizes of the inputs, and the one size-dependent branch of diffusers' forward (an upsampling size
forced when the latent is not a multiple of ``2 ** num_upsamplers``) is. Whatever the trace could
not have captured runs eagerly: gradients, hooks on any submodule (the conditioned layers
concatenate their condition in one), inputs SDXL's own pipelines do not pass, another device.
"""

from __future__ import annotations

import contextlib
import logging
import types
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Eager calls with the same weights after which the UNet is traced: two generations of the default
#: 20 steps, against a trace that costs about as much as 25 steps.
HOT_AFTER_CALLS = 40

#: The keyword arguments SDXL's pipelines pass, with the values a trace is taken for; any other
#: value (a LoRA scale in ``cross_attention_kwargs``, ControlNet residuals, …) runs eagerly.
_PASSED_AS_NONE = (
    "timestep_cond",
    "attention_mask",
    "cross_attention_kwargs",
    "encoder_attention_mask",
    "class_labels",
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)

TracedInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class _Trace:
    """One UNet's trace and what it was taken for."""

    key: tuple[object, ...]
    after_calls: int
    eager_calls: int = 0
    module: torch.jit.ScriptModule | None = None
    failed: bool = False


_traces: weakref.WeakKeyDictionary[nn.Module, _Trace] = weakref.WeakKeyDictionary()


class _SDXLForward(nn.Module):
    """What is traced: the UNet's own forward, with the inputs SDXL's pipelines give it as tensors."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        unet_forward = type(self.unet).forward  # the class's: the instance's own is the dispatcher
        return unet_forward(
            self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


def trace_when_hot(unet: nn.Module, *, after_calls: int = HOT_AFTER_CALLS) -> None:
    """Make ``unet`` (a diffusers ``UNet2DConditionModel`` on a CPU) run as a trace once hot.

    The instance's ``forward`` becomes a dispatcher; the class's stays what runs eagerly.
    """
    _traces[unet] = _Trace(key=(), after_calls=after_calls)
    unet.forward = types.MethodType(_dispatch, unet)


def trace_from_next_call(unet: nn.Module) -> bool:
    """Trace at the next call instead of once hot (a warm-up, a benchmark's warm rounds); whether
    ``unet`` runs traced at all."""
    trace = _traces.get(unet)
    if trace is not None:
        trace.after_calls = 0
    return trace is not None


def traced_module(unet: nn.Module) -> torch.jit.ScriptModule | None:
    """The trace ``unet`` runs as now, if any (for tests and benchmarks)."""
    trace = _traces.get(unet)
    return trace.module if trace is not None else None


@contextlib.contextmanager
def eager(unet: nn.Module) -> Iterator[None]:
    """Run ``unet`` eagerly for a while (a benchmark's comparison), keeping its trace for after."""
    dispatcher = unet.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if dispatcher is not None:
            unet.forward = dispatcher


def _dispatch(
    unet: nn.Module, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any
) -> Any:
    trace = _traces.get(unet)
    inputs = _traceable_inputs(unet, sample, timestep, encoder_hidden_states, args, kwargs)
    if trace is not None and inputs is not None:
        module = _hot_trace(unet, trace, inputs)
        if module is not None:
            try:
                return (module(*inputs),)
            except Exception as error:  # the eager forward is always right: keep to it for these weights
                logger.warning("UNet trace failed to run (%s); running the module", error)
                trace.module, trace.failed = None, True
    return type(unet).forward(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)


def _hot_trace(unet: nn.Module, trace: _Trace, inputs: TracedInputs) -> torch.jit.ScriptModule | None:
    """The trace to run these inputs with; counts the eager calls and traces once they are enough."""
    key = _trace_key(unet, inputs)
    if key != trace.key:
        trace.key, trace.eager_calls, trace.module, trace.failed = key, 0, None, False
    if trace.module is None and not trace.failed:
        trace.eager_calls += 1
        if trace.eager_calls > trace.after_calls:
            trace.module = _trace(unet, inputs)
            trace.failed = trace.module is None
    return trace.module


def _traceable_inputs(
    unet: nn.Module,
    sample: Any,
    timestep: Any,
    encoder_hidden_states: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> TracedInputs | None:
    """The five tensors the trace takes, or None where the call needs the eager forward."""
    if args or torch.is_grad_enabled() or kwargs.get("return_dict", True):
        return None
    if any(kwargs.get(name) is not None for name in _PASSED_AS_NONE):
        return None
    if set(kwargs) - {"return_dict", "added_cond_kwargs", *_PASSED_AS_NONE}:
        return None
    added = kwargs.get("added_cond_kwargs")
    if not isinstance(added, dict) or set(added) != {"text_embeds", "time_ids"}:
        return None
    inputs = (sample, timestep, encoder_hidden_states, added["text_embeds"], added["time_ids"])
    if not all(isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" for tensor in inputs):
        return None
    if _has_hooks(unet):
        return None
    return inputs


def _has_hooks(unet: nn.Module) -> bool:
    """Hooks run while tracing and their effect would be recorded as if it were the UNet's."""
    global_hooks = (
        getattr(nn.modules.module, name, None)
        for name in ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_hooks")
    )
    if any(global_hooks):
        return True
    return any(
        module._forward_pre_hooks or module._forward_hooks or module._backward_hooks for module in unet.modules()
    )


def _trace_key(unet: nn.Module, inputs: TracedInputs) -> tuple[object, ...]:
    """What a trace stays valid for: the parameters' identity (not their values), the attention
    processors (Python objects the trace has run through), the mode, and the inputs' structure,
    including the one branch of diffusers' forward that depends on the size."""
    factor = 2 ** int(getattr(unet, "num_upsamplers", 0))
    sample = inputs[0]
    forced_upsampling = any(size % factor for size in sample.shape[-2:])
    weights = tuple((tensor.data_ptr(), tensor.dtype) for tensor in (*unet.parameters(), *unet.buffers()))
    processors = tuple(id(vars(module).get("processor", module._modules.get("processor"))) for module in unet.modules())
    structure = tuple((tensor.dtype, tensor.dim()) for tensor in inputs)
    return (weights, processors, unet.training, structure, forced_upsampling)


def _trace(unet: nn.Module, inputs: TracedInputs) -> torch.jit.ScriptModule | None:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            traced = torch.jit.trace(_SDXLForward(unet), inputs, check_trace=False)
    except Exception as error:  # the eager module stays, always right
        logger.warning("UNet: CPU trace failed (%s); running the module", error)
        return None
    logger.info("UNet traced for the CPU")
    return traced
