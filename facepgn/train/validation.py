"""Validation during training: the landmark NME on held-out faces and overlay images of them.

``val_nme`` is the reconstruction's: the 68 landmark vertices of the posed mesh; ``val_nme_pgn``
the PGN's own 3D landmarks (x, y). Both against the labels' 2D landmarks
(``facepgn.evaluation.nme``). A non-finite prediction (or a pose fit that fails on one) counts as
NME 1000: a diverged model must lose, not vanish or stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from facepgn.model import unwrap

DIVERGED_NME = 1e3


@dataclass
class ValidationSums:
    """NME sums over the faces one process scored (summed over workers with :func:`sum_over_workers`)."""

    mesh: float = 0.0
    pgn: float = 0.0
    count: float = 0.0
    overlay: np.ndarray | None = None  # RGB contact sheet of the first faces, when asked for

    def metrics(self) -> dict[str, float]:
        """``val_nme``, ``val_nme_pgn``, ``val_faces``; empty when no face was scored."""
        if self.count <= 0:
            return {}
        return {"val_nme": self.mesh / self.count, "val_nme_pgn": self.pgn / self.count, "val_faces": self.count}


def nme_sums(outputs: dict[str, torch.Tensor], gt_2d: np.ndarray) -> tuple[float, float]:
    """Summed NME of the mesh landmarks and of the PGN landmarks of one batch (capped at 1000 each)."""
    from facepgn import evaluation

    mesh = outputs["mesh_landmarks"][..., :2].float().cpu().numpy()
    pgn = outputs["landmarks_3d"][..., :2].float().cpu().numpy()
    with np.errstate(all="ignore"):
        nme_mesh = np.nan_to_num(evaluation.nme(mesh, gt_2d), nan=DIVERGED_NME, posinf=DIVERGED_NME)
        nme_pgn = np.nan_to_num(evaluation.nme(pgn, gt_2d), nan=DIVERGED_NME, posinf=DIVERGED_NME)
    return float(np.minimum(nme_mesh, DIVERGED_NME).sum()), float(np.minimum(nme_pgn, DIVERGED_NME).sum())


def validate_epoch(model, batches: Iterable[Any], model_cfg, device, overlay_images: int = 0) -> ValidationSums:
    """NME sums over face-record ``batches`` (any batch form ``face_batch_to_tensors`` reads; never
    augmented), in eval mode (the previous mode is restored); with ``overlay_images`` the first
    batch's faces drawn with their prediction."""
    from facepgn.train import data as train_data

    core = unwrap(model)
    was_training = core.training
    core.eval()
    sums = ValidationSums()
    try:
        with torch.no_grad():
            for batch in batches:
                faces = train_data.face_batch_to_tensors(batch, model_cfg.input_size, model_cfg.num_id, model_cfg.num_exp)
                images = faces["images"].to(device)
                gt = faces["landmarks_2d"].numpy()
                sums.count += len(gt)
                try:
                    outputs = core(images)
                except torch.linalg.LinAlgError:  # the pose fit of a diverged model: score, do not crash
                    sums.mesh += DIVERGED_NME * len(gt)
                    sums.pgn += DIVERGED_NME * len(gt)
                    continue
                mesh, pgn = nme_sums(outputs, gt)
                sums.mesh += mesh
                sums.pgn += pgn
                if overlay_images > 0 and sums.overlay is None:
                    sums.overlay = overlay_sheet(core, images, outputs, gt, overlay_images)
    finally:
        core.train(was_training)
    return sums


def sum_over_workers(sums: ValidationSums, device) -> ValidationSums:
    """The sums of every DDP worker (``all_reduce``; this process's own without a process group)."""
    import torch.distributed as dist

    t = torch.tensor([sums.mesh, sums.pgn, float(sums.count)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    mesh, pgn, count = (float(v) for v in t.cpu())
    return ValidationSums(mesh, pgn, count, sums.overlay)


def overlay_sheet(core, images, outputs, gt_2d, count: int) -> np.ndarray:
    """Validation faces with the predicted mesh (wireframe) and landmarks (green; labels red)."""
    from facepgn import render

    n = min(count, images.shape[0])
    verts = core.mesh_vertices({k: v[:n] for k, v in outputs.items()}).detach().cpu().numpy()
    triangles = core.fm_triangles.cpu().numpy()
    pred = outputs["landmarks_3d"][:n].detach().float().cpu().numpy()
    rgb = np.ascontiguousarray((images[:n].detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    tiles = []
    for i in range(n):
        mesh = render.draw_mesh(rgb[i], verts[i], triangles, mode="wireframe", alpha=0.6)
        marks = render.draw_landmarks(rgb[i], gt_2d[i], color=(255, 0, 0))
        marks = render.draw_landmarks(marks, pred[i], color=(0, 255, 0))
        tiles += [mesh, marks]
    return render.contact_sheet(tiles, columns=2)
