"""The forms a LoRA path may take, checked at admission without a file system or network."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from layerdiffuse_server.errors import validation_details
from layerdiffuse_server.loras.paths import LoraPath, LoraPathKind, check_lora_path, lora_path_kind


@pytest.mark.parametrize(
    ("path", "kind", "checked"),
    [
        (
            "https://example.com/loras/pixel.safetensors",
            LoraPathKind.URL,
            "https://example.com/loras/pixel.safetensors",
        ),
        ("HTTP://Example.com/api/download/models/123", LoraPathKind.URL, "http://example.com/api/download/models/123"),
        ("https://example.com/a.safetensors#part", LoraPathKind.URL, "https://example.com/a.safetensors"),
        ("nerijs/pixel-art-xl/pixel-art-xl.safetensors", LoraPathKind.HUB, None),
        ("owner/repo.v2/sub dir/style_1.safetensors", LoraPathKind.HUB, None),
        # What the fal clients name an upload that has no name: its bytes say what it is.
        ("https://api.example/files/AbCdEfGh1234/upload.bin", LoraPathKind.URL, None),
        ("pixel-art", LoraPathKind.FOLDER, None),
        ("pixel-art.safetensors", LoraPathKind.FOLDER, None),
        ("style.v2", LoraPathKind.FOLDER, None),
    ],
)
def test_accepted_paths_and_their_kind(path: str, kind: LoraPathKind, checked: str | None) -> None:
    assert check_lora_path(path) == (checked or path)
    assert lora_path_kind(check_lora_path(path)) is kind


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty value"),
        ("   ", "empty value"),
        ("/etc/passwd", "local path"),
        ("/srv/loras/a.safetensors", "local path"),
        ("~/loras/a.safetensors", "local path"),
        ("../secrets.safetensors", "local path"),
        ("./a.safetensors", "local path"),
        ("..", "local path"),
        (".hidden", "local path"),
        ("C:\\loras\\a.safetensors", "backslash"),
        ("a\x00.safetensors", "control character"),
        ("owner/repo/../../etc/passwd.safetensors", "invalid part"),
        ("owner/repo//a.safetensors", "invalid part"),
        ("owner/repo/.cache/a.safetensors", "invalid part"),
        ("owner/repo", "names a hub repository, not a file"),
        ("-owner/repo/a.safetensors", "valid hub repository id"),
        ("owner/re--po/a.safetensors", "valid hub repository id"),
        ("owner/repo/model.ckpt", "pickle format"),
        ("owner/repo/adapter_model.bin", "pickle format"),
        ("owner/repo/readme.md", "not a .safetensors file"),
        ("style.pt", "pickle format"),
        ("adapter.bin", "pickle format"),
        ("https://example.com/lora.pth", "pickle format"),
        ("ftp://example.com/a.safetensors", "another scheme"),
        ("data:application/octet-stream;base64,AAAA", "another scheme"),
        ("https://user:secret@example.com/a.safetensors", "credentials"),
        ("https://example.com:99999/a.safetensors", "out of range"),
        ("https://example.com/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_refused_paths_say_why_and_name_the_path(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match="LoRA") as refused:
        check_lora_path(path)
    assert reason in str(refused.value)
    if path.strip() and len(path) < 100:
        assert repr(path) in str(refused.value)


class Weight(BaseModel):
    path: LoraPath
    scale: float = 1.0


def test_a_model_field_checks_the_path_and_keeps_its_checked_form() -> None:
    assert Weight(path="https://example.com/a.safetensors#x").path == "https://example.com/a.safetensors"
    with pytest.raises(ValidationError) as refused:
        Weight(path="../../etc/passwd")
    [detail] = validation_details(refused.value.errors(), location="body")
    assert detail["loc"] == ["body", "path"] and detail["msg"].startswith("the LoRA path '../../etc/passwd' is a local")
