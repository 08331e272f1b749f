"""``facepgn infer``: batch inference over videos (folder, glob, s3:// prefix or manifest) on Ray Data."""

from __future__ import annotations

import argparse
import json

from facepgn.cli import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="videos -> per-face 3D reconstructions (Parquet rows, overlays, meshes) on Ray Data",
        description=(
            "Detect and track faces in videos and run the model on every sampled frame. Writes "
            "rows/<video>.parquet (one row per face per frame: pose, 68 landmarks in 2D and 3D in frame "
            "pixels, coefficients, quality), optional overlays/ and meshes/, and summary.json. Reruns "
            "skip videos already done; bad videos are recorded in errors/ and summary.json."
        ),
    )
    parser.add_argument("--model", "-m", default=None, help="model file (facepgn.model) or training checkpoint")
    parser.add_argument("--input", "-i", default=None, help="video, folder, glob, s3:// prefix, or .csv/.jsonl manifest")
    parser.add_argument("--output", "-o", default=None, help="output folder or s3:// prefix")
    parser.add_argument("--overlay", action="store_true", default=None, help="write overlays/<video>.mp4")
    parser.add_argument("--meshes", default=None, metavar="SPEC", help="export meshes: every:N or frames:A,B,...")
    parser.add_argument("--smooth", action="store_true", default=None, help="temporal smoothing along each track")
    parser.add_argument("--stride", type=int, default=None, help="process every Nth frame")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default=None, help="model runtime (onnx: onnxruntime, faster on CPU)")
    parser.add_argument("--local", action="store_true", help="run as a plain loop in this process, without Ray")
    add_config_args(parser)
    parser.set_defaults(handler=run)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """CLI flags as config overrides (they win over --config; --set wins over both)."""
    flags = []
    for name in ("model", "input", "output", "meshes", "runtime"):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"{name}={json.dumps(value)}")
    if args.overlay:
        flags.append("overlay=true")
    if args.smooth:
        flags.append("smoothing.enabled=true")
    if args.stride is not None:
        flags.append(f"stride={int(args.stride)}")
    if args.local:
        flags.append("executor=local")
    return flags + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from facepgn.config import InferConfig, load_config
    from facepgn.pipelines.infer import run_inference

    cfg = load_config(InferConfig, args.config, overrides_from_args(args))
    summary = run_inference(cfg)
    counts = summary["counts"]
    print(
        f"facepgn infer: {counts['videos_done_this_run']} videos done, {counts['videos_skipped_already_done']} skipped "
        f"(already done), {counts['videos_failed']} failed, {counts['rows_this_run']} rows -> {cfg.output}"
    )
    for err in summary["errors"]:
        print(f"  failed: {err['reason']}")
    return 1 if counts["videos_failed"] and not counts["videos_done_total"] else 0
