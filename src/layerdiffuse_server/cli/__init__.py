"""The ``layerdiffuse`` command: generate images, download weights, run the server's roles.

:mod:`.commands` lists the commands; :mod:`.options` makes their options from the settings,
:mod:`.generation` is ``generate``'s work and :mod:`.console` what every command prints with.
"""

from .commands import app, main

__all__ = ["app", "main"]
