"""Reading ``multipart/form-data`` bodies (the SDKs' image edits) with the standard library's MIME
parser, so the API needs no extra dependency. The body is read whole under the body limit first."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP

from .errors import bad_request


@dataclass(frozen=True)
class FilePart:
    field: str
    file_name: str | None
    content_type: str | None
    data: bytes


@dataclass
class Form:
    """A form's text fields (the last value of each name) and file parts (in order)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def files_named(self, *names: str) -> list[FilePart]:
        return [part for part in self.files if part.field in names]


def parse_form(content_type: str, body: bytes) -> Form:
    """The parts of a multipart body.

    Raises:
        OpenAIError: the body is not multipart/form-data with a boundary.
    """
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise bad_request("The body must be multipart/form-data, as the SDKs send image edits.", code=None)
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    form = Form()
    for part in message.iter_parts() if message.is_multipart() else []:
        name = _field_name(part)
        if name is None:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        file_name = part.get_param("filename", header="content-disposition")
        if file_name is not None or part.get_content_type() != "text/plain" or name in ("image", "image[]", "mask"):
            form.files.append(FilePart(name, str(file_name) if file_name else None, part.get_content_type(), data))
        else:
            form.fields[name] = data.decode(part.get_content_charset() or "utf-8", errors="replace")
    if not form.fields and not form.files:
        raise bad_request("The multipart body has no parts.", code=None)
    return form


def _field_name(part: Message) -> str | None:
    name = part.get_param("name", header="content-disposition")
    return str(name) if name else None
