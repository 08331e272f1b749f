"""Ray Train DDP training on the shared local Ray: 2 gloo workers (0.5 CPU each) on synthetic
labelled faces + real frame-pair shards; checkpoints, resume, S3 storage, a real worker death, and
bad input stopped before any worker starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from facepgn import storage
from facepgn.cli import main
from facepgn.config import DistributedTrainConfig, build_config

TINY_MODEL = {"input_size": 64, "num_id": 10, "num_exp": 5, "pgn_width": 0.25, "regressor_width": 0.25}


@pytest.fixture(autouse=True)
def _fast_train_controller(monkeypatch):
    """Poll the workers every 0.2 s (default 2 s): short runs finish without idling."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def tiny_config(labelled: str, pairs: str | None, out: str, storage_path: str, **extra) -> DistributedTrainConfig:
    data = {
        "model": TINY_MODEL,
        "data": {
            "labelled": [labelled],
            "pairs": [pairs] if pairs else [],
            "labelled_batch_size": 4,
            "pair_batch_size": 2 if pairs else 0,
        },
        "validation": {"holdout_fraction": 0.25, "overlay_images": 2, "batch_size": 8},
        "optim": {"warmup_steps": 1},
        "steps": 4,
        "checkpoint_every": 2,
        "log_every": 1,
        "output_dir": out,
        "ray": {"storage_path": storage_path, "name": "run", "record_batch_ids": True, "max_failures": 1},
    }
    for key, value in extra.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return build_config(DistributedTrainConfig, data)


def fresh_listing(path: str) -> None:
    """Forget cached S3 listings: the files were written by other processes (the workers)."""
    storage.get_fs(path)[0].invalidate_cache()


def batch_ids(output_dir: str) -> dict[int, list[dict]]:
    """rank -> audit entries (step, record_ids, pair_ids), in step order."""
    fresh_listing(output_dir)
    out: dict[int, list[dict]] = {}
    for path in storage.list_files(storage.join(output_dir, "batch_ids"), [".json"]):
        rank = int(storage.basename(path).split("-")[0][len("rank"):])
        out.setdefault(rank, []).extend(json.loads(storage.read_text(path)))
    for entries in out.values():
        entries.sort(key=lambda e: e["step"])
    return out


def checkpoint_steps(run_path: str) -> list[int]:
    """Steps of the checkpoints kept in a run folder (``checkpoint_<step>_<nonce>/``)."""
    fresh_listing(run_path)
    names = {storage.basename(os.path.dirname(p)) for p in storage.list_files(run_path)}
    return sorted(int(n.split("_")[1]) for n in names if n.startswith("checkpoint_"))


# ---- bad input: one line, before any worker ------------------------------------------------------


def test_bad_config_and_inputs_fail_in_one_line_before_workers(tmp_path, synthetic_faces_dir, s3_server, capsys):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        "model: {input_size: 64}\n"
        f"data: {{labelled: [{synthetic_faces_dir}], labelled_batch_size: 8, pair_batch_size: 0}}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        f"ray: {{storage_path: {tmp_path / 'ray'}}}\n"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--set", "losses.flw=1"], "losses.flw: unknown key"),
        (["--set", "scaling.num_workers=two"], "scaling.num_workers: Input should be a valid integer"),
        (["--set", f"data.labelled=[{empty}]"], f"{empty}: no .parquet face-record shards found"),
        (["--set", f"ray.storage_path={blocker}/ray"], f"{blocker}/ray: ray.storage_path is not writable"),
        (["--set", "ray.storage_path=s3://no-such-bucket-facepgn/ray"], "s3://no-such-bucket-facepgn/ray: ray.storage_path is not writable"),
        (["--set", "data.labelled_batch_size=64", "validation.holdout_fraction=0"], "only 64 labelled faces for 2 workers x batch 64"),
    ]
    for extra, expected in cases:
        code = main(["train", "--config", str(cfg_file), *extra])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("facepgn: error: ")]
        assert code == 2, (extra, err)
        assert len(errors) == 1 and "Traceback" not in err, err  # one line (other lines: library logging)
        assert expected in errors[0], (expected, errors[0])
    # none of them got as far as Ray: no run folder, no output
    assert not (tmp_path / "ray").exists() and not (tmp_path / "out").exists()


# ---- the training inputs are read in the cluster, never on the driver ------------------------------


def test_training_inputs_are_read_by_ray_tasks_not_on_the_driver(ray_session, tmp_path, synthetic_faces_dir):
    """What proves that the driver reads no row: a shard whose footer is intact but whose data
    pages are garbage passes the driver's preflight (footers: metadata) and fails only where a row
    is read, which is a Ray task in another process (the pid in the error), so nothing on the driver
    read a row before it; the good inputs come back as materialised datasets whose blocks the
    Parquet read operator's tasks made (Ray Data's stats), split by the hold-out in the cluster."""
    import re
    import shutil

    from ray.data.dataset import MaterializedDataset

    from facepgn.errors import InputError
    from facepgn.train.datasets import LABELLED, VALIDATION, build_datasets
    from facepgn.train.plan import preflight

    cfg = tiny_config(synthetic_faces_dir, None, str(tmp_path / "out"), str(tmp_path / "ray"))
    datasets = build_datasets(preflight(cfg))
    for name in (LABELLED, VALIDATION):
        stats = datasets[name].stats() if name == LABELLED else datasets[name].materialize().stats()
        assert re.search(r"ReadFiles\S*Parquet\S*: \d+ tasks executed", stats), (name, stats[:600])
    assert isinstance(datasets[LABELLED], MaterializedDataset)
    assert 0 < datasets[VALIDATION].count() < datasets[LABELLED].count() and datasets[LABELLED].count() + datasets[VALIDATION].count() == 64

    bad = tmp_path / "bad"
    bad.mkdir()
    shard = bad / "part-0.parquet"
    shutil.copy(sorted(Path(synthetic_faces_dir).glob("*.parquet"))[0], shard)
    data = bytearray(shard.read_bytes())
    body_end = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # PAR1 | pages | footer | length | PAR1
    data[4:body_end] = b"\xff" * (body_end - 4)
    shard.write_bytes(bytes(data))
    plan = preflight(tiny_config(str(bad), None, str(tmp_path / "out"), str(tmp_path / "ray"), **{"validation.holdout_fraction": 0.0}))
    assert plan.labelled_rows == 32  # the footer says so: the driver read it, and nothing else
    with pytest.raises(InputError) as caught:
        build_datasets(plan)
    assert str(caught.value).startswith(f"{shard}: cannot read the Parquet rows") and "\n" not in str(caught.value), caught.value
    chain, cause = [], caught.value.__cause__
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    pids = {int(p) for text in chain for p in re.findall(r"pid=(\d+)", text)}
    assert pids and os.getpid() not in pids, chain[:1]  # the first read of a row was a Ray task's


# ---- one loop body: the plain loop and a one-worker Ray run take the same steps -------------------


def test_plain_loop_and_one_ray_worker_take_the_same_steps(ray_session, tmp_path, synthetic_faces_dir, synthetic_pairs_dir):
    """Same data, seed and config: the plain loop and a one-worker Ray Train run log the same
    losses and learning rates, step by step (the pairs joining at ``pairs_from_step``). Each batch
    holds every row (8 faces, 4 pairs) so that the sources' orders (the plain loop shuffles, Ray Data
    streams in file order) cannot matter; no augmentation (the sources draw it differently)."""
    import numpy as np
    import pyarrow.parquet as pq

    from facepgn.config import TrainConfig
    from facepgn.losses import PAIR_TERMS
    from facepgn.train import data as train_data
    from facepgn.train.loop import train
    from facepgn.train.ray_trainer import run_training
    from facepgn.train.tensorboard import read_tensorboard

    faces, pairs = tmp_path / "faces", tmp_path / "pairs"
    faces.mkdir()
    pairs.mkdir()
    pq.write_table(train_data.read_records([synthetic_faces_dir], "face_record").slice(0, 8), str(faces / "part-0.parquet"))
    pq.write_table(train_data.read_records([synthetic_pairs_dir], "frame_pair").slice(0, 4), str(pairs / "part-0.parquet"))
    common = {
        "model": TINY_MODEL,
        "data": {"labelled": [str(faces)], "pairs": [str(pairs)], "labelled_batch_size": 8, "pair_batch_size": 4,
                 "augment": False, "pairs_from_step": 2},
        "optim": {"warmup_steps": 2, "grad_clip": 5.0},
        "steps": 4, "log_every": 1, "checkpoint_every": 0, "threads": 1, "seed": 3,
    }
    plain_out, ray_out = tmp_path / "plain", tmp_path / "ray-out"
    train(build_config(TrainConfig, {**common, "output_dir": str(plain_out)}))
    run_training(build_config(DistributedTrainConfig, {
        **common, "output_dir": str(ray_out),
        "scaling": {"num_workers": 1, "cpus_per_worker": 1.0}, "validation": {"holdout_fraction": 0.0},
        "ray": {"storage_path": str(tmp_path / "ray"), "name": "same-steps"},
    }))
    plain = read_tensorboard(str(plain_out / "tensorboard"))["scalars"]
    ray = read_tensorboard(str(ray_out / "tensorboard"))["scalars"]
    terms = sorted(t for t in plain if t.startswith("train/loss_"))
    assert sorted(t for t in ray if t.startswith("train/loss_")) == terms and "train/loss_flow" in terms
    # tolerances: the sum order inside a batch differs (~1e-6 on the loss, 1e-4 on single terms and
    # 1e-3 on the gradient norm after 4 Adam steps); one more warm-up step, the pairs one step
    # later or another seed move these by 0.5% to 30%
    for tag, rtol in [("train/loss", 1e-4), ("train/lr", 1e-6), ("train/grad_norm", 5e-3)] + [(t, 1e-3) for t in terms]:
        steps = [3, 4] if tag.removeprefix("train/loss_") in PAIR_TERMS else [1, 2, 3, 4]  # pairs from step 3
        assert [s for s, _ in plain[tag]] == [s for s, _ in ray[tag]] == steps, tag
        np.testing.assert_allclose([v for _, v in ray[tag]], [v for _, v in plain[tag]], rtol=rtol, atol=1e-7, err_msg=tag)
    assert plain["train/loss"][0][1] != plain["train/loss"][-1][1]  # the steps did change the weights


# ---- DDP training, checkpoints, resume, TensorBoard ------------------------------------------------


def test_ddp_training_two_workers_checkpoints_and_resumes(ray_session, tmp_path, synthetic_faces_dir, frame_pair_shards):
    from facepgn.model import load_model_file
    from facepgn.train.ray_trainer import run_training
    from facepgn.train.tensorboard import read_tensorboard

    out, store = str(tmp_path / "out"), str(tmp_path / "ray")
    summary = run_training(tiny_config(synthetic_faces_dir, frame_pair_shards, out, store))
    assert summary["counts"]["steps"] == 4 and not summary["resumed"]
    assert checkpoint_steps(summary["run"])[-2:] == [2, 4]
    assert 0.0 < summary["final_metrics"]["val_nme"] < 10.0
    assert 0 < summary["counts"]["validation_records"] < 64  # the held-out subjects only

    # the two workers trained on different faces and different pairs
    ids = batch_ids(out)
    assert sorted(ids) == [0, 1]
    for kind in ("record_ids", "pair_ids"):
        seen = [{i for e in ids[r] for i in e[kind]} for r in (0, 1)]
        assert seen[0] and seen[1] and not (seen[0] & seen[1]), kind
    assert [e["step"] for e in ids[0]] == [1, 2, 3, 4]

    model = load_model_file(summary["model_file"])
    assert model.input_size == 64

    events = read_tensorboard(os.path.join(out, "tensorboard"))
    for tag in ("train/loss", "train/loss_landmarks_3d", "train/loss_mesh_landmarks", "train/loss_flow",
                "train/loss_photometric", "train/lr", "perf/samples_per_s", "perf/data_wait_share", "val/nme"):
        assert tag in events["scalars"], (tag, sorted(events["scalars"]))
    (step, png), *_ = events["images"]["val/overlay"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # the same run name again, with more steps: it continues from step 4
    resumed = run_training(tiny_config(synthetic_faces_dir, frame_pair_shards, out, store, steps=6))
    assert resumed["resumed"] and resumed["counts"]["steps"] == 6
    assert [e["step"] for e in batch_ids(out)[1]] == [1, 2, 3, 4, 5, 6]  # steps 5, 6 only in the new run
    # it continued the epoch at its fifth step (5 steps per epoch per worker): the epoch's end
    # checkpointed at step 5, the run's end at 6
    assert checkpoint_steps(resumed["run"])[-2:] == [5, 6]


# ---- S3 storage, a worker dying mid-run, and a restart of the run --------------------------------


def test_s3_checkpoints_survive_a_worker_death_and_a_restart(ray_session, tmp_path, s3_bucket, synthetic_faces_dir):
    """Run on the moto S3 server: rank 1 really exits (os._exit) after step 3; Ray Train restarts
    the worker group from the step-2 checkpoint on S3 and finishes; then the same run name started
    again continues from the step-4 checkpoint."""
    from facepgn.model import load_model_file
    from facepgn.train.ray_trainer import run_training

    out, store, marker = f"{s3_bucket}/train", f"{s3_bucket}/ray", tmp_path / "crashed"
    # (the dying worker lingers 2 s so that the controller has registered the step-2 checkpoint:
    # Ray Train only counts a reported checkpoint once its controller has polled the report)
    fault = {"fault.at_step": 3, "fault.rank": 1, "fault.marker": str(marker), "fault.delay_s": 2.0}
    first = run_training(tiny_config(synthetic_faces_dir, None, out, store, **fault))
    assert marker.read_text().startswith("rank 1 exited at step 3")  # the process really died, once
    assert first["run"] == f"{s3_bucket}/ray/run" and first["counts"]["steps"] == 4
    assert checkpoint_steps(first["run"])[-2:] == [2, 4], storage.list_files(first["run"])
    # rank 1 logged steps 1-2 with the step-2 checkpoint, died after step 3, and after the restart
    # from that checkpoint trained steps 3 and 4 again
    assert [e["step"] for e in batch_ids(out)[1]] == [1, 2, 3, 4]
    assert storage.exists(f"{out}/summary.json") and storage.list_files(f"{out}/tensorboard")

    second = run_training(tiny_config(synthetic_faces_dir, None, out, store, steps=5, **fault))
    assert second["resumed"] and second["counts"]["steps"] == 5
    assert checkpoint_steps(second["run"])[-2:] == [4, 5]
    assert [e["step"] for e in batch_ids(out)[0]] == [1, 2, 3, 4, 5]  # the new run trained step 5 only
    assert load_model_file(f"{out}/model.pt").input_size == 64


# ---- streamed inputs (above ray.materialize_below_mb): every worker reads its own files ------------


def test_streamed_inputs_resume_at_the_step_with_the_same_batches(ray_session, tmp_path, synthetic_faces_dir):
    """Inputs above ``ray.materialize_below_mb`` stream: every pass, each of the 2 workers reads its
    own seeded share of the 5 files (24 faces, files of 6, 5, 5, 4 and 4 rows, so the shares differ
    and the ranks stop each epoch together at the shorter one). Uninterrupted: 9 steps. Interrupted:
    a worker really exits at step 7 and Ray Train restarts the group from the step-5 checkpoint.
    Every step of both ranks trains on the same faces in both runs, and within an epoch the ranks'
    faces are disjoint."""
    import pyarrow.parquet as pq

    from facepgn.train import data as train_data
    from facepgn.train.ray_trainer import run_training

    faces = tmp_path / "faces"
    faces.mkdir()
    table = train_data.read_records([synthetic_faces_dir], "face_record").slice(0, 24)
    start = 0
    for index, rows in enumerate((6, 5, 5, 4, 4)):
        pq.write_table(table.slice(start, rows), str(faces / f"part-{index}.parquet"))
        start += rows

    def run(name: str, **fault) -> dict[int, dict[int, list[str]]]:
        out = str(tmp_path / name)
        cfg = tiny_config(str(faces), None, out, str(tmp_path / "ray"), steps=9, checkpoint_every=5, **{
            "validation.holdout_fraction": 0.0, "scaling.num_workers": 2, "ray.materialize_below_mb": 0, "ray.name": name,
            **fault})
        summary = run_training(cfg)
        assert summary["counts"]["steps"] == 9
        return {rank: {e["step"]: e["record_ids"] for e in entries} for rank, entries in batch_ids(out).items()}

    full = run("full")
    cut = run("cut", **{"fault.at_step": 7, "fault.rank": 0, "fault.marker": str(tmp_path / "died"), "fault.delay_s": 1.0})
    assert (tmp_path / "died").exists()
    assert sorted(full) == sorted(cut) == [0, 1]
    for rank in (0, 1):
        assert sorted(full[rank]) == sorted(cut[rank]) == list(range(1, 10))
        for step in range(1, 10):
            assert cut[rank][step] == full[rank][step], (rank, step)
    for step in range(1, 10):
        assert not set(full[0][step]) & set(full[1][step])  # disjoint shares
    first_epoch = [i for rank in (0, 1) for step in (1, 2) for i in full[rank][step]]
    assert len(set(first_epoch)) == len(first_epoch)  # no face twice in an epoch (each share >= 8 rows: 2 steps)


def test_streamed_input_with_fewer_files_than_workers_is_refused(tmp_path, synthetic_faces_dir):
    from facepgn.errors import ConfigError
    from facepgn.train.plan import preflight

    cfg = tiny_config(synthetic_faces_dir, None, str(tmp_path / "out"), str(tmp_path / "ray"), **{
        "scaling.num_workers": 4, "ray.materialize_below_mb": 0, "validation.holdout_fraction": 0.0, "data.labelled_batch_size": 1})
    with pytest.raises(ConfigError, match=r"shared out file by file, but has \d+ Parquet files for 4 workers"):
        preflight(cfg)
