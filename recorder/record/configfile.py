"""`ime-record --config FILE`: a TOML file holding command-line options under their long names.

Pure: the caller passes the options (long name → parameter name, and their kinds), so this module knows nothing
about click. Which keys hold secrets or URLs is the settings tree's (recorder/model/settings.py). Secrets never
come from the file itself: a service's config file is usually readable by more people than its environment file,
so a password or token in it is refused.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recorder.errors import UserError
from recorder.model.settings import OPTIONS
from recorder.redact import MASK, redact_url

URL_KEYS = frozenset(o.name for o in OPTIONS if o.url)
# Keys that hold a secret in clear; each says where the secret belongs instead.
SECRET_KEYS = {o.name: o.secret_hint() for o in OPTIONS if o.secret}
# Options that make no sense inside the file they would be read from.
NOT_IN_FILE = frozenset({"config", "print-config", "help", "version"})


def option_key(name: str) -> str:
    """`ids_file`, `ids-file` and `--ids-file` are the same key."""
    return name.strip().lstrip("-").replace("_", "-").lower()


# What a value must be, by the kind of its option. Checked here because click converts a default silently:
# `shards = 2.7` would run 2 shards and `demo = "no"` would turn the demo on.
KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "text": "a string"}


def _fits(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)


def _shown(value: Any) -> str:
    # Numbers and booleans only: a string may be a URL with credentials in it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "a list" if isinstance(value, list) else "a string" if isinstance(value, str) else type(value).__name__


def check_kind(raw_key: str, value: Any, kind: tuple[str, bool], source: str) -> None:
    """One line naming the key when `value` is not of the option's kind (its type name, and whether it repeats)."""
    name, multiple = kind
    if isinstance(value, list):
        if not multiple:
            raise UserError(f"config {source}: '{raw_key}' takes one value, not a list")
        items = value
    else:
        items = [value]
    for item in items:
        if not _fits(item, name):
            raise UserError(f"config {source}: '{raw_key}' must be {KIND_NAMES[name]}, not {_shown(item)}")


def parse_config(text: str, source: str, options: Mapping[str, str],
                 kinds: Mapping[str, tuple[str, bool]] | None = None) -> dict[str, Any]:
    """Parameter name → value for every key of the TOML `text`.

    `options` maps long option names (`ids-file`) to parameter names (`ids_file`); `kinds` maps parameter
    names to (kind, repeatable), kind one of KIND_NAMES. Raises UserError with one line naming `source` and
    the key for bad TOML, unknown keys, secrets in clear, tables, repeats and values of the wrong kind.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config {source}: not valid TOML: {exc}") from None
    known = {option_key(k): v for k, v in options.items()}
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, value in data.items():
        key = option_key(raw_key)
        if key in SECRET_KEYS:
            raise UserError(f"config {source}: refusing '{raw_key}' in clear (readable by whoever reads the file); "
                            f"{SECRET_KEYS[key]}")
        if key in NOT_IN_FILE or key not in known:
            raise UserError(f"config {source}: unknown key '{raw_key}'; keys are the long options of "
                            "`ime-record --help` without the dashes")
        if key in seen:
            raise UserError(f"config {source}: '{raw_key}' repeats '{seen[key]}'")
        if isinstance(value, dict):
            raise UserError(f"config {source}: '{raw_key}' is a table; give a plain value")
        if kinds is not None and known[key] in kinds:
            check_kind(raw_key, value, kinds[known[key]], source)
        seen[key] = raw_key
        out[known[key]] = value
    return out


def read_config(path: Path, options: Mapping[str, str],
                kinds: Mapping[str, tuple[str, bool]] | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not UTF-8 text") from None
    return parse_config(text, str(path), options, kinds)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def shown_value(key: str, value: Any) -> str:
    """One option's value as TOML (a reload's changes, --print-config): secrets masked, URLs without credentials
    (user:password@, ?token=)."""
    if key in SECRET_KEYS and value:
        return f'"{MASK}"'
    if value is None:
        return "(not set)"
    if key in URL_KEYS and value:
        if isinstance(value, list | tuple):
            return _toml_value([redact_url(str(u)) for u in value])
        return _toml_value(",".join(redact_url(u) for u in str(value).split(",")))
    return _toml_value(value)


def render_effective(settings: Iterable[tuple[str, Any, str]]) -> list[str]:
    """TOML lines `key = value  # source` for (long name, value, source); secrets masked, unset options
    commented out, so the output can be edited into a config file."""
    lines = []
    for key, value, source in settings:
        if key in SECRET_KEYS and value:
            lines.append(f"# {key} = {shown_value(key, value)}  # {source}; secrets are never printed")
        elif value is None:
            lines.append(f"# {key} =  # not set")
        else:
            lines.append(f"{key} = {shown_value(key, value)}  # {source}")
    return lines
