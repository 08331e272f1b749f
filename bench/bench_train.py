"""Benchmark: Ray Train DDP throughput against the plain single-process loop, in one run.

Both train the same model on the same synthetic labelled faces + frame pairs with the same global
batch and the same total number of torch threads:

* baseline: ``facepgn.train.loop.train`` (H5's plain loop), one process, ``--threads`` threads,
  batch ``--batch`` faces + ``--pair-batch`` pairs;
* Ray Train: ``facepgn.train.ray_trainer.run_training``, ``--workers`` gloo workers, each with
  ``threads / workers`` threads and ``1 / workers`` of the batch, data streamed from Ray Datasets.

Printed: steady-state samples/s of each (the first logging window, with start-up and warm-up, is
left out), their ratio (goal >= 0.95), the Ray workers' share of step time spent waiting for
the next batch (goal <= 5%), and for each run the cores its process tree obtained and the CPU time
other processes took meanwhile ("machine busy, ratio not valid" above 10% of the CPUs; exit 3 with
``--strict``). Run it with nothing else running on the machine.

    .venv/bin/python bench/bench_train.py [--steps 40] [--size 64] [--faces 512] [--batch 16] [--pair-batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from cpu_accounting import CpuMeter

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# OpenMP threads that sleep instead of spinning when they wait: on a shared machine spinning threads
# slow every multi-threaded run down by an order of magnitude (both runs get the same setting)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def make_data(root: str, faces: int, pairs: int, size: int) -> tuple[str, str]:
    import pyarrow.parquet as pq

    from facepgn import records
    from facepgn.config import SyntheticFacesConfig
    from facepgn.synthetic import generate_faces, synthetic_pair_rows

    faces_dir, pairs_dir = os.path.join(root, "faces"), os.path.join(root, "pairs")
    generate_faces(faces_dir, faces, seed=3, settings=SyntheticFacesConfig(size=size), rows_per_shard=max(faces // 4, 1))
    os.makedirs(pairs_dir, exist_ok=True)
    target = os.path.join(pairs_dir, "part-00000.parquet")
    if not os.path.exists(target):
        rows, _ = synthetic_pair_rows(pairs, seed=4, size=size)
        pq.write_table(records.to_table(rows, "frame_pair"), target)
    return faces_dir, pairs_dir


def steady(values: list[tuple[int, float]]) -> float:
    """Median over the logging windows after the first."""
    rest = [v for _, v in sorted(values)[1:]] or [v for _, v in values]
    return statistics.median(rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="crop / model input side")
    parser.add_argument("--batch", type=int, default=16, help="labelled faces per step (global)")
    parser.add_argument("--pair-batch", type=int, default=8, help="frame pairs per step (global)")
    parser.add_argument("--threads", type=int, default=2, help="total torch threads, both runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faces", type=int, default=512, help="enough for the steps to stay inside one epoch")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--data", default=None, help="cache folder for the generated data")
    parser.add_argument("--strict", action="store_true", help="exit 3 when the machine was busy (ratio not valid)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)


    from facepgn.config import DistributedTrainConfig, TrainConfig, build_config
    from facepgn.train.loop import train as plain_train
    from facepgn.train.ray_trainer import run_training
    from facepgn.train.tensorboard import read_tensorboard

    root = args.data or tempfile.mkdtemp(prefix="facepgn-bench-train-")
    t0 = time.perf_counter()
    faces_dir, pairs_dir = make_data(root, args.faces, args.pairs, args.size)
    print(f"data: {args.faces} faces + {args.pairs} pairs at {args.size} px ({time.perf_counter() - t0:.1f} s)", flush=True)

    common = {
        "model": {"input_size": args.size},
        "optim": {"warmup_steps": 5},
        "steps": args.steps,
        "log_every": args.log_every,
        "checkpoint_every": 0,
        "seed": 0,
    }

    # ---- baseline: the plain loop ------------------------------------------------------------
    plain_dir = os.path.join(root, "plain")
    plain_cfg = build_config(TrainConfig, {
        **common,
        "data": {"labelled": [faces_dir], "pairs": [pairs_dir], "labelled_batch_size": args.batch, "pair_batch_size": args.pair_batch},
        "threads": args.threads,
        "tensorboard": False,
        "resume": False,
        "output_dir": plain_dir,
    })
    stamps: list[tuple[int, float]] = []
    with CpuMeter() as plain_meter:
        plain_train(plain_cfg, on_metrics=lambda step, m: stamps.append((step, time.perf_counter())))
    per_step = args.batch + args.pair_batch
    windows = [(s1, (s1 - s0) * per_step / (t1 - t0)) for (s0, t0), (s1, t1) in zip(stamps, stamps[1:])]
    plain_sps = steady([(0, 0.0)] + windows) if windows else float("nan")
    print(f"plain loop ({args.threads} threads): {plain_sps:.1f} samples/s", flush=True)

    # ---- Ray Train DDP -----------------------------------------------------------------------
    from facepgn.cluster import connect

    connect(num_cpus=args.threads, include_dashboard=False)  # as the jobs start a local Ray (a no-op when one runs)
    ray_dir = os.path.join(root, "ray-out")
    ray_cfg = build_config(DistributedTrainConfig, {
        **common,
        "data": {
            "labelled": [faces_dir], "pairs": [pairs_dir],
            "labelled_batch_size": args.batch // args.workers, "pair_batch_size": args.pair_batch // args.workers,
        },
        "threads": max(1, args.threads // args.workers),
        "validation": {"holdout_fraction": 0.0},
        "scaling": {"num_workers": args.workers, "cpus_per_worker": args.threads / args.workers * 0.9},
        "output_dir": ray_dir,
        "ray": {"storage_path": os.path.join(root, "ray-store"), "name": f"bench-{int(time.time())}"},
    })
    with CpuMeter() as ray_meter:
        run_training(ray_cfg)
    events = read_tensorboard(os.path.join(ray_dir, "tensorboard"))["scalars"]
    ray_sps = steady(events["perf/samples_per_s"])
    wait = steady(events["perf/data_wait_share"])
    ratio = ray_sps / plain_sps
    print(f"ray train ({args.workers} workers x {max(1, args.threads // args.workers)} threads): {ray_sps:.1f} samples/s")
    print(f"throughput ratio ray / plain: {ratio:.2f}x (goal >= 0.95)")
    print(f"data wait share of step time (ray workers): {100 * wait:.1f}% (goal <= 5%)")
    print("cores each run obtained (its process tree; start-up included) and CPU time other processes took meanwhile:")
    print(plain_meter.shares.line("plain"))
    print(ray_meter.shares.line("ray"))
    shares = {"plain": plain_meter.shares, "ray": ray_meter.shares}
    valid = not any(sh.busy for sh in shares.values())
    if not valid:
        print("machine busy, ratio not valid: other processes took more than 10% of the CPUs during a run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "plain_samples_per_s": plain_sps,
                "ray_samples_per_s": ray_sps,
                "ratio": ratio,
                "data_wait_share": wait,
                "cpu_shares": {k: sh.to_dict() for k, sh in shares.items()},
                "valid": valid,
                "args": vars(args),
            }, f, indent=2)
    return 3 if args.strict and not valid else 0


if __name__ == "__main__":
    sys.exit(main())
