"""What a base model predicts, read from its files, so that every sampler is made to match it.

SDXL predicts the noise (epsilon). Some fine-tunes (NoobAI-XL v-pred and its kin) predict the
velocity v instead, most of them trained with a zero terminal SNR schedule too; sampled as epsilon
they give grey or burnt images with no error anywhere. A diffusers folder says which in its
``scheduler/scheduler_config.json`` (``prediction_type``, ``rescale_betas_zero_snr``); a single
``.safetensors`` file carries the empty marker tensors ``v_pred`` and ``ztsnr`` that A1111 and
ComfyUI read. What cannot be sampled correctly is refused when the model loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ...errors import WeightFormatError

#: The scheduler settings of a v-prediction model, and of one trained with a zero terminal SNR
#: (its last timestep is pure noise, so the schedule must reach it: "trailing" spacing).
V_PREDICTION: dict[str, Any] = {"prediction_type": "v_prediction"}
ZERO_TERMINAL_SNR: dict[str, Any] = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
#: The marker keys of single-file checkpoints (A1111, ComfyUI).
V_PREDICTION_KEY = "v_pred"
ZERO_TERMINAL_SNR_KEY = "ztsnr"


def single_file_markers(path: Path) -> set[str]:
    """Which of the marker keys a single-file checkpoint carries (its header alone is read)."""
    with safe_open(str(path), framework="pt") as weights:
        return {key for key in weights.keys() if key in (V_PREDICTION_KEY, ZERO_TERMINAL_SNR_KEY)}  # noqa: SIM118


def _folder_prediction(folder: Path) -> tuple[str, bool]:
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return str(config.get("prediction_type", "epsilon")), bool(config.get("rescale_betas_zero_snr", False))


def sampling_overrides(base: Path) -> dict[str, Any]:
    """The scheduler settings every sampler of this base must be made with (none for epsilon SDXL).

    Raises:
        WeightFormatError: the base predicts something no sampler here runs correctly.
    """
    if base.is_file():
        markers = single_file_markers(base)
        prediction = "v_prediction" if V_PREDICTION_KEY in markers else "epsilon"
        zero_snr = ZERO_TERMINAL_SNR_KEY in markers
    else:
        prediction, zero_snr = _folder_prediction(base)
    if prediction not in ("epsilon", "v_prediction"):
        raise WeightFormatError(
            f"the SDXL base at '{base}' predicts {prediction!r}; only epsilon and v_prediction models can be sampled"
        )
    if zero_snr and prediction == "epsilon":
        raise WeightFormatError(
            f"the SDXL base at '{base}' has a zero terminal SNR schedule with epsilon prediction, which cannot "
            "be sampled (its last step divides by zero signal); such models are trained with v_prediction"
        )
    overrides = dict(V_PREDICTION) if prediction == "v_prediction" else {}
    return overrides | (ZERO_TERMINAL_SNR if zero_snr else {})
