"""The demo data set's caption grammar: its shapes, colours and styles, and the words they make.

Kept apart from :mod:`.sprites` (which draws with numpy) so that the API, which runs without the
engine's libraries, can say what the demo model knows: every word of every caption, and no other.
"""

from __future__ import annotations

import re
from itertools import product

SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "purple": (140, 55, 205),
    "pink": (245, 120, 185),
}
STYLES = ("plain", "glow", "shadow", "translucent")
#: How each style is written in a caption (a plain sprite's caption names no style).
STYLE_PHRASES = {"plain": "", "glow": "with a soft glow", "shadow": "with a drop shadow", "translucent": "translucent"}

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def caption(shape: str, colour: str, style: str = "plain") -> str:
    """The caption of a sprite: ``a [translucent] <colour> <shape> [with a soft glow | with a drop shadow]``."""
    if style == "translucent":
        return f"a translucent {colour} {shape}"
    phrase = STYLE_PHRASES[style]
    return f"a {colour} {shape} {phrase}" if phrase else f"a {colour} {shape}"


def words(text: str) -> list[str]:
    """The words of a text, lower-cased, in order (punctuation and spaces separate them)."""
    return _WORD.findall(text.lower())


#: Every word of every caption: all the demo model's text encoders have ever seen.
VOCABULARY = frozenset(
    word for shape, colour, style in product(SHAPES, COLOURS, STYLES) for word in words(caption(shape, colour, style))
)
