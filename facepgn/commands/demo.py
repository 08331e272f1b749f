"""``facepgn demo``: the whole pipeline on this machine (embedded Ray), ending with a report."""

from __future__ import annotations

import argparse

from facepgn.cli import Command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", default=None, help="output folder (default runs/demo)")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                        help="run only these stages (model synth_faces synth_videos preprocess train tune infer evaluate)")


def run(args: argparse.Namespace) -> int:
    """Synthetic faces and videos -> preprocess (real + synthetic videos) -> train -> a small sweep ->
    batch inference with overlays on the real videos -> AFLW2000-3D evaluation, on an embedded local
    Ray. Writes REPORT.md and summary.json under --out and prints where everything went. Sizes live
    in configs/demo.yaml (DemoConfig); --set changes them."""
    import json

    from facepgn.config import DemoConfig, load_config
    from facepgn.demo import run_demo
    from facepgn.paths import REPO_ROOT

    config = args.config
    if config is None and (REPO_ROOT / "configs" / "demo.yaml").is_file():
        config = str(REPO_ROOT / "configs" / "demo.yaml")
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output={json.dumps(args.out)}")
    if args.stages:
        overrides.append(f"stages={json.dumps(args.stages)}")
    cfg = load_config(DemoConfig, config, overrides)
    summary = run_demo(cfg)
    return 1 if summary["errors"] else 0


register = Command(
    "demo", handler=run, arguments=_arguments, description=run.__doc__,
    help="run the whole pipeline locally on the bundled data and write a report",
)
