"""The command line's options, made from the ``Settings`` fields: one flag per setting, its help
the field's description with its default and its ``LAYERDIFFUSE_*`` variable.

A command names the settings it takes (:func:`settings_options`) and receives them read once, the
flags it was given over the environment. A value that can never work ends the command at once
(exit status 2, like any other usage error), naming the flag or variable it came from and the
values allowed, before anything slow starts.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from ..errors import plain_message
from ..server.bootstrap import ConfigurationError
from ..settings import Settings
from .console import fail

#: Flags whose name is not the setting's (a list setting takes one value per flag).
FLAGS = {
    "tls_names": "--tls-name",
    "webhook_allowed_networks": "--webhook-allow-network",
    "checkpoints": "--checkpoint",
    "warmup_sizes": "--warmup-size",
}
ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))

Command = TypeVar("Command", bound=Callable[..., Any])


class InvalidSettings(ConfigurationError):
    """A setting's value can never work (the message names where each bad value came from)."""


def environment_variable(name: str) -> str:
    return f"{ENV_PREFIX}{name}".upper()


def flag_of(name: str, flags: Mapping[str, str] | None = None) -> str:
    return (flags or {}).get(name) or FLAGS.get(name) or f"--{name.replace('_', '-')}"


def read_settings(given: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> Settings:
    """The environment's settings with the flags given (``None``: not given) on top.

    Raises:
        InvalidSettings: naming, for each bad value, the flag or variable it came from.
    """
    overrides = {name: value for name, value in given.items() if value not in (None, [], {})}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else ""
            value = problem.get("input")
            source = f"{flag_of(name, flags)} {value}" if name in overrides else f"{environment_variable(name)}={value}"
            message = plain_message(problem["msg"])
            problems.append(f"{source}: {message[:1].lower()}{message[1:]}")
        raise InvalidSettings("; ".join(problems)) from None
    except SettingsError as error:  # a variable that is not JSON where a list is expected
        field = re.search(r'field "(\w+)"', str(error))
        variable = environment_variable(field[1]) if field else "a LAYERDIFFUSE_* variable"
        raise InvalidSettings(f"{variable}: lists are written as JSON, e.g. '[\"a.example\"]'") from None


def settings_options(*names: str, flags: Mapping[str, str] | None = None) -> Callable[[Command], Command]:
    """Give a command one option per named setting; it is called with ``settings`` read from them.

    The command is written as ``def serve(settings: Settings, <its own options>)``; ``flags`` renames
    a setting's flag for this command (the worker's ``--port`` is its ``worker_port``).
    """

    def decorate(command: Command) -> Command:
        own = [
            parameter
            for parameter in inspect.signature(command, eval_str=True).parameters.values()
            if parameter.name != "settings"
        ]
        options = [_option(name, flag_of(name, flags)) for name in names]

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            try:
                settings = read_settings({name: given.pop(name) for name in names}, flags)
            except InvalidSettings as error:
                raise fail(str(error), 2) from None
            return command(settings, **given)

        signature = inspect.Signature([*own, *options])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in signature.parameters.values()}
        return run  # type: ignore[return-value]

    return decorate


def _option(name: str, flag: str) -> inspect.Parameter:
    field = Settings.model_fields[name]
    kind = _option_type(field.annotation)
    declaration = f"{flag}/--no-{flag.removeprefix('--')}" if kind is bool else flag
    option = typer.Option(None, declaration, help=_help(name, field, repeatable=kind is list), show_default=False)
    annotation = list[str] | None if kind is list else kind | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _option_type(annotation: Any) -> type:
    """What the flag parses: the setting's type without ``None``; a choice as its values' type (the
    settings check the choice itself, naming the values allowed)."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not NoneType)
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    if get_origin(annotation) in (list, dict):  # a mapping's flag is repeated as NAME=VALUE
        return list
    return annotation if isinstance(annotation, type) else str


def _help(name: str, field: FieldInfo, *, repeatable: bool) -> str:
    default = field.get_default(call_default_factory=True)
    shown = "" if default in (None, [], {}) else f"default: {_shown(default)}; "
    written = " (a JSON object)" if get_origin(field.annotation) is dict else " (a JSON list)"
    variable = environment_variable(name) + (written if repeatable else "")
    again = " Repeatable." if repeatable else ""
    return f"{field.description or ''}{again} [{shown}env: {variable}]"


def _shown(value: object) -> str:
    if isinstance(value, Path):
        home = Path.home()
        return f"~/{value.relative_to(home)}" if value.is_relative_to(home) else str(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)
