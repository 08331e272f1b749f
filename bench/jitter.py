"""Landmark and pose jitter of the shipped model on real videos, with smoothing off and on, beside
two landmark networks run on the same crops as a reference for how much of the jitter is real motion.

What runs is what ``facepgn infer`` runs, through its library calls in this process (no Ray):
``inference.iter_face_batches`` (decode, YuNet at ``InferConfig``'s 320 px, the tracker, the square
crops with infer's margin), ``inference.infer_batch`` (the model on the crops, mapped to frame
pixels), ``inference.collect_rows`` (one video's rows by track and frame) and, for the "on" table,
``inference.smooth_rows`` with the default ``SmoothingConfig`` switched on (zero-phase local-linear,
sigma 0.06 s) -- exactly what ``facepgn infer --set smoothing.enabled=true`` does in
``finalize_video``.

Measures (``facepgn.smoothing.jitter``: the RMS second difference over consecutive frames, ~0 for
steady motion, so it counts shake and fast changes of speed):

* landmark jitter: the output rows' 68 2D landmarks, in % of the face size (the median over the
  track of sqrt(w*h) of the detector's box: the same for every landmark set and model), per track,
  then the mean over tracks (and, in brackets, the median), and the mean over videos;
* pose jitter: yaw, pitch, roll in degrees (unwrapped), per track, mean over tracks.

Reference: the 68-point 2D network (Peppa) and MediaPipe's face mesh (its 468 points mapped to the
68, ``teachers.MediaPipe68``) on the same crops the model gets, mapped to the frame the same way;
in the "on" table the same smoother (``smooth_rows``) is applied to them too. Every measure is its
network's own noise plus real motion, so the smallest one bounds the real-motion part from above.
MediaPipe gets the model's crop as its whole image (its first pass covers the whole crop, its
second re-crops around its first answer inside it, black beyond).

Tracks shorter than ``--min-track`` frames are left out (brief false detections).

    nice -n 15 .venv/bin/python bench/jitter.py [--videos ../shared/media/videos] [--corpus]
        [--max-frames N] [--no-mediapipe] [--out runs/bench/jitter.md]

Cost: the 7 shared videos (2,908 frames, 3,282 faces in kept tracks) took 89 s of CPU (one model
thread; decode+detect+crop about half of it, the model a fifth, MediaPipe a sixth, Peppa a tenth),
17 minutes wall on a 2-core machine busy with a training run; ``--no-mediapipe`` saves a sixth.
``--corpus`` adds the 30 corpus clips (~12,000 frames, about 4x that; ``--max-frames`` caps each clip).
Prints the tables and writes them to ``--out`` (Markdown) with the per-track figures beside it (.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from facepgn import evaluation, inference, paths, smoothing
from facepgn.config import InferConfig, SmoothingConfig
from facepgn.video import list_videos

SETS = ("model", "peppa", "mediapipe")
SET_TITLES = {
    "model": "facepgn (shipped model), output rows' landmarks_2d",
    "peppa": "reference: Peppa 68-point 2D network, same crops",
    "mediapipe": "reference: MediaPipe face mesh -> 68, same crops",
}


def crop_peers(use_mediapipe: bool):
    """name -> fn(crops (B, S, S, 3)) -> (B, 68, 2) crop pixels: the peers on the model's crops."""
    peers = {"peppa": evaluation.peer_landmark_predictor()}
    if use_mediapipe:
        from facepgn.teachers import MediaPipe68

        mp = MediaPipe68()

        def mediapipe(crops: np.ndarray) -> np.ndarray:
            size = crops.shape[1]
            side = size / mp.mesh.crop_scale  # its 1.5x expansion of this box is the whole crop
            box = np.array([(size - side) / 2, (size - side) / 2, side, side])
            return np.stack([mp.predict(c, box) for c in crops])

        peers["mediapipe"] = mediapipe
    return peers


def run_video(path: str, video_id: str, cfg: InferConfig, runner, peers) -> tuple[dict[str, np.ndarray], dict, dict]:
    """One video's rows (sorted by track and frame) with ``<peer>_2d`` columns beside the model's."""
    from facepgn.records import apply_affine

    batches = []
    seconds = {"infer": 0.0, **{k: 0.0 for k in peers}}
    t0 = time.perf_counter()
    for batch in inference.iter_face_batches(path, video_id, cfg, runner.input_size):
        t1 = time.perf_counter()
        out = inference.infer_batch(runner, batch)
        seconds["infer"] += time.perf_counter() - t1
        kind = np.asarray(batch["kind"])
        faces = np.flatnonzero(kind == inference.KIND_FACE)
        for name, peer in peers.items():
            col = np.zeros((kind.shape[0], 68, 2), np.float32)
            if faces.size:
                t1 = time.perf_counter()
                pts = peer(np.asarray(batch["crop"])[faces])
                seconds[name] += time.perf_counter() - t1
                affines = np.asarray(batch["crop_to_frame"])[faces]
                col[faces] = np.stack([apply_affine(a, p) for a, p in zip(affines, pts)])
            out[f"{name}_2d"] = col
        batches.append(out)
    rows, footer = inference.collect_rows(batches)
    seconds["total"] = time.perf_counter() - t0
    return rows, footer, seconds


def smoothed_copy(rows: dict[str, np.ndarray], scfg: SmoothingConfig, peers) -> dict[str, np.ndarray]:
    """``inference.smooth_rows`` on the model's rows, and the same smoother on each peer's landmarks
    (passed through ``smooth_rows`` as if they were the model's, so it is the identical filter)."""
    out = inference.smooth_rows(rows, scfg)
    for name in peers:
        stand_in = dict(rows)
        pts = rows[f"{name}_2d"]
        stand_in["landmarks_3d"] = np.concatenate([pts, np.zeros(pts.shape[:-1] + (1,), np.float32)], axis=-1)
        out[f"{name}_2d"] = inference.smooth_rows(stand_in, scfg)["landmarks_2d"]
    return out


def track_jitter(rows: dict[str, np.ndarray], peers, min_track: int) -> list[dict]:
    """Per track: frames, face size (px) and the jitter of every set."""
    out = []
    if not len(rows.get("frame_index", [])):
        return out
    for track in np.unique(rows["track_id"]):
        idx = np.flatnonzero(rows["track_id"] == track)
        if idx.size < max(3, min_track):
            continue
        frames = rows["frame_index"][idx]
        lm = rows["landmarks_2d"][idx].astype(np.float64)
        box = rows["box"][idx].astype(np.float64)
        size = float(np.median(np.sqrt(box[:, 2] * box[:, 3])))  # the detector's: one normaliser for every set
        entry = {"frames": int(idx.size), "face_px": size}
        entry["model"] = 100.0 * smoothing.jitter(lm, frames) / size
        for name in peers:
            entry[name] = 100.0 * smoothing.jitter(rows[f"{name}_2d"][idx].astype(np.float64), frames) / size
        for angle in ("yaw", "pitch", "roll"):
            deg = np.degrees(np.unwrap(np.radians(rows[angle][idx].astype(np.float64))))
            entry[angle] = smoothing.jitter(deg[:, None], frames)
        out.append(entry)
    return out


def _finite(values: list[float]) -> np.ndarray:
    return np.asarray([x for x in values if np.isfinite(x)], np.float64)


def _stat(values: list[float]) -> str:
    v = _finite(values)
    return "n/a" if not v.size else f"{v.mean():.3f} ({np.median(v):.3f})"


def _by_video(per_video: dict[str, list[dict]], key: str) -> str:
    """The mean over videos of each video's mean over its tracks (one vote per video)."""
    v = _finite([float(np.mean(_finite([t[key] for t in ts]))) for ts in per_video.values() if _finite([t[key] for t in ts]).size])
    return "n/a" if not v.size else f"{v.mean():.3f}"


def table(title: str, per_video: dict[str, list[dict]], peers) -> list[str]:
    tracks = [t for ts in per_video.values() for t in ts]
    videos = sum(1 for ts in per_video.values() if ts)
    frames = sum(t["frames"] for t in tracks)
    lines = [f"### {title}", "",
             f"{videos} videos, {len(tracks)} tracks, {frames} face frames. Mean over tracks (median over tracks in "
             "brackets); and the mean over videos of each video's track mean (one vote per video).", "",
             "| landmarks | landmark jitter, % of face size: mean over tracks (median) | mean over videos |", "|---|---|---|"]
    for name in ("model", *peers):
        lines.append(f"| {SET_TITLES[name]} | {_stat([t[name] for t in tracks])} | {_by_video(per_video, name)} |")
    lines += ["", "| pose (the model's), degrees | yaw | pitch | roll |", "|---|---|---|---|",
              "| mean over tracks (median) | " + " | ".join(_stat([t[a] for t in tracks]) for a in ("yaw", "pitch", "roll")) + " |",
              "| mean over videos | " + " | ".join(_by_video(per_video, a) for a in ("yaw", "pitch", "roll")) + " |", ""]
    return lines


def per_video_table(raw: dict[str, list[dict]], smooth: dict[str, list[dict]], peers) -> list[str]:
    head = ["video", "tracks", "frames", "face (box) px", "model off", "model on"] + [f"{p} off" for p in peers] + ["yaw off", "yaw on"]
    lines = ["### Per video (mean over its tracks; landmarks in % of face size, yaw in degrees)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for vid, ts in raw.items():
        if not ts:
            lines.append(f"| {vid} | 0 | 0 | | | |" + " |" * (len(peers) + 2))
            continue
        ss = smooth[vid]

        def m(key: str, group: list[dict]) -> str:
            return f"{np.nanmean([t[key] for t in group]):.3f}"

        cells = [vid, str(len(ts)), str(sum(t["frames"] for t in ts)), f"{np.median([t['face_px'] for t in ts]):.0f}",
                 m("model", ts), m("model", ss)] + [m(p, ts) for p in peers] + [m("yaw", ts), m("yaw", ss)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(paths.shared_path("media/videos")), help="folder of videos")
    parser.add_argument("--corpus", action="store_true", help="also the 30 clips of shared/media/corpus")
    parser.add_argument("--model", default=None, help="model file (default: the shipped pretrained model)")
    parser.add_argument("--max-frames", type=int, default=None, help="per video (previews)")
    parser.add_argument("--min-track", type=int, default=10, help="leave out tracks with fewer frames")
    parser.add_argument("--no-mediapipe", action="store_true", help="Peppa only as the reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench/jitter.md")
    args = parser.parse_args()

    from facepgn.predictor import Predictor

    cfg = InferConfig(max_frames=args.max_frames)
    scfg = SmoothingConfig(enabled=True)
    runner = Predictor(args.model, threads=args.threads)
    peers = crop_peers(not args.no_mediapipe)
    items = list_videos(args.videos)
    if args.corpus:
        items += list_videos(str(paths.shared_path("media/corpus")))
    raw: dict[str, list[dict]] = {}
    smooth: dict[str, list[dict]] = {}
    totals: dict[str, float] = {}
    start = time.perf_counter()
    for it in items:
        if it.video_id in raw:  # the same file name in two folders
            it = type(it)(it.path, f"{os.path.basename(os.path.dirname(it.path))}/{it.video_id}", it.subject_id)
        rows, footer, seconds = run_video(it.path, it.video_id, cfg, runner, peers)
        if footer.get("error"):
            print(f"{it.video_id}: {footer['error']}", file=sys.stderr)
            raw[it.video_id] = smooth[it.video_id] = []
            continue
        raw[it.video_id] = track_jitter(rows, peers, args.min_track)
        smooth[it.video_id] = track_jitter(smoothed_copy(rows, scfg, peers), peers, args.min_track) if len(rows["frame_index"]) else []
        for k, v in seconds.items():
            totals[k] = totals.get(k, 0.0) + v
        n = len(rows["frame_index"])
        print(f"{it.video_id}: {n} face rows, {len(raw[it.video_id])} tracks kept, {seconds['total']:.1f}s", file=sys.stderr)
    wall = time.perf_counter() - start
    faces = sum(t["frames"] for ts in raw.values() for t in ts)
    lines = ["# Landmark and pose jitter on real videos", "",
             f"Model: {args.model or 'the shipped pretrained model'}; videos: {args.videos}" + (" + corpus" if args.corpus else "")
             + f"; InferConfig defaults (detector at {cfg.detector.detect_width} px, crop margin {cfg.crop_margin}, every frame"
             + (f", first {args.max_frames} frames" if args.max_frames else "") + f"); tracks of at least {args.min_track} frames.",
             "Jitter: facepgn.smoothing.jitter (RMS second difference over consecutive frames).", ""]
    lines += table("Smoothing off (facepgn infer's default)", raw, peers)
    lines += table(f"Smoothing on (SmoothingConfig defaults: {scfg.method}, sigma {scfg.sigma_s} s; the same filter on the references)", smooth, peers)
    lines += per_video_table(raw, smooth, peers)
    lines += [f"Time: {wall:.0f} s wall, {time.process_time():.0f} s CPU (this process) for {faces} face frames in kept tracks (decode+detect+crop "
              f"{totals.get('total', 0) - sum(totals.get(k, 0) for k in ('infer', *peers)):.0f} s, model {totals.get('infer', 0):.0f} s, "
              + ", ".join(f"{k} {totals.get(k, 0):.0f} s" for k in peers) + ")."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:  # per track, to re-tabulate without rerunning
        json.dump({"off": raw, "on": smooth}, fh, indent=1)
    print(f"wrote {args.out} and its per-track .json")


if __name__ == "__main__":
    main()
