"""``facepgn synth faces|videos``: synthetic labelled faces and videos rendered from the face model."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

from facepgn.cli import add_command, add_command_group


def register(subparsers: argparse._SubParsersAction) -> None:
    kinds = add_command_group(
        subparsers, "synth", dest="synth_kind", metavar="KIND", required=False,
        help="render synthetic labelled faces or videos",
        description="Render synthetic faces from the face model with exact ground truth.",
    )
    add_command(
        kinds, "faces", handler=run_faces, arguments=_kind_arguments("faces", 1000, _face_arguments),
        help="labelled face crops -> face-record Parquet shards",
        description=(
            "Write N labelled face crops (68 3D landmarks, visibility, pose, coefficients) as "
            "data/part-NNNNN.parquet shards in FACE_RECORD_SCHEMA (data/ holds only Parquet: "
            "pandas.read_parquet(OUT/data)), plus contact_sheet.png and summary.json beside data/. "
            "Deterministic by seed; reruns skip shards already written (a folder with its shards at "
            "the top level, from before data/, is resumed in place)."
        ),
    )
    add_command(
        kinds, "videos", handler=run_videos, arguments=_kind_arguments("clips", 3, _video_arguments),
        help="mp4 clips with per-frame ground truth",
        description=(
            "Write N mp4 clips (one synthetic identity each, smooth head motion and expressions) as "
            "synthetic-NNNN.mp4 with synthetic-NNNN.gt.npz (per-frame pose, scale, translation, "
            "coefficients, 68 landmarks 2D/3D and visibility in frame pixels), plus summary.json."
        ),
    )


def _kind_arguments(what: str, default_n: int, own: Callable[[argparse.ArgumentParser], None]):
    """The flags both kinds take (--n, --out, then the kind's ``own``, then --seed, --workers)."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=None, help=f"number of {what} (default {default_n})")
        parser.add_argument("--out", "-o", default=None, help="output folder or s3:// prefix")
        own(parser)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")

    return add


def _face_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=None, help="crop side in pixels (default 128)")


def _video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 60)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default 256)")
    parser.add_argument("--fps", type=float, default=None, help="frames per second (default 25)")


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> list[str]:
    out = list(args.overrides)
    for attr, key in names.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    return out


def _workers(requested: int) -> int:
    return requested if requested > 0 else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_faces(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facepgn import records, storage, synthetic
    from facepgn.config import SyntheticFacesConfig, load_config
    from facepgn.summary import SUMMARY_FILE, versions, write_summary

    cfg = load_config(SyntheticFacesConfig, args.config,
                      _overrides(args, {"n": "n", "out": "output", "size": "size", "seed": "seed", "workers": "workers"}))
    synthetic.face_model_for(cfg)  # a missing/bad face model fails here, in one line
    workers = _workers(cfg.workers)
    data_dir = synthetic.data_dir(cfg.output)
    if data_dir == cfg.output:
        print(f"facepgn synth faces: {cfg.output} holds shards at its top level (written before data/): resuming there")
    t0 = time.time()
    with tqdm(total=cfg.n, unit="face", desc="synth faces") as bar:
        summary = synthetic.generate_faces(data_dir, cfg.n, cfg.seed, cfg, cfg.rows_per_shard, workers,
                                           progress=bar.update)
    sheet_path = None
    if cfg.contact_sheet > 0 and summary["shards"]:
        sheet = synthetic.contact_sheet_from_records(summary["shards"], limit=cfg.contact_sheet)
        sheet_path = storage.join(cfg.output, "contact_sheet.png")
        storage.atomic_write_bytes(sheet_path, records.encode_image(sheet, ".png"))
    write_summary(
        storage.join(cfg.output, SUMMARY_FILE), job="synth faces",
        counts={"faces": summary["faces"], "written": summary["written"], "skipped_existing": summary["skipped_existing"],
                "shards": len(summary["shards"])},
        errors=[],
        timings={"wall_s": time.time() - t0, "render_s": summary["seconds"], "cpu_s": summary["cpu_seconds"],
                 "faces_per_s": summary["faces_per_second"]},
        config=cfg.model_dump(mode="json"),
        extra={  # the counts also at the top level, where this summary had them before ``counts`` existed
            "faces": summary["faces"], "written": summary["written"], "skipped_existing": summary["skipped_existing"],
            "shards": summary["shards"], "yaw_buckets_deg": summary["yaw_buckets_deg"],
            "mean_visible_landmarks": summary["mean_visible_landmarks"], "workers": workers, "contact_sheet": sheet_path,
        },
        versions=versions("cv2", "pyarrow"),
    )
    rate = summary["faces_per_second"]
    print(f"facepgn synth faces: {summary['written']} written, {summary['skipped_existing']} already there, "
          f"{len(summary['shards'])} shards -> {cfg.output}" + (f" ({rate:.1f} faces/s)" if rate else ""))
    return 0


def run_videos(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facepgn import storage, synthetic
    from facepgn.config import SyntheticFacesConfig, SyntheticVideosConfig, load_config
    from facepgn.summary import SUMMARY_FILE, versions, write_summary

    cfg = load_config(SyntheticVideosConfig, args.config,
                      _overrides(args, {"n": "n", "out": "output", "frames": "frames", "size": "size",
                                        "fps": "fps", "seed": "seed", "workers": "workers"}))
    synthetic.face_model_for(SyntheticFacesConfig(num_id=cfg.num_id, num_exp=cfg.num_exp, face_model=cfg.face_model))
    workers = _workers(cfg.workers)
    t0 = time.time()
    with tqdm(total=cfg.n, unit="video", desc="synth videos") as bar:
        summary = synthetic.generate_videos(cfg.output, cfg.n, cfg.seed, cfg, workers, progress=bar.update)
    write_summary(
        storage.join(cfg.output, SUMMARY_FILE), job="synth videos",
        counts={"videos": summary["videos"], "written": summary["written"], "skipped_existing": summary["skipped_existing"]},
        errors=[],
        timings={"wall_s": time.time() - t0, "render_s": summary["seconds"]},
        config=cfg.model_dump(mode="json"),
        extra={  # the counts also at the top level, where this summary had them before ``counts`` existed
            "videos": summary["videos"], "written": summary["written"], "skipped_existing": summary["skipped_existing"],
            "files": summary["files"], "frames_per_video": summary["frames_per_video"], "workers": workers,
        },
        versions=versions("cv2"),
    )
    print(f"facepgn synth videos: {summary['written']} written, {summary['skipped_existing']} already there -> {cfg.output}")
    return 0
