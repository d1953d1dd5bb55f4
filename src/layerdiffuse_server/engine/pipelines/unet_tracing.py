"""The UNet on a CPU as a TorchScript trace, once it has run often enough to pay for one.

On a CPU much of a small UNet's step is Python: diffusers' module calls and dispatch around kernels
that have little to do. The tiny preset at 256² (batch 2, one thread) measured 51–71 ms a step
eagerly and 31–44 ms traced, with identical outputs (the trace runs the same aten ops in the same
order). Tracing costs about 1.9 s of CPU once (some 25 of those steps), so a UNet is traced only
after :data:`HOT_AFTER_CALLS` eager calls: a single generation of the default 20 steps never pays
for it, a server from its third such request on gains it.

The trace is not frozen: it reads the UNet's own tensors, so weights merged in place (style LoRAs,
the layer models' switches) reach it as they are, and a parameter the UNet replaces (a
conditioned-layer model's wider conv_in, the base one put back) is rebound into it instead of
tracing again. Shapes are not part of the key: the tracer records the batch and spatial sizes as
sizes of the inputs, and the one size-dependent branch of diffusers' forward (an upsampling size
forced when the latent is not a multiple of ``2 ** num_upsamplers``) is. So are dtypes (a sampler's
timesteps are float or integer), the attention processors and the modules' mode; a few traces are
kept. Whatever a trace could not have captured runs eagerly: gradients, hooks on any submodule
(the conditioned layers concatenate their condition in one), inputs SDXL's own pipelines do not
pass, another device.
"""

from __future__ import annotations

import contextlib
import logging
import types
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Eager calls after which the UNet is traced: two generations of the default 20 steps, against a
#: trace that costs about as much as 25 steps.
HOT_AFTER_CALLS = 40
#: Traces kept per UNet (one per sampler's timestep dtype, say); the oldest goes first.
MAX_TRACES = 4

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


Key = tuple[object, ...]


@dataclass
class _Model:
    """What the UNet was at its last full look: its part of the traces' keys, and every object that
    look saw, so that the next call checks by identity (well under a millisecond) instead of
    walking the modules again (several)."""

    key: Key
    generation: int
    slots: list[tuple[dict[str, Any], str, object]]
    tensors: list[tuple[torch.Tensor, torch.dtype]]
    training: bool
    submodules: list[tuple[nn.Module, bool]]

    def holds(self, unet: nn.Module) -> bool:
        """Nothing replaced, cast, switched to training or hooked since (``submodules`` leaves out
        the UNet itself, which holds this)."""
        return (
            not _global_hooks()
            and all(owner.get(name) is value for owner, name, value in self.slots)
            and all(tensor.dtype == dtype for tensor, dtype in self.tensors)
            and all(
                module.training is training and not _hooked(module)
                for module, training in [(unet, self.training), *self.submodules]
            )
        )


@dataclass
class _Traced:
    """One trace, and the generation of the UNet's tensors it reads."""

    module: torch.jit.ScriptModule
    generation: int


@dataclass
class _Traces:
    """One UNet's traces, by what each was taken for (None where tracing failed)."""

    after_calls: int
    model: _Model | None = None
    generations: int = 0
    #: The module whose hook made the last call run eagerly: while it has one, nothing to look at.
    hooked: weakref.ref[nn.Module] | None = None
    eager_calls: dict[Key, int] = field(default_factory=dict)
    traced: dict[Key, _Traced | None] = field(default_factory=dict)


_traces: weakref.WeakKeyDictionary[nn.Module, _Traces] = weakref.WeakKeyDictionary()


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
    _traces[unet] = _Traces(after_calls=after_calls)
    unet.forward = types.MethodType(_dispatch, unet)


def trace_from_next_call(unet: nn.Module) -> bool:
    """Trace at the next call instead of once hot (a warm-up, a benchmark's warm rounds); whether
    ``unet`` runs traced at all."""
    trace = _traces.get(unet)
    if trace is not None:
        trace.after_calls = 0
    return trace is not None


def traced_module(unet: nn.Module) -> torch.jit.ScriptModule | None:
    """The trace ``unet`` ran its last traced call with, if any (for tests and benchmarks)."""
    traces = _traces.get(unet)
    taken = [traced for traced in traces.traced.values() if traced is not None] if traces is not None else []
    return taken[-1].module if taken else None


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
    traces = _traces.get(unet)
    inputs = _traceable_inputs(unet, sample, timestep, encoder_hidden_states, args, kwargs)
    model = _look(unet, traces) if traces is not None and inputs is not None else None
    if traces is None or inputs is None or model is None:
        return type(unet).forward(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
    key = (model.key, _input_key(unet, inputs))
    traced = _hot_trace(unet, traces, key, inputs)
    if traced is None:
        return type(unet).forward(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
    if traced.generation != model.generation:
        _rebind(traced.module, unet)
        traced.generation = model.generation
    try:
        return (traced.module(*inputs),)
    except Exception as error:
        # Inputs the module refuses as well raise from it here, and the trace stays; one that only
        # the trace fails on leaves these inputs to the module from now on.
        result = type(unet).forward(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
        logger.warning("UNet trace failed to run (%s); running the module", error)
        traces.traced[key] = None
        return result


def _look(unet: nn.Module, traces: _Traces) -> _Model | None:
    """The UNet as it is now, or None where a trace would record hooks as if they were the UNet's."""
    if traces.model is not None and traces.model.holds(unet):
        return traces.model
    traces.model = None
    hooked = traces.hooked() if traces.hooked is not None else None
    if _global_hooks() or (hooked is not None and _hooked(hooked)):
        return None
    modules = list(unet.modules())
    hooked = next((module for module in modules if _hooked(module)), None)
    traces.hooked = weakref.ref(hooked) if hooked is not None else None
    if hooked is not None:
        return None
    slots: list[tuple[dict[str, Any], str, object]] = []
    for module in modules:
        for owner in (module._parameters, module._buffers, module._modules):
            slots += [(owner, name, value) for name, value in owner.items()]
        if "processor" in vars(module):
            slots.append((vars(module), "processor", vars(module)["processor"]))
    named = list(_named_tensors(unet))
    tensors = [(tensor, tensor.dtype) for _, tensor in named]
    # The tensors' values are read at each call: their names and dtypes, the processors (Python
    # objects the trace has run through) and the modules' mode are what a trace was taken for.
    key = (
        tuple((name, tensor.dtype) for name, tensor in named),
        tuple(value for _, name, value in slots if name == "processor"),
        tuple(module.training for module in modules),
    )
    traces.generations += 1
    submodules = [(module, module.training) for module in modules[1:]]
    traces.model = _Model(key, traces.generations, slots, tensors, unet.training, submodules)
    return traces.model


def _input_key(unet: nn.Module, inputs: TracedInputs) -> Key:
    """The inputs' dtypes and ranks, and the one branch of diffusers' forward that depends on the size."""
    factor = 2 ** int(getattr(unet, "num_upsamplers", 0))
    forced_upsampling = any(size % factor for size in inputs[0].shape[-2:])
    return (tuple((tensor.dtype, tensor.dim()) for tensor in inputs), forced_upsampling)


def _hot_trace(unet: nn.Module, traces: _Traces, key: Key, inputs: TracedInputs) -> _Traced | None:
    """The trace for ``key``; counts eager calls until it is taken."""
    if key in traces.traced:
        traced = traces.traced.pop(key)  # and back in as the newest
        traces.traced[key] = traced
        return traced
    calls = traces.eager_calls[key] = traces.eager_calls.get(key, 0) + 1
    if calls <= traces.after_calls:
        return None
    del traces.eager_calls[key]
    if len(traces.traced) >= MAX_TRACES:
        del traces.traced[next(iter(traces.traced))]
    module = _trace(unet, inputs)
    traces.traced[key] = traced = _Traced(module, traces.generations) if module is not None else None
    return traced


def _named_tensors(unet: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return chain(unet.named_parameters(), unet.named_buffers())


def _rebind(module: torch.jit.ScriptModule, unet: nn.Module) -> None:
    """Point the trace at the UNet's tensors where it has new ones (a conditioned-layer model's wider
    conv_in and the base one put back are new parameters)."""
    bound = dict(_named_tensors(module.unet))
    for name, tensor in _named_tensors(unet):
        if bound[name] is not tensor:
            owner, _, attribute = name.rpartition(".")
            target = module.unet
            for part in owner.split(".") if owner else ():
                target = getattr(target, part)
            setattr(target, attribute, tensor)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_hooks)


def _global_hooks() -> bool:
    names = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_hooks")
    return any(getattr(nn.modules.module, name, None) for name in names)


def _trace(unet: nn.Module, inputs: TracedInputs) -> torch.jit.ScriptModule | None:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            module = torch.jit.trace(_SDXLForward(unet), inputs, check_trace=False)
    except Exception as error:  # the eager module stays, always right
        logger.warning("UNet: CPU trace failed (%s); running the module", error)
        return None
    logger.info("UNet traced for the CPU")
    return module


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
    return inputs
