"""The training state both loops step: model, optimiser, LR schedule, mixed-precision scaler, step
and epoch, with the process's place among the workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facepgn.config import TrainConfig
from facepgn.model import FaceReconstructor, build_model, unwrap
from facepgn.train.optim import make_optimizer, make_scheduler
from facepgn.train.step import autocast_settings


@dataclass
class TrainState:
    """Everything a training step changes, and what it runs with."""

    cfg: TrainConfig  # a DistributedTrainConfig on Ray workers
    model: torch.nn.Module  # a FaceReconstructor, or the DDP wrapper around it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    device: torch.device
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # steps trained in the current epoch (a resumed run skips that many batches of it)
    rank: int = 0  # this worker's rank; 0 writes the events, the best model and the model file
    world: int = 1  # workers training together

    @property
    def core(self) -> FaceReconstructor:
        return unwrap(self.model)


def new_state(cfg: TrainConfig, device: torch.device, amp: str, face_model: Any = None, rank: int = 0, world: int = 1) -> TrainState:
    """A fresh model (seeded with ``cfg.seed``: the same initial weights in every process), its
    optimiser, schedule over ``cfg.steps`` and the autocast settings for ``amp``, at step 0."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model, face_model).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.steps)
    amp_dtype, scaler = autocast_settings(amp, device)
    return TrainState(cfg, model, optimizer, scheduler, scaler, amp_dtype, device, rank=rank, world=world)
