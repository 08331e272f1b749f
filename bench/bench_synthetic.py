"""Synthetic labelled faces per second: one process (the baseline) vs N processes, same run.

Each run writes the same N faces (same seed, same shards) into its own temporary folder with
``facepgn.synthetic.generate_faces``: sampling, rendering, visibility, JPEG encoding and Parquet
writing all count, and so does starting the worker processes. Prints faces/s for each, the speed-up
as a ratio to the single-process run, and the extrapolated time for 1000 faces.

    .venv/bin/python bench/bench_synthetic.py [--n 200] [--size 128] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from facepgn import synthetic
from facepgn.config import SyntheticFacesConfig


def run(n: int, size: int, workers: int, rows_per_shard: int) -> tuple[float, float]:
    """Wall seconds for the whole job and CPU seconds spent rendering/writing (in whichever process)."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = synthetic.generate_faces(out, n, seed=0, settings=SyntheticFacesConfig(size=size),
                                           rows_per_shard=rows_per_shard, workers=workers, resume=False)
        wall = time.perf_counter() - t0
        assert summary["written"] == n, summary
    return wall, summary["cpu_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows_per_shard = max(1, args.n // (2 * args.workers))  # a few shards per worker
    synthetic.face_model_for(SyntheticFacesConfig(size=args.size))  # load the model outside the timing
    print(f"synthetic {args.size}x{args.size} labelled faces, n={args.n}, {rows_per_shard} per shard, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    base_wall, base_cpu = run(args.n, args.size, 1, rows_per_shard)
    par_wall, par_cpu = run(args.n, args.size, args.workers, rows_per_shard)
    base_rate, par_rate = args.n / base_wall, args.n / par_wall
    print(f"1 process : {base_rate:7.1f} faces/s  ({base_wall:.1f} s wall, {1000 * base_cpu / args.n:.1f} ms CPU per face)")
    print(f"{args.workers} processes: {par_rate:7.1f} faces/s  ({par_wall:.1f} s wall incl. worker start-up, "
          f"{1000 * par_cpu / args.n:.1f} ms CPU per face in the workers)")
    print(f"speed-up {args.workers} vs 1 process: {par_rate / base_rate:.2f}x")
    print(f"1000 faces: {1000 / par_rate:.1f} s with {args.workers} processes, {1000 / base_rate:.1f} s with 1; "
          f"CPU-bound estimate on {args.workers} idle cores: {1000 * par_cpu / args.n / args.workers:.1f} s + start-up")
    if os.getloadavg()[0] > os.cpu_count():
        print("note: the machine was busy (load average above the CPU count): wall-clock figures understate the speed")

if __name__ == "__main__":
    main()
