"""``facepgn model``: inspect, convert and download face models and the other data assets.

    facepgn model info [PATH]                  # .npz (canonical / shared ICT), SFM folder or .bin, BFM .mat, ICT folder
    facepgn model convert PATH --out FILE.npz  # any of the above -> the canonical file
    facepgn model download ict [--dest DIR] [--base-url URL] [--sha-table FILE] [--allow-missing]
    facepgn model download detector|landmarks [--dest DIR] [--url URL]
    facepgn model download mediapipe [--dest DIR]   # face_landmark.tflite (from the pinned wheel) + canonical mesh
"""

from __future__ import annotations

import argparse
import json

from facepgn.cli import add_command, add_command_group


def register(subparsers) -> None:
    actions = add_command_group(subparsers, "model", dest="model_command", metavar="ACTION",
                                help="inspect, convert and download face models and detector/landmark models",
                                description="Inspect, convert and download the 3D face model and the ONNX assets.")
    add_command(actions, "info", handler=run_info, arguments=_info_arguments, config=False,
                help="print a face model's sizes (vertices, modes, landmarks, units)")
    add_command(actions, "convert", handler=run_convert, arguments=_convert_arguments, config=False,
                help="convert a face model (ICT folder, SFM, BFM, npz) to the canonical .npz")
    add_command(actions, "download", handler=run_download, arguments=_download_arguments, config=False,
                help="download checksum-pinned upstream files")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=None, help="face model file or folder (default: the configured face model)")
    parser.add_argument("--expression-path", default=None, help="BFM only: a 3DDFA Model_Expression.mat")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="face model file or folder")
    parser.add_argument("--out", required=True, help="output .npz (local or s3://)")
    parser.add_argument("--expression-path", default=None, help="BFM only: a 3DDFA Model_Expression.mat")
    parser.add_argument("--allow-missing", action="store_true",
                        help="ICT folder only: build from the modes present instead of requiring all")
    parser.add_argument("--n-id", type=int, default=None, help="keep only the first N identity modes")
    parser.add_argument("--n-exp", type=int, default=None, help="keep only N expressions")


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["ict", "detector", "landmarks", "mediapipe"],
                        help="ict: the ICT-FaceKit model (159 files, 405 MB) -> ict_face_area.npz; "
                             "detector / landmarks: the ONNX models; mediapipe: the face-mesh teacher "
                             "(extracted from the pinned mediapipe 0.10.21 wheel, 36 MB) and its canonical mesh")
    parser.add_argument("--dest", default=None,
                        help="destination folder (default: ~/.cache/facepgn/models for ict, the cache for the others)")
    parser.add_argument("--base-url", default=None, help="ict: a mirror of the FaceXModel folder (also $FACEPGN_ICT_BASE_URL)")
    parser.add_argument("--sha-table", default=None,
                        help="ict: a 'sha256 size path' table to use instead of the pinned one (mirrors, tests)")
    parser.add_argument("--allow-missing", action="store_true", help="ict: convert even if the table lists only some modes")
    parser.add_argument("--url", default=None, help="detector/landmarks: download from this URL instead")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _open(path: str | None, expression_path: str | None = None, allow_missing: bool = False):
    from facepgn.facemodel import load_face_model, open_face_model
    from facepgn.paths import resolve_asset

    if path is None:
        return load_face_model(), str(resolve_asset("face_model"))
    from pathlib import Path

    kwargs = {}
    if expression_path:
        kwargs["expression_path"] = expression_path
    if allow_missing and (Path(path) / "vertex_indices.json").exists():
        kwargs["allow_missing"] = True
    return open_face_model(path, **kwargs), path


def run_info(args: argparse.Namespace) -> int:
    # an ICT-FaceKit folder is described as it is (the modes present), complete or not
    model, source = _open(args.path, args.expression_path, allow_missing=True)
    summary = {"path": str(source), **model.summary()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    landmark_note = "" if summary["landmarks"] == 68 else " of 68 mapped"
    print(f"face model: {summary['path']}")
    print(f"  name: {summary['name']}")
    print(f"  vertices: {summary['vertices']}")
    print(f"  identity modes: {summary['identity_modes']}")
    print(f"  expressions: {summary['expressions']} ({summary['expression_kind']})")
    print(f"  triangles: {summary['triangles']}")
    print(f"  landmarks: {summary['landmarks']}{landmark_note}")
    print(f"  units: {summary['units']}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    model, _ = _open(args.path, args.expression_path, args.allow_missing)
    if args.n_id is not None or args.n_exp is not None:
        try:
            model = model.truncated(args.n_id, args.n_exp)
        except ValueError as exc:
            from facepgn.errors import FacepgnError

            raise FacepgnError(f"{args.path}: {exc}") from None
    model.save(args.out)
    s = model.summary()
    print(f"wrote {args.out}: {s['vertices']} vertices, {s['identity_modes']} identity modes, "
          f"{s['expressions']} expressions, {s['landmarks']} landmarks, units {s['units']}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from facepgn import download
    from facepgn.paths import cache_dir

    if args.what == "ict":
        dest = args.dest or str(cache_dir() / "models")
        result = download.download_ict(dest, base_url=args.base_url, table=args.sha_table,
                                       allow_missing=args.allow_missing, show_progress=not args.quiet)
        m = result["model"]
        print(f"{result['downloaded']} downloaded, {result['already_verified']} already verified "
              f"({result['files']} files, sha256 checked) in {result['raw_dir']}")
        print(f"wrote {result['output']}: {m['vertices']} vertices, {m['identity_modes']} identity modes, "
              f"{m['expressions']} expressions")
        return 0
    if args.what == "mediapipe":
        result = download.download_mediapipe(args.dest, show_progress=not args.quiet)
        print(f"mediapipe: {result['output']} and {result['canonical']} ({result['downloaded']} downloaded, "
              f"{result['already_verified']} already verified, sha256 checked)")
        return 0
    result = download.download_asset(args.what, dest=args.dest, url=args.url, show_progress=not args.quiet)
    state = "downloaded" if result["downloaded"] else "already present and verified"
    print(f"{args.what}: {result['output']} ({state}, sha256 checked)")
    return 0
