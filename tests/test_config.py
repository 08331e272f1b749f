"""Config loading: YAML + --set overrides, strict validation with one-line errors."""

from __future__ import annotations

import pytest
from pydantic import Field

from facepgn.config import StrictModel, apply_overrides, dump_config, load_config, parse_override
from facepgn.errors import ConfigError


class Inner(StrictModel):
    num_workers: int = 1
    use_gpu: bool = False


class Outer(StrictModel):
    name: str = "run"
    lr: float = Field(1e-3, gt=0)
    trainer: Inner = Inner()


def test_overrides_parse_yaml_values():
    assert parse_override("trainer.num_workers=16") == (["trainer", "num_workers"], 16)
    assert parse_override("trainer.use_gpu=true") == (["trainer", "use_gpu"], True)
    assert parse_override("name=a=b") == (["name"], "a=b")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d=[1, 2]"]) == {"a": {"b": 1, "c": 2}, "d": [1, 2]}


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrainer:\n  num_workers: 2\n")
    cfg = load_config(Outer, path, ["trainer.use_gpu=true", "lr=0.01"])
    assert (cfg.name, cfg.lr, cfg.trainer.num_workers, cfg.trainer.use_gpu) == ("x", 0.01, 2, True)
    # round trip through YAML
    out = tmp_path / "out.yaml"
    dump_config(cfg, out)
    assert load_config(Outer, out) == cfg


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("trainer:\n  num_wrkers: 2\n", [], "trainer.num_wrkers: unknown key"),
        ("lr: fast\n", [], "lr: Input should be a valid number"),
        ("", ["lr=-1"], "lr: Input should be greater than 0"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("name: [unclosed\n", [], "not valid YAML"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, text, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, overrides)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
