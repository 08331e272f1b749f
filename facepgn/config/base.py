"""What every config shares: the strict base model, ``key=value`` overrides, reading YAML, one-line
errors, and the old names of moved keys (still read, noted in one line)."""

from __future__ import annotations

import os
import sys
import types
import typing
from typing import Any, ClassVar, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from facepgn.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors.

    ``renamed`` maps a section's old keys to where they live now (a dotted path below the section):
    YAML files, ``--set`` and keyword arguments still take the old keys, attributes of that name
    read and write the new place, and :func:`load_config` notes the old keys it met in one line.
    :meth:`upgrade` is the hook for changes that are more than a move."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for old, new in cls.__dict__.get("renamed", {}).items():
            setattr(cls, old, _alias_property(new))

    @model_validator(mode="before")
    @classmethod
    def _current_keys(cls, data: Any) -> Any:
        return upgrade_section(cls, data) if isinstance(data, dict) else data

    @classmethod
    def upgrade(cls, data: dict[str, Any], notes: list[str] | None, where: str) -> dict[str, Any]:
        """An earlier layout of this section (``data``, a copy the method may change) as the current
        one; each change adds a note ``"old -> new"`` (``where``: the section's dotted prefix)."""
        return data


ConfigT = TypeVar("ConfigT", bound=StrictModel)


def _alias_property(new: str) -> property:
    parts = new.split(".")

    def get(self: StrictModel) -> Any:
        node: Any = self
        for part in parts:
            node = getattr(node, part)
        return node

    def set_(self: StrictModel, value: Any) -> None:
        node: Any = self
        for part in parts[:-1]:
            node = getattr(node, part)
        setattr(node, parts[-1], value)

    return property(get, set_, doc=f"old name of ``{new}``")


def section_type(annotation: Any) -> type[StrictModel] | None:
    """The config section class of a field's annotation (``X`` or ``Optional[X]``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, StrictModel)]
        return found[0] if len(found) == 1 else None
    return None


def upgrade_section(cls: type[StrictModel], data: dict[str, Any], notes: list[str] | None = None,
                    where: str = "") -> dict[str, Any]:
    """``data`` of section ``cls`` with its old keys moved to their current place (this level only)."""
    if not cls.renamed and cls.upgrade.__func__ is StrictModel.upgrade.__func__:  # type: ignore[attr-defined]
        return data
    data = dict(data)
    for old, new in cls.renamed.items():
        if old not in data:
            continue
        value = data.pop(old)
        *parents, last = new.split(".")
        node = data
        for key in parents:
            child = node.get(key)
            child = dict(child) if isinstance(child, BaseModel) else dict(child or {})
            node[key] = child
            node = child
        if last in node:
            raise ConfigError(f"{where}{old} and {where}{new} both given ({old} is the old name of {new})")
        node[last] = value
        if notes is not None:
            notes.append(f"{where}{old} -> {where}{new}")
    return cls.upgrade(data, notes, where)


def upgrade_keys(cls: type[StrictModel], data: dict[str, Any], notes: list[str] | None = None,
                 where: str = "") -> dict[str, Any]:
    """:func:`upgrade_section` over ``data`` and every section below it."""
    data = upgrade_section(cls, data, notes, where)
    for name, field in cls.model_fields.items():
        sub = section_type(field.annotation)
        if sub is not None and isinstance(data.get(name), dict):
            data[name] = upgrade_keys(sub, data[name], notes, f"{where}{name}.")
    return data


def current_key(cls: type[StrictModel] | None, keys: list[str], notes: list[str] | None = None) -> list[str]:
    """A dotted override key (split) with old names replaced by the current ones."""
    keys = list(keys)
    i = 0
    while i < len(keys) and cls is not None:
        if keys[i] in cls.renamed:
            new = cls.renamed[keys[i]].split(".")
            if notes is not None:
                notes.append(f"{'.'.join(keys[:i + 1])} -> {'.'.join(keys[:i] + new)}")
            keys[i:i + 1] = new
            continue
        field = cls.model_fields.get(keys[i])
        cls = section_type(field.annotation) if field is not None else None
        i += 1
    return keys


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.num_workers=16"`` -> (["trainer", "num_workers"], 16). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return keys, value


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with ``a.b.c`` (or its split keys) set to ``value``; missing or
    non-mapping levels on the way become mappings."""
    keys = key.split(".") if isinstance(key, str) else list(key)
    out = dict(data)
    if len(keys) == 1:
        out[keys[0]] = value
        return out
    child = out.get(keys[0])
    out[keys[0]] = set_dotted(child if isinstance(child, dict) else {}, keys[1:], value)
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mappings merged key by key (``base`` is not changed)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], cls: type[StrictModel] | None = None,
                    notes: list[str] | None = None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied (old key names of
    ``cls`` replaced by the current ones, each noted in ``notes``)."""
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        out = set_dotted(out, current_key(cls, keys, notes), value)
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (local path or ``s3://``), with a one-line error on failure."""
    from facepgn import storage

    try:
        text = storage.read_text(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: the source, the first offending key and what is wrong with it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def build_config(cls: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def config_data(cls: type[StrictModel], path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                notes: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The YAML file's mapping (empty without one) with the overrides on top, old keys moved to
    their current place (noted in ``notes``), and the source to name in errors."""
    overrides = list(overrides)
    source = str(path) if path else "config"
    data = _upgraded(cls, read_yaml(path), notes, source) if path else {}
    if overrides:
        source += " (with --set overrides)"
    data = _upgraded(cls, apply_overrides(data, overrides, cls, notes), notes, source)
    return data, source


def _upgraded(cls: type[StrictModel], data: dict[str, Any], notes: list[str] | None, source: str) -> dict[str, Any]:
    try:
        return upgrade_keys(cls, data, notes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def note_old_keys(notes: list[str], source: str) -> None:
    """The one-line deprecation note of the old key names a config used."""
    if notes:
        unique = list(dict.fromkeys(notes))
        shown = ", ".join(unique[:6]) + (f" and {len(unique) - 6} more" if len(unique) > 6 else "")
        print(f"facepgn: note: {source} uses old key names, still read (`facepgn config show` has the current ones): {shown}",
              file=sys.stderr)


def load_config(
    cls: type[ConfigT],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> ConfigT:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    notes: list[str] = []
    data, source = config_data(cls, path, overrides, notes)
    cfg = build_config(cls, data, source)
    note_old_keys(notes, source)
    return cfg


def dump_config(config: StrictModel, path: str | os.PathLike | None = None) -> str:
    """The config as YAML text (and written atomically to ``path`` if given)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        from facepgn import storage

        storage.atomic_write_text(str(path), text)
    return text
