"""Options as typed dataclass fields: one declaration gives the CLI flag, its help and checks.

A field declared with :func:`option` carries its help text, allowed values and an optional
parser. :func:`add_dataclass_args` turns the fields of such a dataclass into argparse options
(``--max-model-len``; booleans as ``--x`` / ``--no-x`` like vLLM); :func:`check_fields`
validates the values of an instance built from Python keyword arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

_MISSING = dataclasses.MISSING


def option(
    default: Any = None,
    *,
    help: str,  # noqa: A002 - argparse's name
    choices: Sequence[Any] | None = None,
    parse: Callable[[Any], Any] | None = None,
    metavar: str | None = None,
    flags: Sequence[str] = (),
    default_factory: Callable[[], Any] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the default value.
        help: one sentence shown by ``--help``.
        choices: the allowed values (shown by ``--help`` and checked).
        parse: turns a CLI string or a Python value into the field's value; raises ValueError
            naming the problem. Replaces the check by type annotation.
        metavar: the placeholder shown by ``--help``.
        flags: extra spellings of the flag (e.g. a short or legacy name).
        default_factory: for mutable defaults.
        cli: False for a Python-only option (no flag).

    Returns:
        A ``dataclasses.field``.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "parse": parse,
        "metavar": metavar,
        "flags": tuple(flags),
        "cli": cli,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    """``max_model_len`` -> ``--max-model-len``."""
    return "--" + name.replace("_", "-")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"an option has one type (or it | None), got {hint!r}")
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def parse_json_object(value: Any, name: str) -> dict:
    """A dict, or a JSON object string (``'{"image": 2}'``), as a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} must be a JSON object, got {value!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object (dict), got {type(value).__name__}")
    return value


def parse_int(text: str, name: str) -> int:
    """An integer from the command line; ``1k``/``32K``/``2G`` as vLLM reads them (lower case:
    powers of 1000, upper case: powers of 1024)."""
    suffixes = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, scale = (text[:-1], suffixes[text[-1]]) if text[-1:] in suffixes else (text, 1)
    try:
        value = float(number) * scale if scale > 1 else int(number)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {text!r}")
    return int(value)


def parse_float(text: str, name: str) -> float:
    """A number from the command line."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def _convert(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; return it (ints widened to float)."""
    base, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must not be None")
    origin = typing.get_origin(base) or base
    if base is Any:
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if origin is dict:
        return parse_json_object(value, name)
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(base) or (Any,)
        return [_convert(name, item, item_hint) for item in items]
    raise TypeError(f"option {name} has an unsupported annotation {hint!r}")


def check_fields(instance: Any) -> None:
    """Validate and normalise every option field of a dataclass instance in place.

    Raises:
        ValueError: a value of the wrong type or not among the field's choices (named).
    """
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        if "help" not in f.metadata:
            continue
        value = getattr(instance, f.name)
        parse = f.metadata["parse"]
        value = parse(value) if parse is not None else _convert(f.name, value, hints[f.name])
        choices = f.metadata["choices"]
        if choices is not None and value is not None and value not in choices:
            raise ValueError(
                f"{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        object.__setattr__(instance, f.name, value)


def check_known(cls: type, kwargs: dict[str, Any], what: str) -> None:
    """Refuse keyword arguments that are not fields of ``cls``, suggesting the closest name.

    Raises:
        TypeError: naming the unknown argument(s).
    """
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in kwargs if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{what} got unknown argument(s): {', '.join(hints)}")


def _describe_default(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (dict, list)):
        return json.dumps(default)
    return str(default)


def _cli_parser(name: str, parse: Callable[[Any], Any] | None, base: Any) -> Callable[[str], Any]:
    """The argparse ``type=`` of a field: its parser, or conversion to its base type."""

    def convert(text: str) -> Any:
        try:
            if parse is not None:
                return parse(text)
            if typing.get_origin(base) is dict:
                return parse_json_object(text, name)
            if base is int:
                return parse_int(text, name)
            if base is float:
                return parse_float(text, name)
            return base(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names it in "invalid <name> value"
    return convert


def add_dataclass_args(
    parser: argparse.ArgumentParser | Any, cls: type, skip: Sequence[str] = ()
) -> None:
    """Add one option per field of ``cls`` (declared with :func:`option`) to ``parser``.

    Booleans become ``--name`` / ``--no-name``; lists take one or more values; dicts take JSON.
    The destination of each option is the field name; its argparse default is None so that
    :func:`namespace_kwargs` keeps only what the command line gave.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or not meta["cli"] or f.name in skip:
            continue
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        help_text = meta["help"]
        if default is not None and default != [] and default != {}:
            help_text += f" (default: {_describe_default(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["metavar"] is not None:
            kwargs["metavar"] = meta["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _cli_parser(f.name, meta["parse"], base)
            if typing.get_origin(base) is list:
                kwargs["nargs"] = "+"
                kwargs["type"] = _cli_parser(f.name, None, str)
        parser.add_argument(flag_name(f.name), *meta["flags"], **kwargs)


def namespace_kwargs(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (options left out are not included)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def options_table(cls: type) -> str:
    """A Markdown table of the options of ``cls``: flag, type, default, choices, help."""
    hints = typing.get_type_hints(cls)
    rows = ["| option | type | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        type_name = str(hints[f.name]).replace("typing.", "").replace("<class '", "")
        type_name = type_name.replace("'>", "").replace("|", "\\|")
        help_text = meta["help"].replace("|", "\\|")
        if meta["choices"] is not None:
            help_text += " Choices: " + ", ".join(f"`{c}`" for c in meta["choices"]) + "."
        flag = f"`{flag_name(f.name)}`" if meta["cli"] else "(Python only)"
        default_text = "" if default is None else f"`{_describe_default(default)}`"
        rows.append(f"| `{f.name}` {flag} | {type_name} | {default_text} | {help_text} |")
    return "\n".join(rows) + "\n"
