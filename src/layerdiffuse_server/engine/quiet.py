"""Keeping the libraries' own output out of a service's log: progress bars of loading, and advice
such as installing torchvision, are noise there; their errors still come through."""

from __future__ import annotations


def quiet_libraries() -> None:
    import huggingface_hub
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
