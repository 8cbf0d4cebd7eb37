"""Training configs: a dataclass of flat keys, filled from `--config FILE.yaml` and `--key value` overrides.

Keys follow diffusers' example scripts (`output_dir`, `max_train_steps`, `learning_rate`, ...). Any key can
be overridden on the command line (`--learning_rate 1e-4` or `--learning_rate=1e-4`); dotted keys reach
into dict-valued keys (`--model.hidden_size 128`). Values are parsed as YAML, then converted to the
key's declared type. Only `true`/`false` are booleans (YAML 1.2): YAML 1.1 also reads yes/no/on/off as
booleans, which turned `--mixed_precision no` into False; a key declared as a string keeps the text as written.
"""

import argparse
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

Config = TypeVar("Config")
_BOOL = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: `no`, `off`, `yes`, `on` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML value to a field type (PyYAML reads `1e-4` as a string, for one)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = options[0]
        origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
        if origin is list or annotation is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if origin is dict or annotation is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
    except (TypeError, ValueError) as error:
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {annotation}") from error
    return value


def _set_dotted(config: dict, dotted_key: str, value: Any) -> None:
    *parents, last = dotted_key.split(".")
    target = config
    for parent in parents:
        target = target.setdefault(parent, {})
        if not isinstance(target, dict):
            raise ValueError(f"--{dotted_key}: {parent!r} is not a dict-valued key")
    target[last] = value


def _help(config_cls: type, description: str) -> str:
    lines = [description, "", "options (--config FILE.yaml, then any key as --key VALUE):"]
    for field in dataclasses.fields(config_cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        lines.append(f"  --{field.name} (default: {default!r})")
        if field.metadata.get("help"):
            lines.append(f"      {field.metadata['help']}")
    return "\n".join(lines)


def parse_config(config_cls: type[Config], argv: list[str] | None, description: str = "") -> Config:
    """Build `config_cls` from `--config FILE` (YAML) and `--key value` overrides in `argv`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("-h", "--help", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.help:
        print(_help(config_cls, description))
        raise SystemExit(0)

    values: dict[str, Any] = {}
    if known.config:
        loaded = load_yaml(Path(known.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{known.config}: expected a mapping of config keys")
        values.update(loaded)

    index = 0
    while index < len(rest):
        token = rest[index]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}: overrides look like --key value")
        key, has_value, raw = token[2:].partition("=")
        key = key.replace("-", "_")  # --max-train-steps == --max_train_steps; the value is kept as written
        if not has_value:
            following = rest[index + 1] if index + 1 < len(rest) else None
            if following is None or following.startswith("--"):
                raw = "true"  # a bare flag switches a boolean on
            else:
                raw, index = following, index + 1
        _set_dotted(values, key, load_yaml(raw))
        index += 1

    fields = {field.name: field for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hints = [f"{key} (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(key, fields)) else key
                 for key in unknown]
        raise ValueError(f"unknown config key(s): {'; '.join(hints)}. Run with --help for the list.")
    hints = typing.get_type_hints(config_cls)
    converted = {}
    for key, value in values.items():
        if isinstance(value, dict) and (hints[key] is dict or typing.get_origin(hints[key]) is dict):
            default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else {}
            value = {**default, **value}  # a partial override keeps the other entries
        converted[key] = _convert(value, hints[key], key)
    return config_cls(**converted)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config next to the run, so a run can be reproduced from its folder."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
