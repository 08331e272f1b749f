"""``facepgn synth faces|videos``: synthetic labelled faces and videos rendered from the face model."""

from __future__ import annotations

import argparse
import json
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


def run_faces(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facepgn import synthetic
    from facepgn.config import SyntheticFacesConfig, load_config
    from facepgn.pipelines.synth import run_synth_faces

    cfg = load_config(SyntheticFacesConfig, args.config,
                      _overrides(args, {"n": "n", "out": "output", "size": "size", "seed": "seed", "workers": "workers"}))
    synthetic.face_model_for(cfg)  # a missing/bad face model fails here, in one line (before the progress bar)
    if synthetic.data_dir(cfg.output) == cfg.output:
        print(f"facepgn synth faces: {cfg.output} holds shards at its top level (written before data/): resuming there")
    with tqdm(total=cfg.n, unit="face", desc="synth faces") as bar:
        summary = run_synth_faces(cfg, progress=bar.update)
    rate = summary["timings"]["faces_per_s"]
    failed = summary["counts"]["chunks_failed"]
    print(f"facepgn synth faces: {summary['written']} written, {summary['skipped_existing']} already there, "
          f"{len(summary['shards'])} shards -> {cfg.output}" + (f" ({rate:.1f} faces/s)" if rate else "")
          + (f"; {failed} chunk(s) failed (why: {cfg.output.rstrip('/')}/errors.csv)" if failed else ""))
    return 0


def run_videos(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facepgn import synthetic
    from facepgn.config import SyntheticFacesConfig, SyntheticVideosConfig, load_config
    from facepgn.pipelines.synth import run_synth_videos

    cfg = load_config(SyntheticVideosConfig, args.config,
                      _overrides(args, {"n": "n", "out": "output", "frames": "frames", "size": "size",
                                        "fps": "fps", "seed": "seed", "workers": "workers"}))
    synthetic.face_model_for(SyntheticFacesConfig(num_id=cfg.num_id, num_exp=cfg.num_exp, face_model=cfg.face_model))
    with tqdm(total=cfg.n, unit="video", desc="synth videos") as bar:
        summary = run_synth_videos(cfg, progress=bar.update)
    failed = summary["counts"]["chunks_failed"]
    print(f"facepgn synth videos: {summary['written']} written, {summary['skipped_existing']} already there -> {cfg.output}"
          + (f"; {failed} clip(s) failed (why: {cfg.output.rstrip('/')}/errors.csv)" if failed else ""))
    return 0
