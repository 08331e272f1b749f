"""Typed, validated configs: one pydantic model per job, loaded from YAML with ``--set a.b=value``.

Unknown keys and wrong types are errors (``extra="forbid"``), reported in one line that names the
file and the offending key before any work starts.

Each job's config lives in this module, in its own section below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from facepgn.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ConfigT = TypeVar("ConfigT", bound=StrictModel)


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


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
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


def load_config(
    cls: type[ConfigT],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> ConfigT:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    overrides = list(overrides)
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    source = str(path) if path else "config"
    if overrides:
        source += " (with --set overrides)"
    return build_config(cls, data, source)


def dump_config(config: StrictModel, path: str | os.PathLike | None = None) -> str:
    """The config as YAML text (and written atomically to ``path`` if given)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        from facepgn import storage

        storage.atomic_write_text(str(path), text)
    return text


# --------------------------------------------------------------------------------------------
# Job configs. Each section is owned by the module named in its comment.
# --------------------------------------------------------------------------------------------

# == face model (facepgn.facemodel) ==
# == synthetic data (facepgn.synthetic) ==
# == model and losses (facepgn.model, facepgn.losses) ==
# == preprocess (facepgn.pipelines.preprocess) ==
# == training and tuning (facepgn.train) ==
# == inference (facepgn.pipelines.infer) ==
# == demo (facepgn.demo) ==
