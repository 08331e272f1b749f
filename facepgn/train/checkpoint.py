"""Checkpoints: the resumable payload (one format for both loops), resuming, fine-tuning starts,
and keeping the best model on the validation faces.

``checkpoint.pt`` (:data:`CHECKPOINT_FORMAT`) holds the model file payload, the optimiser,
scheduler and scaler states, the step and the training config; everything loads with
``torch.load(weights_only=True)``. The plain loop writes it to ``<output_dir>/checkpoint.pt``; a
Ray Train checkpoint folder holds it with ``progress.json`` (step and epoch) next to it.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch

from facepgn import storage
from facepgn.config import ModelConfig, TrainConfig
from facepgn.errors import InputError
from facepgn.model import FaceReconstructor, model_file_payload, model_from_payload, read_torch_file, save_model_file, unwrap

CHECKPOINT_FORMAT = "facepgn.checkpoint/1"
STATE_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.json"
BEST_MODEL_FILE = "best_model.pt"
BEST_META_FILE = "best_model.json"


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
    if not _same_model_config(payload["model"]["config"], core.cfg):
        raise InputError(path, "checkpoint was written for another model config (model section differs)")
    core.load_state_dict(payload["model"]["state_dict"])
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])


def _same_model_config(saved: dict[str, Any], cfg: ModelConfig) -> bool:
    """Whether a checkpoint's model section is ``cfg``; settings added to ``ModelConfig`` since it
    was written count with their defaults (as a model file's do when it is loaded)."""
    try:
        saved = ModelConfig.model_validate(saved).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError: a setting this facepgn does not know
        return False
    return saved == cfg.model_dump(mode="json")


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


def checkpoint_model_file(checkpoint_path: str) -> str:
    """The resumable checkpoint file inside a Ray Train checkpoint folder (local or s3://)."""
    return storage.join(checkpoint_path, STATE_FILE)


# ---- a training state in and out -----------------------------------------------------------


def save_state(directory: str, state) -> None:
    """A checkpoint folder for ``state`` (a ``facepgn.train.state.TrainState``): ``checkpoint.pt``
    plus ``progress.json`` with the step, the epoch and the steps trained in it."""
    save_checkpoint(storage.join(directory, STATE_FILE), state.model, state.optimizer, state.scheduler, state.scaler, state.step, state.cfg)
    progress = {"step": state.step, "epoch": state.epoch, "epoch_step": state.epoch_step}
    storage.atomic_write_text(storage.join(directory, PROGRESS_FILE), json.dumps(progress))


def restore_state(path: str, state) -> None:
    """Load the checkpoint file ``path`` into ``state`` in place: weights, optimiser, scheduler,
    scaler, the step, and the epoch and the steps trained in it from a ``progress.json`` next to it
    (0 without one; checkpoints written before ``epoch_step`` existed restart their epoch)."""
    state.step = load_checkpoint(path, state.model, state.optimizer, state.scheduler, state.scaler, map_location=state.device)
    progress_file = storage.join(os.path.dirname(path) or ".", PROGRESS_FILE)
    progress = json.loads(storage.read_text(progress_file)) if storage.exists(progress_file) else {}
    state.epoch, state.epoch_step = int(progress.get("epoch", 0)), int(progress.get("epoch_step", 0))


def start_state(state, checkpoint_file: str | None, say) -> None:
    """Resume ``state`` from ``checkpoint_file`` when given, else start it from ``init_from``'s weights
    (when set); ``say`` gets one line about it."""
    if checkpoint_file is not None:
        restore_state(checkpoint_file, state)
        say(f"facepgn train: resumed from step {state.step} (epoch {state.epoch}, step {state.epoch_step} of it)")
    elif state.cfg.init_from:
        init_weights(state.model, state.cfg.init_from)
        say(f"facepgn train: weights from {state.cfg.init_from}")


class BestModel:
    """Checkpoint selection on the validation faces: the best weights so far as
    ``<output_dir>/best_model.pt``, with ``best_model.json`` (NMEs, step); a resumed run keeps the
    best of its earlier part."""

    def __init__(self, output_dir: str):
        self.path = storage.join(output_dir, BEST_MODEL_FILE)
        self.meta = storage.join(output_dir, BEST_META_FILE)
        self.best: dict[str, Any] = {"val_nme": float("inf")}
        if storage.exists(self.meta):
            self.best = json.loads(storage.read_bytes(self.meta))

    def offer(self, val: dict[str, Any], model, step: int) -> bool:
        """Keep ``model`` when ``val["val_nme"]`` beats the best so far; returns whether it did."""
        if "val_nme" not in val or not val["val_nme"] < self.best["val_nme"]:
            return False
        self.best.update(val_nme=float(val["val_nme"]), val_nme_pgn=float(val.get("val_nme_pgn", float("nan"))), step=step)
        save_model_file(unwrap(model), self.path)
        storage.atomic_write_text(self.meta, json.dumps(self.best) + "\n")
        return True
