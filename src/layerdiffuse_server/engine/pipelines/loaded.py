"""What the task pipelines use of a loaded model set, as a Protocol.

:class:`~.transparent_sdxl.TransparentSDXLPipeline` loads the models and dispatches each input to
the pipeline of its task; image to image, the conditioned layers and the runtime options are
written against this Protocol instead of that class, so none of them imports the module that
calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ...images import TransparentImage
from ...results import GenerationResult

if TYPE_CHECKING:
    import torch

    from ...schemas import GenerationParams, LayerDiffusionInput
    from ..networks.decoder import TransparentDecoder
    from ..networks.encoder import TransparentEncoder
    from ..networks.safety import SafetyChecker
    from ..timing import StageTimer
    from ..weights.style_loras import StyleLoras
    from ..weights.unet_patches import UNetPatches
    from .callbacks import CancelCheck, StepCallback


class LoadedPipeline(Protocol):
    """The resident models and the stages every task shares (prompts, noise, fitting, safety)."""

    sdxl: Any
    decoder: TransparentDecoder
    encoder: TransparentEncoder | None
    safety_checker: SafetyChecker | None
    patches: UNetPatches
    style_loras: StyleLoras
    layer_files: dict[str, str]
    sampling: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    @property
    def image_to_image_pipe(self) -> Any: ...

    @property
    def inpainting_pipe(self) -> Any: ...

    def generate(
        self,
        params: GenerationParams | None = None,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        **fields: Any,
    ) -> GenerationResult: ...

    def use_text_to_image_weights(self) -> None: ...

    def with_image_size(self, params: LayerDiffusionInput, images: dict[str, Any]) -> LayerDiffusionInput: ...

    def fit_image(self, image: Any, params: LayerDiffusionInput) -> Any: ...

    def encode_image(self, image: Any) -> torch.Tensor: ...

    def encode_prompts(
        self, prompts: list[str], negative_prompts: list[str], guidance_scale: float
    ) -> dict[str, torch.Tensor]: ...

    def initial_noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor: ...

    def safety_check(self, rgba: list[Any], wanted: list[bool], timer: StageTimer) -> list[bool]: ...


def checked_result(
    pipeline: LoadedPipeline,
    rgba: list[Any],
    params: LayerDiffusionInput,
    seed: int,
    timer: StageTimer,
    timings: dict[str, float],
) -> GenerationResult:
    """The one image of an image-driven task, safety-checked as its input asks."""
    flags = pipeline.safety_check(rgba, [params.enable_safety_checker], timer)
    return GenerationResult(
        [TransparentImage(rgba=rgba[0], seed=seed, nsfw=flags[0])],
        seed,
        params,
        has_nsfw_concepts=flags if params.enable_safety_checker and pipeline.safety_checker is not None else None,
        timings=timings,
    )
