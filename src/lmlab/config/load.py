"""Reading and writing configs: TOML recipes, ``--section.key=value`` overrides, and the key listing.

Values are converted to each field's type; unknown keys and bad values raise
:class:`~lmlab.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from lmlab.config.sections import Config, PhaseConfig
from lmlab.errors import ConfigError
from lmlab.io import atomic_write_text


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(key: str, tp: Any, value: Any) -> Any:
    """Convert a TOML value or a command-line string to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = tomllib.loads(f"v = {text}")["v"]
                except tomllib.TOMLDecodeError as e:
                    raise ConfigError(f"{key}: cannot read {value!r} as a list ({e})") from None
            else:
                value = [v for v in text.split(",") if v] if text else []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(key, item_tp, v) for v in value]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(key, args[0], value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _check_toml_type(key: str, tp: Any, value: Any) -> None:
    """A TOML file has typed values: a quoted "8" for an integer key is a mistake, not 8."""
    if typing.get_origin(tp) is list and isinstance(value, list):
        (item_tp,) = typing.get_args(tp)
        for v in value:
            _check_toml_type(key, item_tp, v)
        return
    names = {int: "an integer", float: "a number", bool: "true or false"}
    if tp in names and isinstance(value, str):
        raise ConfigError(
            f"{key}: expected {names[tp]}, got the string {value!r} (write it without quotes)"
        )


def _set(cfg: Config, key: str, value: Any, typed: bool = False) -> None:
    """Set ``key`` to ``value``; ``typed``: the value comes from TOML, where strings stay strings."""

    def convert(tp: Any) -> Any:
        if typed:
            _check_toml_type(key, tp, value)
        return _convert(key, tp, value)

    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "phase":  # phase.N.key, N counted from 1
        n = int(parts[1]) if parts[1].isdigit() else 0
        if not 1 <= n <= len(cfg.phase):
            raise ConfigError(f"{key}: no phase {parts[1]} (the recipe has {len(cfg.phase)})")
        hints = _field_types(PhaseConfig)
        if parts[2] not in hints:
            raise ConfigError(
                f"{key}: unknown key in [[phase]] (known: {', '.join(sorted(hints))})"
            )
        setattr(cfg.phase[n - 1], parts[2], convert(hints[parts[2]]))
        return
    if len(parts) != 2:
        raise ConfigError(f"{key}: config keys look like section.name (e.g. train.lr)")
    section_name, name = parts
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section_name not in sections:
        raise ConfigError(
            f"{key}: unknown section {section_name!r} (known: {', '.join(sorted(sections))})"
        )
    section = getattr(cfg, section_name)
    if isinstance(section, list):
        raise ConfigError(
            f"{key}: [[{section_name}]] keys look like {section_name}.N.name (N from 1)"
        )
    hints = _field_types(type(section))
    if name not in hints:
        raise ConfigError(
            f"{key}: unknown key in [{section_name}] (known: {', '.join(sorted(hints))})"
        )
    setattr(section, name, convert(hints[name]))


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts (a parsed TOML file); unknown keys raise ConfigError."""
    cfg = Config()
    for section_name, body in data.items():
        if section_name == "phase":
            if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
                raise ConfigError(f"{source}: phase: expected [[phase]] tables")
            for i, table in enumerate(body, 1):
                cfg.phase.append(PhaseConfig())
                for name, value in table.items():
                    try:
                        _set(cfg, f"phase.{i}.{name}", value, typed=True)
                    except ConfigError as e:
                        raise ConfigError(f"{source}: {e}") from None
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section_name}: expected a [{section_name}] table")
        for name, value in body.items():
            try:
                _set(cfg, f"{section_name}.{name}", value, typed=True)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cfg


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped inside the package, by name (file stem)."""
    folder = Path(__file__).resolve().parents[1] / "recipes"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: the path itself, or a shipped recipe's name such as ``shakespeare-char``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = builtin_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ConfigError(f"{path}: config file not found (shipped recipes: {', '.join(shipped)})")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML recipe (a path or a shipped recipe's name), apply overrides, validate."""
    path = find_recipe(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    cfg = from_dict(data, source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (a leading ``--`` is allowed)."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"{item}: overrides look like --section.key=value")
        key, value = text.split("=", 1)
        _set(cfg, key.strip(), value)
    return cfg


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\t", "\\t")
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML text that :func:`load_config` reads back unchanged."""
    lines: list[str] = []
    for section_name, body in to_dict(cfg).items():
        if isinstance(body, list):  # arrays of tables come last, as [[name]]
            continue
        lines.append(f"[{section_name}]")
        for name, value in body.items():
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    for item in to_dict(cfg)["phase"]:
        lines.append("[[phase]]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in item.items()]
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    atomic_write_text(Path(path), to_toml(cfg))


def describe_fields() -> str:
    """Every key with its default and help line, for `--help` and the docs."""
    out: list[str] = []
    cfg = Config()
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        if isinstance(obj, list):  # [[phase]]: describe one default table
            obj = PhaseConfig()
            out.append(f"[[{section.name}]]  {type(obj).__doc__ or ''}".rstrip())
            for f in dataclasses.fields(obj):
                choices = f.metadata.get("choices")
                extra = f" ({'|'.join(choices)})" if choices else ""
                out.append(
                    f"  {section.name}.N.{f.name} = {_toml_value(getattr(obj, f.name))}  {f.metadata.get('help', '')}{extra}"
                )
            continue
        out.append(f"[{section.name}]  {type(obj).__doc__ or ''}".rstrip())
        for f in dataclasses.fields(obj):
            choices = f.metadata.get("choices")
            extra = f" ({'|'.join(choices)})" if choices else ""
            out.append(
                f"  {section.name}.{f.name} = {_toml_value(getattr(obj, f.name))}  {f.metadata.get('help', '')}{extra}"
            )
    return "\n".join(out)
