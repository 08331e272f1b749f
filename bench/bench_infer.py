"""Benchmark: batch inference on Ray Data vs a plain loop over the same functions, and model latency.

Prints, in one run:

* sampled frames per second of the Ray pipeline (``facepgn.pipelines.infer``, executor ``ray``) and
  of the plain single-process loop (executor ``local``: the same per-video functions of
  ``facepgn.inference``, same config, torch/OpenCV on one thread each as in every Ray worker), and
  the ratio Ray / loop (goal >= 1.8x on 2 cores). The Ray figure includes starting the actor pool;
  ``ray.init`` and a tiny warm-up run (worker processes started, as on a running cluster) are not counted.
* CPU time per frame of the stages (Ray overhead shows there, contention from other processes does
  not) and the CPU cores each run actually got (CPU seconds / wall seconds);
* the per-stage breakdown (decode, detect, crop, model, write...), seconds summed over videos, for both;
* the model's per-face latency at batch 1 on one thread: torch eager (networks + closed-form pose),
  onnxruntime networks + the same pose fit in torch, and onnxruntime networks alone (goal <= 4.4 ms).

Usage: ``.venv/bin/python bench/bench_infer.py [--model runs/x/model.pt] [--frames 300] [--cpus 2]
[--runtime torch|onnx] [--json out.json]``. Without ``--model`` an untrained model of the default
config is used (speed does not depend on the weights). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from facepgn.paths import shared_path

VIDEOS = ["d0.mp4", "d3.mp4", "d6.mp4", "d9.mp4", "d10.mp4", "short_hamilton_clip.mp4"]


def model_file(path: str | None, tmp: str) -> str:
    if path:
        return path
    import torch

    from facepgn.config import ModelConfig
    from facepgn.model import build_model, save_model_file

    torch.manual_seed(0)
    out = os.path.join(tmp, "model.pt")
    save_model_file(build_model(ModelConfig()).eval(), out)
    return out


def latency(model_path: str, repeats: int) -> dict[str, float]:
    """Median per-face latency (ms) at batch 1 on one thread."""
    import onnxruntime as ort
    import torch

    from facepgn import model as model_lib
    from facepgn.export import export_onnx
    from facepgn.predictor import Predictor

    torch.set_num_threads(1)
    model = model_lib.load(model_path)
    size = model.input_size
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)

    out = {}

    def measure(name: str, fn) -> None:
        """Median wall ms and median CPU ms (thread time: what a busy machine does not inflate)."""
        for _ in range(5):
            fn()
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        out[f"{name}_ms"] = 1000 * statistics.median(wall)
        out[f"{name}_cpu_ms"] = 1000 * statistics.median(cpu)

    torch_runner = Predictor(model=model, runtime="torch", threads=1)
    measure("torch_eager", lambda: torch_runner(crop))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "networks.onnx")
        export_onnx(model, onnx_path)
        onnx_runner = Predictor(model=model, runtime="onnx", threads=1, onnx_path=onnx_path)
        measure("onnxruntime_plus_pose", lambda: onnx_runner(crop))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
        images = crop.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        measure("onnxruntime_networks_only", lambda: session.run(None, {"images": images}))
    images_t = torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        measure("torch_networks_only", lambda: (model.regressor(images_t), model.pgn(images_t) if model.pgn is not None else None))
    return out


def run(executor: str, cfg_kwargs: dict, output: str) -> dict:
    from facepgn.config import InferConfig
    from facepgn.pipelines.infer import run_inference

    cfg = InferConfig(**cfg_kwargs, output=output, executor=executor)
    t0 = time.perf_counter()
    summary = run_inference(cfg, progress=None)
    wall = time.perf_counter() - t0
    frames = summary["counts"]["sampled_frames_this_run"]
    if summary["errors"]:
        raise SystemExit(f"bench: {executor} run had errors: {summary['errors']}")
    cpu = summary["timings"]["cpu_s"]
    return {"wall_s": wall, "frames": frames, "faces": summary["counts"]["rows_this_run"], "frames_per_s": frames / wall,
            "stage_s": summary["timings"]["stage_s"], "cpu_s": cpu, "cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
            "cores_obtained": cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--frames", type=int, default=300, help="frames per video (max_frames)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    parser.add_argument("--max-actors", type=int, default=1)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--latency-repeats", type=int, default=100)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    results: dict = {"cpus": args.cpus, "frames_per_video": args.frames, "runtime": args.runtime}
    with tempfile.TemporaryDirectory(prefix="facepgn-bench-infer-") as tmp:
        path = model_file(args.model, tmp)
        manifest = os.path.join(tmp, "videos.csv")
        with open(manifest, "w") as f:
            f.write("path\n" + "\n".join(str(shared_path(f"media/videos/{v}")) for v in VIDEOS) + "\n")
        cfg_kwargs = dict(model=path, input=manifest, max_frames=args.frames, runtime=args.runtime, batch_size=32,
                          min_actors=1, max_actors=args.max_actors, torch_threads=1)
        if not args.skip_pipeline:
            results["plain_loop"] = run("local", cfg_kwargs, os.path.join(tmp, "out-loop"))
            print(f"plain loop: {results['plain_loop']['frames']} frames, {results['plain_loop']['faces']} faces in "
                  f"{results['plain_loop']['wall_s']:.1f} s = {results['plain_loop']['frames_per_s']:.1f} frames/s")
            import ray

            ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
            # warm-up: start Ray's worker processes (as on a running cluster); not timed
            run("ray", {**cfg_kwargs, "max_frames": 4}, os.path.join(tmp, "out-warm"))
            results["ray"] = run("ray", cfg_kwargs, os.path.join(tmp, "out-ray"))
            ray.shutdown()
            print(f"ray data:   {results['ray']['frames']} frames, {results['ray']['faces']} faces in "
                  f"{results['ray']['wall_s']:.1f} s = {results['ray']['frames_per_s']:.1f} frames/s")
            results["ratio_ray_over_loop"] = results["ray"]["frames_per_s"] / results["plain_loop"]["frames_per_s"]
            print(f"ratio ray / loop: {results['ratio_ray_over_loop']:.2f}x on {args.cpus} CPUs (goal >= 1.8x on 2)")
            for name in ("plain_loop", "ray"):
                r = results[name]
                print(f"  {name:<10} CPU {r['cpu_ms_per_frame']:.1f} ms per frame (Ray overhead shows here, contention does not); "
                      f"CPU cores it got: {r['cores_obtained']:.2f}")
            results["load_avg_1m_at_end"] = os.getloadavg()[0]
            if results["plain_loop"]["cores_obtained"] < 0.8:
                print(f"  note: the plain loop got {results['plain_loop']['cores_obtained']:.2f} of a core: the machine is busy "
                      f"(load {results['load_avg_1m_at_end']:.1f}); the ratio reflects CPU shares as much as the pipeline")
            stages = sorted(set(results["plain_loop"]["stage_s"]) | set(results["ray"]["stage_s"]))
            print("per-stage seconds (summed over videos)   loop      ray")
            for stage in stages:
                print(f"  {stage:<38} {results['plain_loop']['stage_s'].get(stage, 0):7.2f}  {results['ray']['stage_s'].get(stage, 0):7.2f}")
        results["latency_batch1_one_thread"] = latency(path, args.latency_repeats)
        lat = results["latency_batch1_one_thread"]
        print("per-face latency, batch 1, one thread (median ms; goal <= 4.4)      wall    CPU")
        for name in ("torch_eager", "onnxruntime_plus_pose", "onnxruntime_networks_only", "torch_networks_only"):
            print(f"  {name:<60} {lat[name + '_ms']:6.2f} {lat[name + '_cpu_ms']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
