"""``facepgn infer``: batch inference over videos and photos (folder, glob, s3:// prefix or manifest) on Ray Data."""

from __future__ import annotations

import argparse
import json

from facepgn.cli import Command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None, help="model file (facepgn.model) or training checkpoint")
    parser.add_argument("--input", "-i", default=None,
                        help="video, photo, folder, glob, s3:// prefix, or .csv/.jsonl manifest (videos and photos may be mixed)")
    parser.add_argument("--output", "-o", default=None, help="output folder or s3:// prefix")
    parser.add_argument("--overlay", action="store_true", default=None, help="write overlays/<video>.mp4 (photos: overlays/<photo>.jpg or .png)")
    parser.add_argument("--meshes", default=None, metavar="SPEC", help="export meshes: every:N or frames:A,B,...")
    parser.add_argument("--smooth", action="store_true", default=None, help="temporal smoothing along each track (videos; photos are never smoothed)")
    parser.add_argument("--stride", type=int, default=None, help="process every Nth frame")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default=None, help="model runtime (onnx: onnxruntime, faster on CPU)")
    parser.add_argument("--local", action="store_true", help="run as a plain loop in this process, without Ray")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """CLI flags as config overrides (they win over --config; --set wins over both)."""
    flags = []
    for name, key in (("model", "model"), ("input", "input"), ("output", "output"), ("meshes", "outputs.meshes"),
                      ("runtime", "runtime")):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"{key}={json.dumps(value)}")
    if args.overlay:
        flags.append("outputs.overlay=true")
    if args.smooth:
        flags.append("smoothing.enabled=true")
    if args.stride is not None:
        flags.append(f"decode.stride={int(args.stride)}")
    if args.local:
        flags.append("executor=local")
    return flags + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    """Detect and track faces in videos and run the model on every sampled frame; detect the faces of
    photos (jpg/png, in the same input) and run it on each. Writes rows/<item>.parquet (one row per
    face per frame, or per face of a photo: pose, 68 landmarks in 2D and 3D in frame/photo pixels,
    coefficients, quality), optional overlays/ (an .mp4 per video, an image per photo) and meshes/,
    and summary.json. Reruns skip items already done; bad videos and photos are recorded in errors/
    and summary.json with a one-line reason."""
    from facepgn.config import InferConfig, load_config
    from facepgn.pipelines.infer import run_inference

    cfg = load_config(InferConfig, args.config, overrides_from_args(args))
    summary = run_inference(cfg)
    counts = summary["counts"]
    print(
        f"facepgn infer: {counts['videos_done_this_run']} videos and {counts['photos_done_this_run']} photos done, "
        f"{counts['items_skipped_already_done']} skipped (already done), {counts['items_failed']} failed, "
        f"{counts['rows_this_run']} rows -> {cfg.output}"
    )
    for err in summary["errors"]:
        print(f"  failed: {err['reason']}")
    return 1 if counts["items_failed"] and not counts["items_done_total"] else 0


register = Command(
    "infer", handler=run, arguments=_arguments, description=run.__doc__,
    help="videos and photos -> per-face 3D reconstructions (Parquet rows, overlays, meshes) on Ray Data",
)
