"""Sampler names → diffusers schedulers, built from the base model's own scheduler config."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

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


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh scheduler (schedulers hold per-run state, so each run gets its own)."""
    try:
        scheduler_class, overrides = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None
    return scheduler_class.from_config(base_config, **overrides)  # type: ignore[attr-defined]  # diffusers' SchedulerMixin
