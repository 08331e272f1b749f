"""Ray Tune sweeps over Ray Train runs on the shared local Ray: ASHA on the validation NME, the
results table, and a best config that trains."""

from __future__ import annotations

import csv
import os

import pytest

from facepgn.cli import main
from facepgn.errors import ConfigError

TINY_TRAIN = """\
train:
  model: {input_size: 64, num_id: 10, num_exp: 5, pgn_width: 0.25, regressor_width: 0.25}
  data: {labelled: [LABELLED], labelled_batch_size: 16, pair_batch_size: 0}
  validation: {holdout_fraction: 0.25, overlay_images: 1, batch_size: 16}
  optim: {warmup_steps: 0}
  steps: 100
  log_every: 3
  scaling: {num_workers: 1}
"""


@pytest.fixture(autouse=True)
def _fast_train_controller(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_shipped_sweep_config_loads_on_its_base(tmp_path):
    from facepgn.paths import REPO_ROOT
    from facepgn.train.tune import default_concurrency, load_tune_config, trial_config

    cfg = load_tune_config(str(REPO_ROOT / "configs" / "tune-loss-weights.yaml"), ["train.steps=7"])
    # 2 workers x 0.5 CPU per trial: 2 trials at once on 2 CPUs, 16 on 16
    assert default_concurrency(cfg, {"CPU": 2.0}) == 2 and default_concurrency(cfg, {"CPU": 16.0}) == 16
    assert cfg.train.steps == 7 and cfg.train.scaling.num_workers == 2  # base train.yaml + overrides
    assert set(cfg.search_space) >= {"losses.flow", "losses.photometric"}
    trial = trial_config(cfg, {"losses.flow": 0.25, "optim.lr": 0.001}, "t1")
    assert trial.losses.flow == 0.25 and trial.optim.lr == 0.001 and trial.ray.name == "facepgn-tune-t1"


def test_pretrain_sweep_is_scored_on_real_faces_and_starts_from_the_shipped_model():
    """configs/tune-pretrain.yaml: trials fine-tune the shipped model on pretrain.yaml's real-face
    data, and the metric is the validation NME on the AFLW2000-3D dev split (roi crops)."""
    import torch

    from facepgn.model import build_model, load
    from facepgn.paths import REPO_ROOT
    from facepgn.train.checkpoint import init_weights
    from facepgn.train.tune import load_tune_config, trial_config

    cfg = load_tune_config(str(REPO_ROOT / "configs" / "tune-pretrain.yaml"))
    assert cfg.sweep.metric == "val_nme" and cfg.sweep.mode == "min"
    assert cfg.train.validation.labelled == ["data/aflw-dev"] and cfg.train.validation.max_records >= 503
    assert cfg.train.data.labelled and cfg.train.data.pairs and cfg.train.init_from == "pretrained"
    trial = trial_config(cfg, {"losses.flow": 0.5}, "t0")
    shipped = load(None)
    assert trial.model.model_dump(exclude={"mirror_test"}) == shipped.cfg.model_dump(exclude={"mirror_test"})
    model = build_model(trial.model)
    init_weights(model, trial.init_from)
    for name, value in shipped.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], value), name


def test_sweep_config_errors_are_one_line(tmp_path, synthetic_faces_dir):
    from facepgn.train.tune import load_tune_config, run_sweep

    train = TINY_TRAIN.replace("LABELLED", synthetic_faces_dir)
    bad_key = write(tmp_path / "a.yaml", train + "search_space:\n  losses.flw: {uniform: [0, 1]}\n")
    with pytest.raises(ConfigError, match=r"a.yaml: search_space.losses.flw: not a training setting"):
        load_tune_config(bad_key)
    two_dists = write(tmp_path / "b.yaml", train + "search_space:\n  losses.flow: {uniform: [0, 1], choice: [1]}\n")
    with pytest.raises(ConfigError, match=r"search_space.losses.flow: Value error, give exactly one of"):
        load_tune_config(two_dists)
    missing_base = write(tmp_path / "c.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: config file not found"):
        load_tune_config(missing_base)
    no_validation = write(tmp_path / "d.yaml", train.replace("holdout_fraction: 0.25", "holdout_fraction: 0.0"))
    with pytest.raises(ConfigError, match="a sweep needs validation data"):
        run_sweep(load_tune_config(no_validation, [f"output_dir={tmp_path / 'out'}", f"storage_path={tmp_path / 'ray'}"]))
    assert not (tmp_path / "ray").exists()


def test_a_sweep_without_validation_faces_is_one_line_before_any_trial(ray_session, tmp_path, synthetic_faces_dir, capsys):
    """Through the CLI (exit 2, one ``facepgn: error:`` line naming the setting or path and the
    cause), and before any trial: no hold-out, a hold-out share no subject falls in (known only
    from the rows: counted in the cluster), and validation shards without rows."""
    import zlib

    import pyarrow.parquet as pq

    from facepgn.train import data as train_data

    faces = train_data.read_records([synthetic_faces_dir], "face_record")
    # the largest fraction that still holds out none of these subjects (in_holdout: crc32 % 10000)
    smallest = min(zlib.crc32(str(s).encode("utf-8")) % 10_000 for s in faces.column("subject_id").to_pylist())
    assert smallest >= 2, smallest
    empty_validation = tmp_path / "empty-validation"
    empty_validation.mkdir()
    pq.write_table(faces.slice(0, 0), str(empty_validation / "part-0.parquet"))
    train = TINY_TRAIN.replace("LABELLED", synthetic_faces_dir)
    cfg = write(tmp_path / "sweep.yaml", train + "search_space:\n  losses.flow: {uniform: [0, 1]}\n"
                f"storage_path: {tmp_path / 'ray'}\noutput_dir: {tmp_path / 'sweep'}\n")
    cases = [
        (["train.validation.holdout_fraction=0"], "config: a sweep needs validation data"),
        ([f"train.validation.holdout_fraction={(smallest - 1) / 10_000:g}"],
         f"validation.holdout_fraction={(smallest - 1) / 10_000:g} holds out no face: no subject of data.labelled"),
        ([f'train.validation.labelled=["{empty_validation}"]'], f"{empty_validation}: validation.labelled holds no faces"),
    ]
    for overrides, expected in cases:
        code = main(["tune", "--config", cfg, "--set", *overrides])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("facepgn: error: ")]
        assert code == 2, (overrides, err)
        assert len(errors) == 1 and "Traceback" not in err, err
        assert expected in errors[0], (expected, errors[0])
    assert not (tmp_path / "ray" / "facepgn-tune").exists() and not (tmp_path / "ray" / "facepgn-tune-trials").exists()  # no trial
    assert not (tmp_path / "sweep" / "trials").exists()


def test_sweep_stops_a_bad_trial_early_and_writes_a_trainable_best_config(ray_session, tmp_path, synthetic_faces_dir, capsys):
    # 3 trials (a grid over the learning rate, random loss weights); the third diverges (lr 1: its mesh
    # NME is ~30x the others, yet finite)
    # and ASHA stops it at its first rung, after the others have set the bar
    cfg = write(
        tmp_path / "sweep.yaml",
        TINY_TRAIN.replace("LABELLED", synthetic_faces_dir)
        + "search_space:\n"
        "  losses.landmarks_3d: {loguniform: [0.3, 1.0]}\n"
        "  losses.mesh_landmarks: {uniform: [0.3, 1.0]}\n"
        "  optim.lr: {grid: [0.002, 0.003, 1.0]}\n"
        "sweep: {num_samples: 1, max_concurrent_trials: 2, grace_period: 1, max_t: 2, reduction_factor: 2}\n"
        f"storage_path: {tmp_path / 'ray'}\n"
        f"output_dir: {tmp_path / 'sweep'}\n",
    )
    assert main(["tune", "--config", cfg]) == 0
    out = tmp_path / "sweep"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    by_lr = {float(r["optim.lr"]): r for r in rows}
    assert by_lr[1.0]["status"] == "stopped early" and by_lr[1.0]["epoch"] == "1", rows
    assert sum(r["status"] == "completed" for r in rows) >= 1
    assert float(rows[0]["optim.lr"]) < 1.0  # best first
    assert "| trial_id |" in (out / "results.md").read_text()
    assert "stopped early" in capsys.readouterr().out

    # the best config is a training config: it loads and trains
    best = str(out / "best.yaml")
    model_dir = tmp_path / "best-model"
    assert main(["train", "--local", "--config", best, "--set", "steps=2", f"output_dir={model_dir}"]) == 0
    assert os.path.exists(model_dir / "model.pt")
