"""The plain single-process training loop (CPU or one CUDA device), no Ray.

It reads face-record and frame-pair Parquet (local or s3://) into memory, draws shuffled mixed
batches, runs ``facepgn.train.step.train_step`` and writes into ``TrainConfig.output_dir``:
``checkpoint.pt`` (resumable), ``model.pt`` (the standalone model file), ``summary.json`` and,
optionally, TensorBoard events. Everything is loaded with ``torch.load(weights_only=True)``.

The helpers (optimizer, schedule, checkpoints) are shared with the Ray trainer.
"""

from __future__ import annotations

import io
import logging
import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from facepgn import storage
from facepgn.config import OptimConfig, TrainConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.model import FaceReconstructor, build_model, model_file_payload, model_from_payload, read_torch_file, save_model_file, unwrap
from facepgn.summary import SUMMARY_FILE, versions, write_summary
from facepgn.train import data as train_data
from facepgn.train.step import autocast_settings, train_step

log = logging.getLogger("facepgn.train")

CHECKPOINT_FORMAT = "facepgn.checkpoint/1"


# ---- optimisation pieces -------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on BatchNorm, biases and scalars."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then constant or cosine decay to 5% of the base rate."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FacepgnError("device=cuda but no CUDA device is available")
    return torch.device(name)


# ---- checkpoints ---------------------------------------------------------------------------


def checkpoint_payload(model, optimizer, scheduler=None, scaler=None, step: int = 0, train_config: TrainConfig | None = None) -> dict[str, Any]:
    """Everything to resume training; loadable with ``weights_only=True``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": model_file_payload(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "train_config": train_config.model_dump(mode="json") if train_config is not None else None,
    }


def save_checkpoint(path: str, model, optimizer, scheduler=None, scaler=None, step: int = 0, train_config: TrainConfig | None = None) -> None:
    """Write a resumable checkpoint atomically (local or s3://)."""
    buf = io.BytesIO()
    torch.save(checkpoint_payload(model, optimizer, scheduler, scaler, step, train_config), buf)
    storage.atomic_write_bytes(str(path), buf.getvalue())


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    payload = read_torch_file(path, map_location, what="checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a facepgn checkpoint (expected format {CHECKPOINT_FORMAT})")
    return payload


def load_checkpoint(path: str, model, optimizer=None, scheduler=None, scaler=None, map_location: str | torch.device = "cpu") -> int:
    """Restore model (and optimizer / scheduler / scaler when given) in place; returns the step."""
    payload = read_checkpoint(path, map_location)
    core = unwrap(model)
    saved_cfg = payload["model"]["config"]
    if saved_cfg != core.cfg.model_dump(mode="json"):
        raise InputError(path, "checkpoint was written for another model config (model section differs)")
    core.load_state_dict(payload["model"]["state_dict"])
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])


def init_weights(model: torch.nn.Module, path: str) -> None:
    """Start from the network weights of a model file or checkpoint (``TrainConfig.init_from``);
    a one-line error when they do not fit this model."""
    from facepgn.model import load

    source = load(path)
    try:
        unwrap(model).load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise InputError(path, f"init_from weights do not fit this model config ({str(exc).splitlines()[0][:160]})") from None


def model_from_checkpoint(path: str) -> FaceReconstructor:
    """The model stored in a checkpoint (eval mode)."""
    return model_from_payload(read_checkpoint(path)["model"], str(path)).eval()


# ---- batches -------------------------------------------------------------------------------


def mixed_batches(
    cfg: TrainConfig, face_model_name: str | None = None, seed: int = 0
) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Endless mixed batches (labelled faces and/or frame pairs) from ``cfg.data`` (CPU tensors)."""
    d, m = cfg.data, cfg.model
    labelled = train_data.read_records(d.labelled, "face_record") if d.labelled else None
    if labelled is not None and "landmark_definition" in labelled.column_names:
        train_data.check_landmark_definitions(labelled.column("landmark_definition").unique().to_pylist(),
                                              train_data.model_landmark_definition(cfg.model), str(d.labelled[0]))
    pairs = train_data.read_records(d.pairs, "frame_pair") if d.pairs and d.pair_batch_size > 0 else None
    if labelled is None and pairs is None:
        raise FacepgnError("training data: set data.labelled and/or data.pairs")
    lab_it = train_data.random_batches(labelled, d.labelled_batch_size, seed) if labelled is not None else None
    pair_it = train_data.random_batches(pairs, d.pair_batch_size, seed + 1) if pairs is not None else None
    gen = torch.Generator().manual_seed(seed)
    while True:
        faces = (
            train_data.face_batch_to_tensors(next(lab_it), m.input_size, m.num_id, m.num_exp, face_model_name, d.augment, gen,
                                             geometric=train_data.augment_settings(d))
            if lab_it is not None
            else None
        )
        pair = train_data.pair_batch_to_tensors(next(pair_it), m.input_size) if pair_it is not None else None
        yield train_data.mixed_batch(faces, pair)


# ---- the loop ------------------------------------------------------------------------------


def _tensorboard(logdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover
        log.warning("tensorboardX not installed: no TensorBoard events")
        return None
    if storage.is_remote(logdir):
        log.warning("TensorBoard events need a local output_dir; skipping them for %s", logdir)
        return None
    return SummaryWriter(logdir)


def train(
    cfg: TrainConfig,
    face_model: Any = None,
    batches: Iterator[dict[str, dict[str, torch.Tensor]]] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train for ``cfg.steps`` steps; returns the summary (also written to ``summary.json``).

    ``batches`` overrides the Parquet data (an iterator of ``mixed_batch`` dicts, e.g. for tests and
    benchmarks); ``on_metrics(step, metrics)`` is called every ``log_every`` steps.
    """
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, face_model, batches, on_metrics)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig, face_model: Any, batches: Iterator | None, on_metrics: Callable | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    out_dir = cfg.output_dir
    storage.makedirs(out_dir)
    ckpt_path = storage.join(out_dir, "checkpoint.pt")

    model = build_model(cfg.model, face_model).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.steps)
    amp_dtype, scaler = autocast_settings(cfg.optim.amp, device)
    start = 0
    if cfg.resume and storage.exists(ckpt_path):
        start = load_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, map_location=device)
        log.info("resumed from %s at step %d", ckpt_path, start)
    elif cfg.init_from:
        init_weights(model, cfg.init_from)
        log.info("weights from %s", cfg.init_from)
    if batches is None:
        batches = mixed_batches(cfg, unwrap(model).face_model_name, seed=cfg.seed + start)
    writer = _tensorboard(storage.join(out_dir, "tensorboard")) if cfg.tensorboard else None

    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    t_loop = time.perf_counter()
    data_seconds = 0.0
    step = start
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        if step < cfg.data.pairs_from_step:
            batch.pop("pairs", None)  # labelled-only warm-up
        batch = train_data.to_device(batch, device)
        data_seconds += time.perf_counter() - t0
        metrics = train_step(
            model, optimizer, batch, cfg.losses, amp_dtype=amp_dtype, scaler=scaler, grad_clip=cfg.optim.grad_clip, scheduler=scheduler
        )
        window.append(metrics)
        done = step + 1
        if done % max(1, cfg.log_every) == 0 or done == cfg.steps:
            mean = {k: float(np.nanmean([m[k] for m in window if k in m])) for k in window[-1]}
            mean["step"] = done
            history.append(mean)
            window = []
            log.info("step %d/%d loss %.4f lr %.2e", done, cfg.steps, mean["loss"], mean["lr"])
            if writer is not None:
                for k, v in mean.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, done)
            if on_metrics is not None:
                on_metrics(done, mean)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, done, cfg)
    final_step = max(step + 1, start) if cfg.steps > start else start
    save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, final_step, cfg)
    model_path = storage.join(out_dir, "model.pt")
    save_model_file(model, model_path)
    if writer is not None:
        writer.close()
    loop_seconds = time.perf_counter() - t_loop
    steps_run = final_step - start
    seconds = time.perf_counter() - t_start
    steps_per_second = steps_run / loop_seconds if loop_seconds > 0 and steps_run else None
    counts = {"steps": final_step, "steps_this_run": steps_run, "resumed_from": start}
    return write_summary(
        storage.join(out_dir, SUMMARY_FILE), job="train --local", counts=counts, errors=[],
        timings={"wall_s": seconds, "data_s": data_seconds, "steps_per_s": steps_per_second},
        extra={  # the counts and timings also at the top level, under the names they had before
            **counts,
            "seconds": seconds,
            "steps_per_second": steps_per_second,
            "data_seconds": data_seconds,
            "final_metrics": history[-1] if history else None,
            "history": history,
            "model_file": model_path,
            "checkpoint": ckpt_path,
            "device": str(device),
        },
        config=cfg.model_dump(mode="json"),
        versions=versions("torch", "pyarrow"),
    )
