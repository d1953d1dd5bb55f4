"""The exception tree drawn in ``errors.py`` stays true: every exception class the package defines
is drawn there under its parent, or listed as outside the tree on purpose.

The package's modules are read as source (no import: the engine's would load torch, the migrations
need Alembic's context), which is enough, since every class the tree holds derives by name from
classes of the package or from Python's built-in exceptions.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import layerdiffuse_server
from layerdiffuse_server import errors

PACKAGE = Path(layerdiffuse_server.__file__).parent
ROOT = "LayerDiffuseError"


def defined_classes() -> dict[str, tuple[str, list[str]]]:
    """Every class of the package: name → (its module, the names of its bases). Bases are
    resolved by name: exception names are unique in the package (``errors.py`` would be ambiguous
    otherwise)."""
    classes: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [
                    base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases
                ]
                classes[node.name] = (module, bases)
    return classes


def is_builtin_exception(name: str) -> bool:
    value = getattr(builtins, name, None)
    return isinstance(value, type) and issubclass(value, BaseException)


def exception_classes(classes: dict[str, tuple[str, list[str]]]) -> dict[str, str]:
    """The package's exception classes: name → the base it derives from (first exception base)."""

    def exception_base(name: str, seen: frozenset[str] = frozenset()) -> str | None:
        for base in classes[name][1]:
            if is_builtin_exception(base) or (
                base in classes
                and base not in seen
                and (base == ROOT or exception_base(base, seen | {name}) is not None)
            ):
                return base
        return None

    found = {name: exception_base(name) for name in classes}
    return {name: base for name, base in found.items() if base is not None}


def drawn_tree() -> dict[str, str]:
    """The tree of the module docstring: class name → its parent's."""
    parents: dict[str, str] = {}
    path = [ROOT]
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^ {4}((?:[│ ] {3})*)[├└]── (\w+)", line)
        if match:
            depth = len(match[1]) // 4 + 1
            del path[depth:]
            parents[match[2]] = path[-1]
            path.append(match[2])
    return parents


def listed_outside() -> set[str]:
    """The classes the docstring lists as outside the tree (``module._Name`` lines)."""
    return set(re.findall(r"^ {4}[\w.]+\.(\w+) {2,}", errors.__doc__ or "", re.MULTILINE))


def test_every_exception_class_is_drawn_under_its_parent_or_listed_outside() -> None:
    classes = defined_classes()
    exceptions = exception_classes(classes)
    tree = drawn_tree()
    assert ROOT in exceptions and len(tree) > 10
    in_tree = {name: base for name, base in exceptions.items() if name != ROOT and base in {ROOT, *tree}}
    assert in_tree == tree, "errors.py's tree differs from the classes (name → parent) the package defines"
    outside = set(exceptions) - set(in_tree) - {ROOT}
    assert outside == listed_outside(), "exception classes outside the tree must be listed in errors.py"


def test_classes_drawn_in_another_module_name_it() -> None:
    classes = defined_classes()
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^ {4}[│├└─ ]*(\w+) +(?:([\w.]+): )?", line)
        if match and match[1] in classes and match[1] != ROOT:
            module = classes[match[1]][0]
            assert (match[2] or "errors") == module, f"{match[1]} is defined in {module}"
