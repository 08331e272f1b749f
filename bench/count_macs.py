"""Multiply-adds of the PGN + coefficient regressor for one crop (budget: 200 M at 128x128).

    python bench/count_macs.py [--size 128] [--pose pgn|direct] [--set model.pgn_width=1.5 ...]

Counts Conv2d and Linear layers with forward hooks (facepgn.nets.macs). The closed-form pose and the
face-model reconstruction are not network layers and are reported separately as an estimate.
"""

from __future__ import annotations

import argparse
import sys

BUDGET = 200_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="crop side (default: the model config's)")
    parser.add_argument("--pose", choices=["pgn", "direct"], default="pgn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ModelConfig override, e.g. pgn_width=1.5")
    args = parser.parse_args(argv)

    import torch

    from facepgn.config import ModelConfig, load_config
    from facepgn.model import build_model
    from facepgn.nets.macs import count_macs

    overrides = [s.removeprefix("model.") for s in args.set] + [f"pose={args.pose}"]
    if args.size:
        overrides.append(f"input_size={args.size}")
    cfg = load_config(ModelConfig, None, overrides)
    model = build_model(cfg)
    counts = count_macs(model, torch.rand(1, 3, cfg.input_size, cfg.input_size))
    params = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    lm = 68 * 3 * (cfg.num_id + cfg.num_exp)
    print(f"model: pose={cfg.pose} input={cfg.input_size}x{cfg.input_size} id={cfg.num_id} exp={cfg.num_exp} "
          f"pgn_width={cfg.pgn_width} regressor_width={cfg.regressor_width}")
    for name in sorted(k for k in counts if k != "total"):
        print(f"  {name:10s} {counts[name] / 1e6:8.2f} M multiply-adds   {params.get(name, 0) / 1e6:6.2f} M parameters")
    print(f"  {'total':10s} {counts['total'] / 1e6:8.2f} M multiply-adds   (budget {BUDGET / 1e6:.0f} M: "
          f"{counts['total'] / BUDGET:.2f} of it)")
    print(f"  not counted: landmark reconstruction + similarity fit ~{lm / 1e3:.0f} k multiply-adds; "
          f"full mesh ({model.num_vertices} vertices) for rendering ~{model.num_vertices * 3 * (cfg.num_id + cfg.num_exp) / 1e6:.1f} M")
    return 0 if counts["total"] <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
