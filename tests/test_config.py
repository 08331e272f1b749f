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


# ---- moved keys, the one mixed-precision setting, `facepgn config show`, the shipped files ----


def test_old_flat_keys_still_work_in_yaml_set_and_keywords(tmp_path, capsys):
    from facepgn.config import InferConfig, PreprocessConfig

    path = tmp_path / "infer.yaml"
    path.write_text("stride: 3\nphoto_max_side: 640\nmin_actors: 2\nmax_actors: 4\n")
    cfg = load_config(InferConfig, path, ["overlay=true", "decode.max_frames=9", "max_frames=10"])
    assert (cfg.decode.stride, cfg.photos.max_side, cfg.actors.min, cfg.actors.max) == (3, 640, 2, 4)
    assert cfg.outputs.overlay is True and cfg.decode.max_frames == 10  # the later override wins, old name or new
    note = capsys.readouterr().err.strip()
    assert len(note.splitlines()) == 1 and "stride -> decode.stride" in note and "overlay -> outputs.overlay" in note
    new = tmp_path / "new.yaml"
    new.write_text("decode: {stride: 3, max_frames: 10}\nphotos: {max_side: 640}\nactors: {min: 2, max: 4}\noutputs: {overlay: true}\n")
    assert load_config(InferConfig, new) == cfg and capsys.readouterr().err == ""  # no note for current keys
    # keyword arguments and attributes take the old names too (callers written before the sections)
    pre = PreprocessConfig(image_size=64, max_frames_per_video=10, target_fps=5.0, landmark_model="m.onnx")
    assert (pre.crops.size, pre.decode.max_frames_per_video, pre.decode.target_fps, pre.labels.model) == (64, 10, 5.0, "m.onnx")
    assert (pre.image_size, pre.target_fps) == (64, 5.0)
    pre.max_gap = 3
    assert pre.pairs.max_gap == 3 and pre.model_dump()["pairs"]["max_gap"] == 3
    with pytest.raises(ConfigError, match="image_size and crops.size both given"):
        load_config(PreprocessConfig, _write(tmp_path / "both.yaml", "image_size: 64\ncrops: {size: 96}\n"))


def _write(path, text):
    path.write_text(text)
    return path


def test_one_mixed_precision_setting(tmp_path, capsys):
    import torch

    from facepgn.config import DistributedTrainConfig
    from facepgn.train.optim import amp_mode

    cfg = DistributedTrainConfig()
    assert cfg.optim.amp == "auto" and "gpu_mixed_precision" not in cfg.scaling.model_dump()
    assert amp_mode("auto", torch.device("cpu")) == "off" and amp_mode("auto", torch.device("cuda")) == "bf16"
    assert amp_mode("fp16", torch.device("cuda")) == "fp16" and amp_mode("off", torch.device("cuda")) == "off"
    # the old scaling.gpu_mixed_precision (bf16 on GPUs while optim.amp was "off") reads as optim.amp
    old = {("off", True): "auto", ("off", False): "off", ("bf16", False): "bf16", ("fp16", True): "fp16"}
    for (amp, gpu_bf16), expected in old.items():
        path = _write(tmp_path / "t.yaml", f"optim: {{amp: '{amp}'}}\nscaling: {{gpu_mixed_precision: {str(gpu_bf16).lower()}}}\n")
        assert load_config(DistributedTrainConfig, path).optim.amp == expected, (amp, gpu_bf16)
    assert load_config(DistributedTrainConfig, None, ["scaling.gpu_mixed_precision=false"]).optim.amp == "off"
    assert "scaling.gpu_mixed_precision -> optim.amp" in capsys.readouterr().err


def test_config_show_prints_the_defaults_as_commented_yaml(capsys):
    import yaml

    from facepgn.cli import main
    from facepgn.config import JOB_CONFIGS, build_config
    from facepgn.config.show import defaults_yaml

    assert main(["config", "show", "infer"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("# facepgn infer: InferConfig defaults")
    assert any(ln.startswith("decode:  ") for ln in lines) and any(ln.startswith("  stride: 1 ") and ln.endswith("# process every Nth frame") for ln in lines)
    assert any(ln.startswith("# context around the detector box") for ln in lines)  # comment lines above a field
    assert build_config(JOB_CONFIGS["infer"][0], yaml.safe_load(text)) == JOB_CONFIGS["infer"][0]()
    for name, (cls, _) in JOB_CONFIGS.items():  # every job: the printed text loads back as the defaults
        assert build_config(cls, yaml.safe_load(defaults_yaml(cls)), name) == cls(), name
    assert main(["config", "show"]) == 0 and "synth-faces" in capsys.readouterr().out


def _leaves(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("search_space", "overrides"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_shipped_configs_list_only_what_differs_from_the_defaults(capsys):
    from facepgn.config import JOB_CONFIGS, read_yaml
    from facepgn.paths import REPO_ROOT

    jobs = {"pretrain": "train", "tune-loss-weights": "tune", "tune-pretrain": "tune"}
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        cls = JOB_CONFIGS[jobs.get(path.stem, path.stem)][0]
        defaults = cls().model_dump(mode="json")
        for key, value in _leaves(read_yaml(path)):
            if key in ("base", "search_space") or key.startswith("train."):
                continue  # a sweep's train section is what its trials change in their base file
            node = defaults
            for part in key.split("."):
                node = node[part]
            assert node != value, f"{path.name}: {key} is the default ({value!r})"
        if cls.__name__ != "TuneJobConfig":
            load_config(cls, path)
    assert capsys.readouterr().err == ""  # the shipped files use the current key names
