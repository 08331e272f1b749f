"""THE optimisation step, shared by the plain loop (``facepgn.train.loop``) and Ray Train DDP.

No Ray and no DDP specifics here: ``model`` may be a ``FaceReconstructor`` or a DDP wrapper around
one (the forward goes through the wrapper, once per step, so gradient sync works; helpers that only
read the outputs use the unwrapped module).

One forward runs over all images of the step at once (labelled faces, then pair frames A, then B):
one BatchNorm statistic per step and one DDP forward per backward.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from facepgn import losses
from facepgn.model import unwrap

PAIR_VERTICES = 2048  # vertices sampled for the pair losses (evenly spread subset)


def _weights_dict(weights: Any) -> dict[str, float]:
    if hasattr(weights, "model_dump"):
        weights = weights.model_dump()
    return {k: float(v) for k, v in dict(weights).items()}


def _split(outputs: Mapping[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    parts: list[dict[str, torch.Tensor]] = [{} for _ in sizes]
    for key, value in outputs.items():
        for part, chunk in zip(parts, torch.split(value, sizes, dim=0)):
            part[key] = chunk
    return parts


def compute_losses(
    model: torch.nn.Module, batch: Mapping[str, Mapping[str, torch.Tensor]], weights: Any, pair_vertices: int = PAIR_VERTICES
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward + every loss term with a non-zero weight. Returns (weighted total, terms)."""
    core = unwrap(model)
    w = _weights_dict(weights)
    faces, pairs = batch.get("faces"), batch.get("pairs")
    pair_weight = any(w.get(k, 0) for k in losses.PAIR_TERMS) or (w.get("landmarks_2d", 0) and pairs is not None and "landmarks_2d_a" in pairs)
    if pairs is not None and not pair_weight:
        pairs = None  # no pair term is on: do not spend a forward on the pairs
    chunks, sizes = [], []
    if faces is not None:
        chunks.append(faces["images"])
        sizes.append(faces["images"].shape[0])
    if pairs is not None:
        chunks += [pairs["images_a"], pairs["images_b"]]
        sizes += [pairs["images_a"].shape[0]] * 2
    if not chunks:
        raise ValueError("batch has neither faces nor (used) pairs")
    outputs = model(torch.cat(chunks, dim=0))
    parts = _split(outputs, sizes)
    terms: dict[str, torch.Tensor] = {}
    if faces is not None:
        terms.update(losses.labelled_terms(core, parts[0], faces, w))
    if pairs is not None:
        out_a, out_b = parts[-2], parts[-1]
        terms.update(losses.pair_terms(core, out_a, out_b, pairs, w, pair_vertices))
    total = losses.weighted_total(terms, w)
    return total, terms


def autocast_settings(amp: str, device: torch.device | str) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``"off" | "bf16" | "fp16"`` -> (autocast dtype, GradScaler). fp16 needs CUDA (with a scaler)."""
    device_type = torch.device(device).type
    if amp == "off":
        return None, None
    if amp == "bf16":
        return torch.bfloat16, None
    if amp == "fp16":
        if device_type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16, torch.amp.GradScaler("cuda")
    raise ValueError(f"unknown amp setting {amp!r}")


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Any,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    scheduler: Any = None,
    pair_vertices: int = PAIR_VERTICES,
) -> dict[str, float]:
    """One optimisation step. Returns float metrics: ``loss``, ``loss_<term>`` for every computed
    term, ``grad_norm``, ``lr``, ``skipped`` (1.0 when the loss or gradients were not finite and the
    update was skipped)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = params[0].device.type
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        total, terms = compute_losses(model, batch, weights, pair_vertices)
    skipped = 0.0
    if not torch.isfinite(total):
        skipped = 1.0
        grad_norm = float("nan")
    else:
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        max_norm = grad_clip if grad_clip and grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if scaler is not None:
            scaler.step(optimizer)  # skips the update itself when gradients overflowed
            scaler.update()
        elif math.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped = 1.0
    if scheduler is not None:
        scheduler.step()
    metrics = {"loss": float(total.detach())}
    metrics.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
    metrics.update(grad_norm=grad_norm, lr=float(optimizer.param_groups[0]["lr"]), skipped=skipped)
    return metrics


@torch.no_grad()
def eval_losses(model: torch.nn.Module, batch: Mapping[str, Mapping[str, torch.Tensor]], weights: Any, pair_vertices: int = PAIR_VERTICES) -> dict[str, float]:
    """The step's loss terms without an update (model in eval mode; restores the previous mode)."""
    was_training = model.training
    model.eval()
    try:
        total, terms = compute_losses(model, batch, weights, pair_vertices)
    finally:
        model.train(was_training)
    out = {"loss": float(total)}
    out.update({f"loss_{k}": float(v) for k, v in terms.items()})
    return out
