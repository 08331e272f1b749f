"""The optimiser and the learning-rate schedule (one of each, for both loops), and the device and
mixed-precision choices that go with them."""

from __future__ import annotations

import math

import torch

from facepgn.config import OptimConfig
from facepgn.errors import FacepgnError


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
    """``TrainConfig.device`` (``auto``: CUDA when there is one) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FacepgnError("device=cuda but no CUDA device is available")
    return torch.device(name)


def amp_mode(amp: str, device: torch.device) -> str:
    """The autocast mode to train with: ``optim.amp``, its ``auto`` resolved for ``device`` (bf16 on
    a CUDA device, off elsewhere)."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp
