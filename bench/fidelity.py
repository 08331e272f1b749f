"""Fidelity benchmark: what the Pose Guidance Network and the multi-frame losses buy, on synthetic data.

    python bench/fidelity.py [--steps 2400] [--pgn-width 2] [--size 64] [--train-faces 2048] [--pairs 512] [--test-faces 96]

(defaults: ~3 min of data generation once, then ~3 + 3 + 4 min of training on one CPU thread)

Trains three models for the same number of steps on the same synthetic labelled faces
(``facepgn.synthetic``; labels = 3D landmarks only, as real 300W-LP/AFLW labels in another face
model would be: the ground-truth coefficients are not used for training), evaluates them on a
held-out synthetic set (``facepgn.evaluation``: NME 2D/3D by |yaw| bucket, pose MAE, dense shape
error) and prints ONE table:

    (a) direct pose: the regressor also regresses the pose (3DDFA style)
    (b) (a) with the ground-truth pose substituted at test time (how good its shape/coefficients are)
    (c) PGN pose: pose in closed form from the PGN's 3D landmarks
    (d) (c) + multi-frame losses on synthetic frame pairs with exact flow (unlabelled: no landmarks),
        the pairs joining after a labelled-only warm-up (``--pairs-from``, fraction of the steps)

Goals: (c) beats (a) by >= 20% NME; (d) beats (c) on 3D shape error by >= 10%.
Shape error: mean vertex distance (mm; the ICT model is in cm) of the predicted mesh (no pose) to
the true mesh after a similarity alignment (``evaluation.shape_error``, known correspondence).
Not a CI test: minutes of CPU. Data are cached in ``--work-dir`` and reused by reruns.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

VARIANTS = ("a", "b", "c", "d")
LABELS = {
    "a": "(a) direct pose",
    "b": "(b) direct + GT pose at test",
    "c": "(c) PGN pose",
    "d": "(d) PGN pose + multi-frame",
}


def make_data(work: Path, args) -> dict[str, str]:
    """Synthetic train/test faces and unlabelled exact-flow pairs (cached)."""
    import pyarrow.parquet as pq

    from facepgn import records, storage
    from facepgn.synthetic import FaceSettings, generate_faces, synthetic_pair_rows

    settings = FaceSettings(size=args.size)
    paths = {"train": str(work / f"train_faces_{args.size}_{args.train_faces}"),
             "test": str(work / f"test_faces_{args.size}_{args.test_faces}"),
             "pairs": str(work / f"pairs_{args.size}_{args.pairs}_rot{args.pair_rotation:g}")}
    t0 = time.perf_counter()
    generate_faces(paths["train"], args.train_faces, seed=1001, settings=settings, rows_per_shard=128)
    generate_faces(paths["test"], args.test_faces, seed=2002, settings=settings, rows_per_shard=128)
    pair_file = Path(paths["pairs"]) / "part-00000.parquet"
    if not pair_file.exists():
        rows, _ = synthetic_pair_rows(args.pairs, seed=3003, size=args.size, max_rotation_deg=args.pair_rotation)
        for row in rows:  # unlabelled pairs: drop the ground-truth 2D landmarks
            row["landmarks_2d_a"] = row["landmarks_2d_b"] = None
        storage.makedirs(paths["pairs"])
        import io

        buf = io.BytesIO()
        pq.write_table(records.to_table(rows, "frame_pair"), buf)
        storage.atomic_write_bytes(str(pair_file), buf.getvalue())
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {args.train_faces} train faces, {args.pairs} pairs, "
          f"{args.test_faces} test faces at {args.size} px ({work})", flush=True)
    return paths


def train_variant(name: str, paths: dict[str, str], work: Path, args) -> tuple[str, float]:
    from facepgn.config import TrainConfig
    from facepgn.train.loop import train

    pose = "direct" if name == "a" else "pgn"
    multi = name == "d"
    losses = {"shape": 0.0}  # labels are landmarks only
    if not multi:
        losses.update(flow=0.0, photometric=0.0, identity=0.0, landmark_flow=0.0)
    tag = f"_rot{args.pair_rotation:g}_from{args.pairs_from:g}" if multi else ""
    if pose == "pgn" and args.pgn_width != 1.0:
        tag += f"_pgnw{args.pgn_width:g}"
    out = work / "runs" / f"{name}_{args.size}_{args.steps}_{args.seed}{tag}"
    if args.reuse and (out / "summary.json").exists() and (out / "model.pt").exists():
        done = json.loads((out / "summary.json").read_text())
        if done.get("steps") == args.steps:
            return str(out / "model.pt"), float(done["seconds"])
    cfg = TrainConfig.model_validate({
        "model": {"input_size": args.size, "pose": pose, **({"pgn_width": args.pgn_width} if pose == "pgn" else {})},
        "losses": losses,
        "optim": {"lr": args.lr, "warmup_steps": min(50, args.steps // 10)},
        "data": {"labelled": [paths["train"]], "pairs": [paths["pairs"]] if multi else [],
                 "labelled_batch_size": args.batch, "pair_batch_size": args.pair_batch,
                 "pairs_from_step": int(args.pairs_from * args.steps)},
        "steps": args.steps, "seed": args.seed, "device": "cpu", "output_dir": str(out),
        "checkpoint_every": 0, "log_every": max(1, args.steps // 4), "tensorboard": False,
        "resume": args.reuse, "threads": args.threads,
    })
    t0 = time.perf_counter()
    summary = train(cfg, on_metrics=lambda step, m: print(f"  [{name}] step {step} loss {m['loss']:.4f}", flush=True))
    return summary["model_file"], time.perf_counter() - t0


def evaluate_variant(model_file: str, test_dir: str, size: int, gt_pose: bool = False) -> dict:
    import numpy as np
    import torch

    from facepgn import evaluation, geometry
    from facepgn.model import load_model_file
    from facepgn.train.data import face_batch_to_tensors, read_records

    model = load_model_file(model_file)
    table = read_records([test_dir], "face_record")
    mesh_lm, pgn_lm, pose_pred, shape_err, mean_face_err = [], [], [], [], []
    gt_lm, gt_pose_deg = [], []
    for start in range(0, table.num_rows, 32):
        batch = face_batch_to_tensors(table.slice(start, 32), size, model.cfg.num_id, model.cfg.num_exp, model.face_model_name)
        with torch.no_grad():
            out = model(batch["images"])
            if gt_pose:
                R = geometry.euler_to_matrix(batch["pose"])
                out["scale"], out["rotation"], out["translation"] = batch["scale"], R, batch["translation"]
                out["mesh_landmarks"] = geometry.project(out["model_landmarks"], batch["scale"], R, batch["translation"])
            pred_v = model.model_vertices(out["id_coeffs"], out["exp_coeffs"]).numpy()
            true_v = model.model_vertices(batch["id_coeffs"], batch["exp_coeffs"]).numpy()
        mesh_lm.append(out["mesh_landmarks"].numpy())
        pgn_lm.append(out["landmarks_3d"].numpy())
        pose_pred.append(np.degrees(model.pose_angles(out).numpy()))
        gt_pose_deg.append(np.degrees(batch["pose"].numpy()))
        gt_lm.append(batch["landmarks_3d"].numpy())
        mean_v = model.fm_mean.numpy()
        for p, g in zip(pred_v, true_v):
            shape_err.append(evaluation.shape_error(p, g, correspondence="known").mean_distance * 10.0)  # cm -> mm
            mean_face_err.append(evaluation.shape_error(mean_v, g, correspondence="known").mean_distance * 10.0)
    gt = np.concatenate(gt_lm)
    gt_pose_arr = np.concatenate(gt_pose_deg)
    result = evaluation.evaluate_landmarks(
        {"mesh": np.concatenate(mesh_lm), "pgn": np.concatenate(pgn_lm)}, gt, gt_pose_arr[:, 1],
        pred_pose_degrees=np.concatenate(pose_pred), gt_pose_degrees=gt_pose_arr,
    )
    m = result.metrics
    return {
        "nme_2d": m["landmarks"]["mesh"]["nme_2d_68"],
        "nme_3d": m["landmarks"]["mesh"]["nme_3d_68"],
        "pgn_nme_2d": m["landmarks"]["pgn"]["nme_2d_68"]["mean"],
        "pose_mae": m["pose_mae_deg"]["mean"],
        "shape_mm": float(np.mean(shape_err)),
        "mean_face_shape_mm": float(np.mean(mean_face_err)),
        "faces": int(gt.shape[0]),
    }


def format_table(results: dict[str, dict], times: dict[str, float], args) -> str:
    head = ("| variant | NME2D [0,30] | (30,60] | (60,90] | NME2D mean | NME3D mean | pose MAE (deg) | "
            "shape err (mm) | train s |")
    lines = [head, "|" + "---|" * 9]
    for v in VARIANTS:
        r = results[v]
        keys = list(r["nme_2d"].keys())
        b = [r["nme_2d"].get(k) for k in keys[:3]]
        lines.append(
            f"| {LABELS[v]} | " + " | ".join(f"{100 * x:.2f}%" for x in b)
            + f" | {100 * r['nme_2d']['mean']:.2f}% | {100 * r['nme_3d']['mean']:.2f}% | {r['pose_mae']:.2f} | "
            f"{r['shape_mm']:.2f} | {times.get(v, 0):.0f} |"
        )
    a, c, d = results["a"], results["c"], results["d"]
    gain_nme = 1 - c["nme_2d"]["mean"] / a["nme_2d"]["mean"]
    gain_shape = 1 - d["shape_mm"] / c["shape_mm"]
    lines.append("")
    lines.append(f"(c) vs (a): NME2D {100 * gain_nme:+.1f}% better (goal >= 20%: {'met' if gain_nme >= 0.2 else 'MISSED'})")
    lines.append(f"(d) vs (c): shape error {100 * gain_shape:+.1f}% better (goal >= 10%: {'met' if gain_shape >= 0.1 else 'MISSED'})")
    lines.append(f"setup: {args.steps} steps each, batch {args.batch} faces (+{args.pair_batch} pairs for d), {args.size} px, "
                 f"{args.train_faces} train faces / {args.pairs} pairs / {results['a']['faces']} test faces, "
                 f"lr {args.lr}, threads {args.threads}, seed {args.seed}, PGN width {args.pgn_width:g}; (d): pair rotation <= {args.pair_rotation:g} deg, "
                 f"pairs from step {int(args.pairs_from * args.steps)}; PGN-only landmarks NME2D (c) "
                 f"{100 * c['pgn_nme_2d']:.2f}%, (d) {100 * d['pgn_nme_2d']:.2f}%; "
                 f"shape error of the mean face (all coefficients 0): {a['mean_face_shape_mm']:.2f} mm")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="facepgn fidelity benchmark: direct pose vs PGN pose vs PGN + multi-frame")
    parser.add_argument("--work-dir", default="/tmp/facepgn-fidelity")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-faces", type=int, default=2048)
    parser.add_argument("--test-faces", type=int, default=96)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pair-batch", type=int, default=8)
    parser.add_argument("--pair-rotation", type=float, default=15.0, help="max head rotation between pair frames, degrees")
    parser.add_argument("--pairs-from", type=float, default=0.5, help="(d): pair batches join after this fraction of the steps")
    parser.add_argument("--pgn-width", type=float, default=2.0, help="PGN channel multiplier for (c) and (d)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse finished training runs (same settings) in --work-dir")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_data(work, args)
    files, times = {}, {}
    for name in ("a", "c", "d"):
        files[name], times[name] = train_variant(name, paths, work, args)
        print(f"trained ({name}) in {times[name]:.0f} s", flush=True)
    results = {
        "a": evaluate_variant(files["a"], paths["test"], args.size),
        "b": evaluate_variant(files["a"], paths["test"], args.size, gt_pose=True),
        "c": evaluate_variant(files["c"], paths["test"], args.size),
        "d": evaluate_variant(files["d"], paths["test"], args.size),
    }
    table = format_table(results, times, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "train_seconds": times, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
