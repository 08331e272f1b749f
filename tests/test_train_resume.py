"""Resuming at the step: a run stopped after a mid-epoch checkpoint and resumed trains on the
batches (record and pair ids) an uninterrupted run trains on after that step, with the same losses,
the step counter continuing, in the plain loop and in a one-worker Ray Train run.

The data: 12 synthetic faces (3 batches of 4 per epoch) and 8 synthetic pairs (4 batches of 2 per
pass), so the N steps cross epoch boundaries and the cycled pairs wrap; the checkpoint at step k
lies inside an epoch and inside a pass of the pairs; augmentation on."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn.config import DistributedTrainConfig, TrainConfig, build_config

TINY_MODEL = {"input_size": 64, "num_id": 10, "num_exp": 5, "pgn_width": 0.25, "regressor_width": 0.25}
STEPS, STOP_AFTER = 8, 5  # epoch 1 holds steps 4-6: step 5 is its second


@pytest.fixture(autouse=True)
def _fast_train_controller(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory, synthetic_faces_dir, synthetic_pairs_dir) -> tuple[str, str]:
    import pyarrow.parquet as pq

    from facepgn.train import data as train_data

    root = tmp_path_factory.mktemp("resume_inputs")
    (root / "faces").mkdir()
    (root / "pairs").mkdir()
    pq.write_table(train_data.read_records([synthetic_faces_dir], "face_record").slice(0, 12), str(root / "faces" / "part-0.parquet"))
    pq.write_table(train_data.read_records([synthetic_pairs_dir], "frame_pair"), str(root / "pairs" / "part-0.parquet"))
    return str(root / "faces"), str(root / "pairs")


def common_config(small_inputs, **extra) -> dict:
    faces, pairs = small_inputs
    return {
        "model": TINY_MODEL,
        "data": {"labelled": [faces], "pairs": [pairs], "labelled_batch_size": 4, "pair_batch_size": 2},
        "optim": {"warmup_steps": 1},
        "steps": STEPS, "log_every": 1, "checkpoint_every": STOP_AFTER, "threads": 1, "seed": 11, "tensorboard": True,
        **extra,
    }


def batch_ids(output_dir: str) -> dict[int, list[dict]]:
    """rank -> the audit entries (step, record_ids, pair_ids) the workers wrote, in step order."""
    import json
    from pathlib import Path

    out: dict[int, list[dict]] = {}
    for path in sorted(Path(output_dir, "batch_ids").glob("*.json")):
        out.setdefault(int(path.name.split("-")[0][len("rank"):]), []).extend(json.loads(path.read_text()))
    for entries in out.values():
        entries.sort(key=lambda e: e["step"])
    return out


class StoppedError(Exception):
    """The test stopping a run (raised from the step callback, after the step-k checkpoint)."""


def test_plain_loop_resumes_at_the_step_with_the_same_batches(tmp_path, small_inputs):
    from facepgn.train.loop import train

    def recorder(log: dict, stop_at: int | None = None):
        def on_step(step, batch, metrics):
            if step == stop_at:
                raise StoppedError  # step k+1 is not checkpointed: the resumed run trains it again
            log[step] = (batch.record_ids, batch.pair_ids, metrics["loss"])
        return on_step

    full: dict = {}
    train(build_config(TrainConfig, common_config(small_inputs, output_dir=str(tmp_path / "full"))), on_step=recorder(full))
    assert sorted(full) == list(range(1, STEPS + 1))

    cfg = build_config(TrainConfig, common_config(small_inputs, output_dir=str(tmp_path / "cut")))
    first: dict = {}
    with pytest.raises(StoppedError):
        train(cfg, on_step=recorder(first, stop_at=STOP_AFTER + 1))
    resumed: dict = {}
    summary = train(cfg, on_step=recorder(resumed))
    assert summary["resumed_from"] == STOP_AFTER and summary["steps"] == STEPS
    assert sorted(resumed) == list(range(STOP_AFTER + 1, STEPS + 1))  # the step counter continues at k+1
    for step in range(1, STOP_AFTER + 1):
        assert first[step][:2] == full[step][:2], step
    for step in resumed:
        assert resumed[step][:2] == full[step][:2], step  # the same record and pair ids
        np.testing.assert_allclose(resumed[step][2], full[step][2], rtol=1e-5, err_msg=f"loss at step {step}")
    faces_seen = [i for s in sorted(full) for i in full[s][0]]
    assert len(set(faces_seen[:12])) == 12  # an epoch is every face once: the 3 batches of the first epoch


def test_ray_run_resumes_at_the_step_with_the_same_batches(ray_session, tmp_path, small_inputs):
    """Uninterrupted: one worker, N steps. Interrupted: the worker really exits (os._exit) at step
    k+1, after the step-k checkpoint, with no retries: the run fails; the same run started again
    (a new driver-side build of the datasets, a new worker) continues from step k."""
    from facepgn.errors import FacepgnError
    from facepgn.train.ray_trainer import run_training
    from facepgn.train.tensorboard import read_tensorboard

    def config(out: str, name: str, **extra) -> DistributedTrainConfig:
        return build_config(DistributedTrainConfig, {
            **common_config(small_inputs, output_dir=out), **extra,
            "scaling": {"num_workers": 1, "cpus_per_worker": 1.0}, "validation": {"holdout_fraction": 0.0},
            "ray": {"storage_path": str(tmp_path / "ray"), "name": name, "record_batch_ids": True, "max_failures": 0},
        })

    def losses(out: str) -> dict[int, float]:
        return dict(read_tensorboard(f"{out}/tensorboard")["scalars"]["train/loss"])

    full_out, cut_out = str(tmp_path / "full"), str(tmp_path / "cut")
    run_training(config(full_out, "full"))
    full = {e["step"]: (e["record_ids"], e["pair_ids"]) for e in batch_ids(full_out)[0]}
    assert sorted(full) == list(range(1, STEPS + 1))

    fault = {"fault": {"at_step": STOP_AFTER + 1, "rank": 0, "marker": str(tmp_path / "died"), "delay_s": 1.0}}
    with pytest.raises(FacepgnError, match="training failed"):
        run_training(config(cut_out, "cut", **fault))
    assert (tmp_path / "died").exists()
    before = {e["step"]: (e["record_ids"], e["pair_ids"]) for e in batch_ids(cut_out)[0]}
    assert sorted(before) == list(range(1, STOP_AFTER + 1))  # audited with the step-k checkpoint
    summary = run_training(config(cut_out, "cut", **fault))
    assert summary["resumed"] and summary["counts"]["steps"] == STEPS
    after = {e["step"]: (e["record_ids"], e["pair_ids"]) for e in batch_ids(cut_out)[0] if e["step"] > STOP_AFTER}
    assert sorted(after) == list(range(STOP_AFTER + 1, STEPS + 1))  # the step counter continued at k+1
    for step in range(1, STEPS + 1):
        assert (before if step <= STOP_AFTER else after)[step] == full[step], step
    full_loss, cut_loss = losses(full_out), losses(cut_out)
    np.testing.assert_allclose([cut_loss[s] for s in after], [full_loss[s] for s in after], rtol=1e-5)
    faces_seen = [i for s in range(1, 4) for i in full[s][0]]
    assert len(set(faces_seen)) == 12  # epoch 0: every face once
    assert [full[s][0] for s in (4, 5, 6)] != [full[s][0] for s in (1, 2, 3)]  # epoch 1: another order

