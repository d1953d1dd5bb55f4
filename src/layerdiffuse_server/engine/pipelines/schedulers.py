"""Sampler names → diffusers schedulers, built from the base model's own scheduler config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from ...errors import InvalidInputError

#: name → (scheduler class, overrides). DPM++ 2M Karras is the default of the reference tools.
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddim": (DDIMScheduler, {}),
}


def make_scheduler(name: str, base_config: Any, sampling: Mapping[str, Any] | None = None) -> Any:
    """A fresh scheduler (schedulers hold per-run state, so each run gets its own).

    ``sampling``: what the model needs of every sampler (v-prediction, zero terminal SNR: see
    :mod:`..weights.prediction`), set on top of the base config whatever that says.

    Raises:
        ValueError: an unknown name, or a sampler that cannot take what the model needs (diffusers
            would drop the setting without a word, and sample the model wrong).
    """
    try:
        scheduler_class, overrides = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None
    needed = dict(sampling or {})
    accepted = inspect.signature(scheduler_class).parameters
    missing = [key for key in needed if key not in accepted]
    if missing:
        raise InvalidInputError(
            f"the {name} sampler cannot be set to {', '.join(missing)}, which this model needs; choose another "
            "scheduler",
            field="scheduler",
        )
    scheduler = scheduler_class.from_config(base_config, **overrides, **needed)  # type: ignore[attr-defined]
    return scheduler


def make_scheduler_like(scheduler: Any, sampling: Mapping[str, Any]) -> Any:
    """A scheduler of the same class as ``scheduler`` with ``sampling`` set (the pipeline's resident one)."""
    return type(scheduler).from_config(scheduler.config, **sampling)
