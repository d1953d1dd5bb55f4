"""Rows to records: a record's fields are named like its table's columns."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_row(record_type: type[T], row: Any) -> T:
    mapping = row._mapping
    return record_type(**{field.name: mapping[field.name] for field in fields(record_type)})  # type: ignore[arg-type]
