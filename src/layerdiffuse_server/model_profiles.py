"""What a model preset knows, told without loading it: a prompt it draws well, and, for a model
trained on a closed set of captions (``demo``), the words of those captions.

The worker names the words of a prompt that such a model ignores (in the request's logs and its
output), the CLI warns about them, and the playground shows the vocabulary and an example prompt:
a prompt outside it gives a picture that has nothing to do with it, which should not be a surprise.
Torch-free and numpy-free: the API reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .demo import captions


@dataclass(frozen=True)
class ModelProfile:
    """Attributes:
    name: the preset's name.
    example_prompt: a prompt the model draws well (the playground's placeholder).
    vocabulary: every word the model was trained on, or ``None`` for an open vocabulary.
    vocabulary_groups: the vocabulary as a person reads it (shapes, colours, styles).
    """

    name: str
    example_prompt: str
    vocabulary: frozenset[str] | None = None
    vocabulary_groups: dict[str, list[str]] = field(default_factory=dict)

    def ignored_words(self, prompt: str) -> list[str] | None:
        """The words of ``prompt`` the model does not know, each once, in order; ``None`` when it
        knows every word there is."""
        if self.vocabulary is None:
            return None
        return list(dict.fromkeys(word for word in captions.words(prompt) if word not in self.vocabulary))

    def ignored_words_line(self, ignored: list[str]) -> str:
        """The log line that tells a client which words of its prompt were ignored."""
        known = "; ".join(f"{group}: {', '.join(items)}" for group, items in self.vocabulary_groups.items())
        return (
            f"The {self.name} model ignored these words of the prompt, which it never saw in training: "
            f"{', '.join(ignored)}. It knows {known}."
        )


DEMO = ModelProfile(
    name="demo",
    example_prompt="a red star with a soft glow",
    vocabulary=captions.VOCABULARY,
    vocabulary_groups={
        "shapes": list(captions.SHAPES),
        "colours": list(captions.COLOURS),
        "styles": [phrase for phrase in captions.STYLE_PHRASES.values() if phrase],
    },
)
_OPEN = "a glass teapot, studio light"


def profile_of(model: str) -> ModelProfile:
    """The profile of a preset (an unknown name, e.g. a custom base, gets an open vocabulary)."""
    if model == "demo":
        return DEMO
    return ModelProfile(name=model, example_prompt=_OPEN)
