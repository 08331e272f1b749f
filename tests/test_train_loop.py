"""Batch conversion, the shared train step and the plain loop on tiny synthetic (and real-video) data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from facepgn.config import LossWeights, ModelConfig, TrainConfig
from facepgn.errors import InputError
from facepgn.losses import TERMS
from facepgn.model import build_model, load_model_file
from facepgn.train import data as train_data
from facepgn.train.checkpoint import load_checkpoint, model_from_checkpoint, read_checkpoint
from facepgn.train.loop import train
from facepgn.train.optim import make_optimizer
from facepgn.train.step import eval_losses, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small nets (conftest.one_torch_thread)


@pytest.fixture(scope="module")
def faces_table(synthetic_faces_dir) -> pa.Table:
    return train_data.read_records([synthetic_faces_dir], "face_record")


@pytest.fixture(scope="module")
def pairs_table(synthetic_pairs_dir) -> pa.Table:
    return train_data.read_records([synthetic_pairs_dir], "frame_pair")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(input_size=64))


def _batch(faces_table, pairs_table, n_faces=6, n_pairs=3, size=64):
    faces = train_data.face_batch_to_tensors(faces_table.slice(0, n_faces), size, 40, 20, "ict-face-area")
    pairs = train_data.pair_batch_to_tensors(pairs_table.slice(0, n_pairs), size)
    return train_data.mixed_batch(faces, pairs)


def test_face_batches_from_arrow_numpy_and_pandas_agree(faces_table):
    rows = faces_table.slice(0, 4)
    from_arrow = train_data.face_batch_to_tensors(rows, 128, 40, 20, "ict-face-area")
    # Ray Data's numpy batches: list columns as object arrays of arrays, binaries as bytes
    as_numpy = {name: np.array([None if v is None else (np.asarray(v) if isinstance(v, list) else v) for v in rows.column(name).to_pylist()], dtype=object)
                for name in rows.column_names}
    from_numpy = train_data.face_batch_to_tensors(as_numpy, 128, 40, 20, "ict-face-area")
    from_pandas = train_data.face_batch_to_tensors(rows.to_pandas(), 128, 40, 20, "ict-face-area")
    for key, value in from_arrow.items():
        assert torch.equal(value, from_numpy[key]), key
        assert torch.equal(value, from_pandas[key]), key
    assert from_arrow["images"].shape == (4, 3, 128, 128) and from_arrow["images"].max() <= 1
    assert from_arrow["has_3d"].all() and from_arrow["has_coeffs"].all()
    # another model face model / another expression count: coefficients are not used
    assert not train_data.face_batch_to_tensors(rows, 128, 40, 20, "bfm")["has_coeffs"].any()
    assert not train_data.face_batch_to_tensors(rows, 128, 40, 10)["has_coeffs"].any()
    # resizing to 64 px halves the coordinates (pixel centres at integers)
    half = train_data.face_batch_to_tensors(rows, 64, 40, 20)
    expected = (from_arrow["landmarks_3d"][..., :2] + 0.5) * 0.5 - 0.5
    assert torch.allclose(half["landmarks_3d"][..., :2], expected, atol=1e-4)
    assert torch.allclose(half["landmarks_3d"][..., 2], from_arrow["landmarks_3d"][..., 2] * 0.5, atol=1e-4)


def test_pair_batches_keep_the_flow_consistent_when_resized(pairs_table):
    full = train_data.pair_batch_to_tensors(pairs_table.slice(0, 2), 128)
    half = train_data.pair_batch_to_tensors(pairs_table.slice(0, 2), 64)
    assert full["flow"].shape == (2, 2, 128, 128) and half["flow"].shape == (2, 2, 64, 64)
    assert "landmarks_2d_a" not in full  # the fixture's pairs carry no pseudo-labels
    ratio = half["flow"].abs().mean() / full["flow"].abs().mean()
    assert 0.4 < float(ratio) < 0.6


def test_bad_image_is_a_one_line_error_naming_the_record(faces_table):
    rows = faces_table.slice(0, 2).to_pylist()
    rows[1]["image"] = b"not a jpeg"
    with pytest.raises(InputError, match=r"face record synthetic-.*: image cannot be decoded"):
        train_data.face_batch_to_tensors(rows, 64, 40, 20)


def test_step_reports_every_term_and_bf16_autocast_works(small_model, faces_table, pairs_table):
    batch = _batch(faces_table, pairs_table)
    opt = make_optimizer(small_model, TrainConfig().optim)
    before = [p.detach().clone() for p in small_model.parameters()]
    metrics = train_step(small_model, opt, batch, LossWeights(), grad_clip=5.0)
    expected = {f"loss_{t}" for t in TERMS if t != "landmarks_2d"}  # no 2D-only rows, no pair pseudo-labels
    assert expected <= set(metrics), set(metrics)
    assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("loss")), metrics
    assert metrics["skipped"] == 0 and metrics["grad_norm"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, small_model.parameters())]
    assert all(moved)  # every parameter (PGN and regressor) got an update
    bf16 = train_step(small_model, opt, batch, LossWeights(), amp_dtype=torch.bfloat16, grad_clip=5.0)
    assert np.isfinite(bf16["loss"]) and bf16["skipped"] == 0
    assert abs(bf16["loss"] - metrics["loss"]) < 0.5 * metrics["loss"]
    # only labelled faces, or only pairs, is a valid step too
    assert "loss_flow" not in train_step(small_model, opt, {"faces": batch["faces"]}, LossWeights())
    only_pairs = train_step(small_model, opt, {"pairs": batch["pairs"]}, LossWeights())
    assert "loss_flow" in only_pairs and "loss_landmarks_3d" not in only_pairs


def test_direct_pose_model_trains_with_the_same_step(faces_table, pairs_table):
    model = build_model(ModelConfig(input_size=64, pose="direct"))
    opt = make_optimizer(model, TrainConfig().optim)
    metrics = train_step(model, opt, _batch(faces_table, pairs_table, 4, 2), LossWeights())
    assert np.isfinite(metrics["loss"]) and "loss_landmark_flow" not in metrics


def test_trained_model_file_fixture_lowered_the_loss(trained_model_file):
    summary = json.loads((Path(trained_model_file).parent / "summary.json").read_text())
    history = summary["history"]
    assert history[-1]["loss"] < 0.92 * history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["loss_landmarks_3d"] < history[0]["loss_landmarks_3d"]
    model = load_model_file(trained_model_file)
    assert not model.training and model.input_size == 128


def test_checkpoint_resume_and_identical_outputs(synthetic_faces_dir, synthetic_pairs_dir, tmp_path, faces_table):
    cfg = TrainConfig.model_validate(
        {
            "model": {"input_size": 64},
            "data": {"labelled": [synthetic_faces_dir], "pairs": [synthetic_pairs_dir], "labelled_batch_size": 4, "pair_batch_size": 2,
                     "pairs_from_step": 2},
            "steps": 3,
            "log_every": 1,
            "checkpoint_every": 2,
            "tensorboard": True,
            "output_dir": str(tmp_path),
        }
    )
    first = train(cfg)
    assert first["steps"] == 3 and first["resumed_from"] == 0
    # labelled-only warm-up: the pair terms start at step 3 (index 2)
    assert "loss_flow" not in first["history"][1] and "loss_flow" in first["history"][2]
    assert list((tmp_path / "tensorboard").iterdir())
    # the checkpoint and the model file hold the same weights, loaded with weights_only=True
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert raw["step"] == 3
    from_ckpt = model_from_checkpoint(str(tmp_path / "checkpoint.pt"))
    from_file = load_model_file(tmp_path / "model.pt")
    images = train_data.face_batch_to_tensors(faces_table.slice(0, 2), 64, 40, 20)["images"]
    with torch.no_grad():
        a, b = from_ckpt(images), from_file(images)
    for key in ("landmarks_3d", "mesh_landmarks", "scale", "exp_coeffs"):
        assert torch.equal(a[key], b[key]), key
    # resume: two more steps continue from step 3 with the saved optimizer state
    resumed = train(cfg.model_copy(update={"steps": 5}))
    assert resumed["resumed_from"] == 3 and resumed["steps_this_run"] == 2
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.optim)
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"), model, opt) == 5
    assert opt.state  # Adam moments restored
    # a checkpoint of another model config is refused with a one-line error
    other = build_model(ModelConfig(input_size=64, num_id=20))
    with pytest.raises(InputError, match="another model config"):
        load_checkpoint(str(tmp_path / "checkpoint.pt"), other)
    with pytest.raises(InputError, match="not a facepgn checkpoint"):
        read_checkpoint(str(tmp_path / "model.pt"))


def test_checkpoints_of_an_earlier_model_config_schema_still_resume(tmp_path):
    """A checkpoint written before a ModelConfig setting existed (mirror_test, added with its
    default) resumes: weights, optimiser, step; a checkpoint of another model config is refused."""
    from facepgn.train.checkpoint import save_checkpoint

    cfg = TrainConfig.model_validate({"model": {"input_size": 64, "num_id": 10, "num_exp": 5, "pgn_width": 0.25, "regressor_width": 0.25}})
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.optim)
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, model, opt, step=7, train_config=cfg)
    payload = torch.load(path, weights_only=True)
    del payload["model"]["config"]["mirror_test"]  # as the checkpoints written before it existed
    torch.save(payload, path)
    fresh = build_model(cfg.model)
    assert load_checkpoint(path, fresh, make_optimizer(fresh, cfg.optim)) == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    payload["model"]["config"]["num_exp"] = 4
    torch.save(payload, path)
    with pytest.raises(InputError, match="another model config"):
        load_checkpoint(path, fresh)


def test_a_step_on_real_video_pairs(frame_pair_shards, small_model, faces_table):
    """Frame pairs from real videos (H4's preprocess, 64 px crops, DIS flow) go through the step."""
    table = train_data.read_records([frame_pair_shards], "frame_pair")
    pairs = train_data.pair_batch_to_tensors(table.slice(0, 3), 64)
    assert torch.isfinite(pairs["flow"]).all()
    faces = train_data.face_batch_to_tensors(faces_table.slice(0, 3), 64, 40, 20)
    batch = train_data.mixed_batch(faces, pairs)
    metrics = eval_losses(small_model, batch, LossWeights())
    assert np.isfinite(metrics["loss"]) and "loss_flow" in metrics and "loss_photometric" in metrics
    if "landmarks_2d_a" in pairs:  # pseudo-labels from the 68-point landmark model
        assert "loss_pair_landmarks_2d" in metrics


def test_amp_settings():
    from facepgn.train.step import autocast_settings

    assert autocast_settings("off", "cpu") == (None, None)
    assert autocast_settings("bf16", "cpu") == (torch.bfloat16, None)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_settings("fp16", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fp16 + GradScaler)")
def test_fp16_step_with_grad_scaler_on_cuda(faces_table, pairs_table):
    from facepgn.train.step import autocast_settings

    model = build_model(ModelConfig(input_size=64)).cuda()
    opt = make_optimizer(model, TrainConfig().optim)
    amp_dtype, scaler = autocast_settings("fp16", "cuda")
    batch = train_data.to_device(_batch(faces_table, pairs_table), "cuda")
    for _ in range(3):
        metrics = train_step(model, opt, batch, LossWeights(), amp_dtype=amp_dtype, scaler=scaler, grad_clip=5.0)
    assert np.isfinite(metrics["loss"])


def test_records_in_another_landmark_definition_are_refused(synthetic_faces_dir, tmp_path):
    """Labels of other vertices than the model's landmark definition: a one-line error naming the
    data, before training, in the plain loop and in the Ray trainer's preflight (footer statistics)."""
    from facepgn.config import DistributedTrainConfig, TrainConfig
    from facepgn.errors import InputError
    from facepgn.train import loop
    from facepgn.train.data import read_records
    from facepgn.train.plan import preflight

    table = read_records([synthetic_faces_dir], "face_record")
    definitions = set(table.column("landmark_definition").to_pylist())
    assert definitions == {"calibrated"}  # synthetic faces name theirs (ModelConfig's default, auto)
    cfg = {"data": {"labelled": [synthetic_faces_dir], "pair_batch_size": 0, "labelled_batch_size": 4},
           "model": {"input_size": 64, "landmarks": "upstream"}, "steps": 1, "output_dir": str(tmp_path / "out")}
    with pytest.raises(InputError, match="definition calibrated but the model uses 'upstream'"):
        loop.train(TrainConfig.model_validate(cfg))
    with pytest.raises(InputError, match="definition calibrated but the model uses 'upstream'"):
        preflight(DistributedTrainConfig.model_validate({**cfg, "ray": {"storage_path": str(tmp_path / "ray")}}))


def test_init_from_starts_with_the_given_weights(trained_model_file, synthetic_faces_dir, tmp_path):
    """init_from: a fresh run starts from another model's network weights (lr 0: they stay);
    weights of another architecture are a one-line error."""
    import torch

    from facepgn.config import TrainConfig
    from facepgn.errors import InputError
    from facepgn.model import load
    from facepgn.train import loop

    source = load(trained_model_file)
    base = {"data": {"labelled": [synthetic_faces_dir], "pair_batch_size": 0, "labelled_batch_size": 4, "augment": False},
            "model": source.cfg.model_dump(), "steps": 1, "optim": {"lr": 0.0, "weight_decay": 0.0, "warmup_steps": 0},
            "init_from": trained_model_file, "tensorboard": False}
    loop.train(TrainConfig.model_validate({**base, "output_dir": str(tmp_path / "a")}))
    trained = load(str(tmp_path / "a" / "model.pt"))
    params = dict(trained.named_parameters())  # (batch-norm running statistics move with the step)
    for k, v in source.named_parameters():
        assert torch.equal(v, params[k]), k
    fresh = dict(build_model(source.cfg).named_parameters())
    assert not all(torch.equal(v, fresh[k]) for k, v in source.named_parameters())
    other = {**base["model"], "pgn_width": 0.5 if base["model"]["pgn_width"] != 0.5 else 1.0}
    with pytest.raises(InputError, match="init_from weights do not fit"):
        loop.train(TrainConfig.model_validate({**base, "model": other, "output_dir": str(tmp_path / "b")}))
