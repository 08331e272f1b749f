"""``facepgn tune``: a Ray Tune sweep over loss weights (and learning rate) of Ray Train runs."""

from __future__ import annotations

import argparse
import logging

from facepgn.cli import Command


def run(args: argparse.Namespace) -> int:
    """Run a Ray Tune sweep: each trial is a Ray Train run of the training config (base + train) with
    values from search_space; ASHA stops weak trials early on the validation NME. Writes
    results.csv, results.md, best.yaml (train it with `facepgn train --config`) and summary.json to
    output_dir."""
    from facepgn.train.tune import load_tune_config, run_sweep

    cfg = load_tune_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_sweep(cfg)
    counts, best = summary["counts"], summary["best"]
    print(
        f"facepgn tune: {counts['trials']} trials ({counts['completed']} completed, "
        f"{counts['stopped_early']} stopped early, {counts['errors']} failed); best {cfg.sweep.metric} "
        f"{best[cfg.sweep.metric]:.4f} -> {summary['best_config']}"
    )
    return 0


register = Command(
    "tune", handler=run, description=run.__doc__,
    help="sweep loss weights with Ray Tune (ASHA on validation NME)",
)
