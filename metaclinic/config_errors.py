"""Config errors that start with the offending key and the closest valid one, without the usage text.

jsonargparse reports an unknown key ("Group 'table' does not accept option 'categorical_colums'") at the
end of about fifty lines of usage and of a dump of the whole config. A user needs the key, where it is,
and what they probably meant; ``--help`` still prints the usage on request.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import sys
import typing
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

UNKNOWN_KEY = (
    re.compile(r"Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"Option '(?P<key>[^']+)' is not accepted"),
    re.compile(r"unrecognized arguments: --(?P<key>[^=\s]+)"),
)
NOISE = (re.compile(r"^\s*Given value"), re.compile(r"^\s*- Expected a <class 'NoneType'>"))


class ConfigParser(LightningArgumentParser):
    """Lightning's parser, whose fatal errors are explained by :func:`explain_config_error`."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a nested parser: jsonargparse catches this and tries other types
            super().error(message, ex)
        sys.stderr.write(explain_config_error(message, self) + "\n")
        self.exit(2)


def explain_config_error(message: str, parser: Any) -> str:
    """``error: <key>: ...; did you mean <closest>?`` for an unknown key, else the message without noise."""
    tip = f"({parser.prog} --help lists every option)"
    found = next((m for p in UNKNOWN_KEY for m in [p.search(message)] if m), None)
    if found is None:
        lines = [line for line in message.splitlines() if not any(n.search(line) for n in NOISE)]
        if "Expected a <class 'str'>. Got value:" in message:  # YAML read a label value or site as a number
            lines.append('(YAML reads 0, 1 or 2.5 as numbers; quote label values and sites: ["0", "1"])')
        return "error: " + "\n".join(lines) + f"\n{tip}"
    group, key = found.groupdict().get("group"), found.group("key")
    owner = re.search(r"Problem with given class_path '(?P<path>[^']+)'", message)
    parser_key = re.search(r'Parser key "(?P<key>[^"]+)"', message)
    if owner is not None:  # inside a model's or data's init_args
        if group is None and "." in key:
            group, key = key.rsplit(".", 1)
        prefix = f"{parser_key.group('key') if parser_key else ''}.init_args.{group + '.' if group else ''}"
        candidates = _class_keys(owner.group("path"), group)
    else:
        prefix = f"{group}." if group else ""
        options = [a.dest for a in parser._actions if isinstance(a.dest, str)]
        candidates = [o[len(prefix) :] for o in options if o.startswith(prefix)]
    closest = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    guess = f"; did you mean {closest[0]}?" if closest else ""
    return f"error: unknown config key {prefix.lstrip('.')}{key}{guess}\n{tip}"


def _class_keys(class_path: str, group: str | None) -> list[str]:
    """The init arguments of ``class_path`` and its bases, or the fields of its dataclass ``group``."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    parameters: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not resolve: the names still help
            hints = {}
        for parameter in inspect.signature(init).parameters.values():
            if parameter.name != "self" and parameter.kind not in (
                parameter.VAR_POSITIONAL,
                parameter.VAR_KEYWORD,
            ):
                parameters.setdefault(parameter.name, hints.get(parameter.name))
    if group is None:
        return list(parameters)
    hint = parameters.get(group.split(".")[0])
    types = [hint, *typing.get_args(hint)]
    dataclass = next((t for t in types if dataclasses.is_dataclass(t)), None)
    return [f.name for f in dataclasses.fields(dataclass)] if dataclass else []
