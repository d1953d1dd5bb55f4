"""A CLIP-compatible byte-level tokenizer, written to disk for the random-weight presets.

The real CLIP vocabulary comes with the real model from the hub. Presets built offline need a
tokenizer that ``CLIPTokenizer.from_pretrained`` loads the same way and that can spell any text:
CLIP's byte alphabet with no merges does exactly that (each character is a token, the last of a
word carries ``</w>``), with the usual start and end tokens after it.
"""

from __future__ import annotations

import json
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """CLIP's reversible byte → printable-character table (the GPT-2 scheme)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return [chr(c) for c in characters]


def byte_vocabulary() -> dict[str, int]:
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_byte_level_clip_tokenizer(folder: Path, *, pad_token: str = END_TOKEN) -> dict[str, int]:
    """Write ``vocab.json``, ``merges.txt`` and the configs; returns the special token ids."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = byte_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return {
        "vocab_size": len(vocabulary),
        "bos_token_id": vocabulary[START_TOKEN],
        "eos_token_id": vocabulary[END_TOKEN],
        "pad_token_id": vocabulary[pad_token],
    }
