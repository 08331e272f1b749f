"""``facepgn train``: Ray Train DDP training (``--local``: the plain single-process loop)."""

from __future__ import annotations

import argparse
import logging

from facepgn.cli import Command


def run(args: argparse.Namespace) -> int:
    """Train the reconstruction model on labelled face records and unlabelled frame pairs. With Ray
    Train: DDP workers (scaling.*), checkpoints under ray.storage_path/ray.name (local or s3://; the
    same name resumes), TensorBoard events, validation NME, and <output_dir>/model.pt +
    summary.json. --local runs the same config with the plain loop."""
    from facepgn.config import DistributedTrainConfig, load_config

    cfg = load_config(DistributedTrainConfig, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.local:
        from facepgn.train.loop import train

        summary = train(cfg.plain())
        print(f"facepgn train: {summary['steps']} steps (plain loop) -> {summary['model_file']}")
        return 0
    from facepgn.train.ray_trainer import run_training

    summary = run_training(cfg)
    metrics = summary["final_metrics"]
    nme = metrics.get("val_nme")
    print(
        f"facepgn train: {summary['counts']['steps']} steps, {summary['counts']['epochs']} epochs"
        + (f", validation NME {100 * nme:.2f}%" if isinstance(nme, float) else "")
        + f" -> {summary['model_file']}"
    )
    return 0


register = Command(
    "train", handler=run, description=run.__doc__,
    arguments=lambda parser: parser.add_argument("--local", action="store_true", help="plain single-process loop, no Ray"),
    help="train the model (Ray Train DDP; --local: plain loop)",
)
