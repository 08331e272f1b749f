"""Loss terms: one function per term, and their weighted sum (weights: ``config.LossWeights``).

Labelled faces (``FACE_RECORD_SCHEMA``):
    * ``landmarks_3d``   the PGN's 3D landmarks vs the 3D labels;
    * ``mesh_landmarks`` the posed mesh's landmark vertices vs the 3D labels (this is what makes the
      regressor's coefficients and, through the closed-form fit, the PGN agree);
    * ``landmarks_2d``   x, y of the PGN and mesh landmarks vs 2D labels (2D-only records, and the
      pseudo-labels that frame pairs may carry);
    * ``shape``          the reconstructed mesh (face-model frame, no pose) vs the mesh of the labelled
      coefficients, where a record has them in the same face model (synthetic data);
    * ``coeff_prior``    identity ~ N(0, 1), expressions sparse.
Frame pairs (A, B) of one person (``FRAME_PAIR_SCHEMA``):
    * ``flow``           2D motion of visible projected vertices from A to B vs the pair's optical flow
      sampled at A's vertex positions;
    * ``photometric``    colours at corresponding visible vertices of A and B agree (Charbonnier);
    * ``identity``       identity coefficients of A and B agree;
    * ``landmark_flow``  the PGN's landmarks of A moved by the flow agree with the PGN's landmarks of B.

Distances are Charbonnier-smoothed (exactly 0 at 0, finite gradient there) and divided by the crop
side, so terms read as fractions of the crop and do not depend on the input size.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.nn import functional as F

CHARBONNIER_EPS = 1e-3

TERMS = ("landmarks_3d", "mesh_landmarks", "landmarks_2d", "shape", "coeff_prior", "flow", "photometric", "identity", "landmark_flow")
LABELLED_TERMS = ("landmarks_3d", "mesh_landmarks", "landmarks_2d", "shape", "coeff_prior")
PAIR_TERMS = ("flow", "photometric", "identity", "landmark_flow")
# terms reported under their own name but weighted with another term's weight
WEIGHT_OF = {"pair_landmarks_2d": "landmarks_2d"}


# ---- helpers -------------------------------------------------------------------------------


def charbonnier(x: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """sqrt(x^2 + eps^2) - eps, elementwise: ~|x| away from 0, smooth and exactly 0 at 0."""
    return torch.sqrt(x * x + eps * eps) - eps


def point_distance(a: torch.Tensor, b: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Smoothed Euclidean distance over the last axis (exactly 0 when a == b)."""
    return torch.sqrt(((a - b) ** 2).sum(-1) + eps * eps) - eps


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` > 0 (weighted); 0 (with a graph) when the mask is empty."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def pixel_to_grid(xy: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixels (pixel centres at integers) -> grid_sample coordinates in [-1, 1] (align_corners)."""
    return xy / (size - 1) * 2.0 - 1.0


def sample_at(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample maps (B, C, H, W) at crop-pixel points (B, N, 2) -> (B, N, C)."""
    size = image.shape[-1]
    grid = pixel_to_grid(xy.float(), size).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.squeeze(-1).transpose(1, 2)


def inside_crop(xy: torch.Tensor, size: int, margin: float = 1.0) -> torch.Tensor:
    """Float mask (B, N) of points inside the crop (with a margin)."""
    lo, hi = margin, size - 1 - margin
    return ((xy[..., 0] >= lo) & (xy[..., 0] <= hi) & (xy[..., 1] >= lo) & (xy[..., 1] <= hi)).float()


# ---- labelled terms ------------------------------------------------------------------------


def landmarks_3d_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """PGN 3D landmarks (B, 68, 3) vs labels; ``mask`` (B, 68) (0 for rows without 3D labels)."""
    return masked_mean(point_distance(pred.float(), target.float()), mask) / size


def mesh_landmarks_loss(mesh_landmarks: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Posed mesh landmark vertices (B, 68, 3) vs 3D labels; ``mask`` also drops unmapped landmarks."""
    return masked_mean(point_distance(mesh_landmarks.float(), target.float()), mask) / size


def landmarks_2d_loss(pred: torch.Tensor, target_xy: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """x, y of predicted landmarks (B, 68, >=2) vs 2D labels (B, 68, 2)."""
    return masked_mean(point_distance(pred[..., :2].float(), target_xy.float()), mask) / size


def shape_loss(pred_vertices: torch.Tensor, target_vertices: torch.Tensor, row_mask: torch.Tensor, face_size: float) -> torch.Tensor:
    """Mean vertex distance (face-model frame, no pose) between predicted and labelled meshes
    (B, V, 3), as a fraction of the face size; ``row_mask`` (B,) selects rows with coefficients."""
    d = point_distance(pred_vertices.float(), target_vertices.float())
    return masked_mean(d, row_mask[:, None]) / face_size


def coeff_prior_loss(id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor, exp_weight: float = 0.1) -> torch.Tensor:
    """Identity ~ N(0, 1) (mean squared coefficient) + sparse expressions (mean weight, in [0, 1])."""
    return (id_coeffs.float() ** 2).mean() + exp_weight * exp_coeffs.float().abs().mean()


# ---- pair terms ----------------------------------------------------------------------------


def flow_consistency_loss(verts_a: torch.Tensor, verts_b: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Vertex motion A->B (B, N, 2) vs the flow (B, 2, S, S) sampled at A's vertices; ``mask`` (B, N)
    = visible in A and B and inside the crop."""
    size = flow.shape[-1]
    motion = verts_b[..., :2].float() - verts_a[..., :2].float()
    sampled = sample_at(flow, verts_a[..., :2])
    return masked_mean(point_distance(motion, sampled), mask) / size


def photometric_loss(images_a: torch.Tensor, images_b: torch.Tensor, verts_a: torch.Tensor, verts_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Colours (in [0, 1]) at corresponding vertices of A and B agree (Charbonnier, mean over RGB)."""
    colour_a = sample_at(images_a, verts_a[..., :2])
    colour_b = sample_at(images_b, verts_b[..., :2])
    return masked_mean(charbonnier(colour_a - colour_b).mean(-1), mask)


def identity_consistency_loss(id_a: torch.Tensor, id_b: torch.Tensor) -> torch.Tensor:
    """Identity coefficients of two frames of one person agree (mean squared difference)."""
    return ((id_a.float() - id_b.float()) ** 2).mean()


def landmark_flow_loss(landmarks_a: torch.Tensor, landmarks_b: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The PGN's landmarks of A (B, 68, >=2) moved by the flow agree with those of B."""
    size = flow.shape[-1]
    moved = landmarks_a[..., :2].float() + sample_at(flow, landmarks_a[..., :2])
    return masked_mean(point_distance(moved, landmarks_b[..., :2].float()), mask) / size


# ---- putting them together -----------------------------------------------------------------


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum_k weights[k] * terms[k] over the terms present (a term with weight 0 is skipped)."""
    total = None
    for name, value in terms.items():
        w = float(weights.get(WEIGHT_OF.get(name, name), 0.0))
        if w == 0.0:
            continue
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("no loss term with a non-zero weight was computed")
    return total


def pair_vertex_subset(num_vertices: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed, evenly spread subset of vertex ids for the pair losses (``count`` <= 0: all)."""
    if count <= 0 or count >= num_vertices:
        return torch.arange(num_vertices, device=device)
    return torch.linspace(0, num_vertices - 1, count, device=device).round().long()


def labelled_terms(core, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The labelled-face terms with a non-zero weight. ``core`` is the ``FaceReconstructor``."""
    size = core.input_size
    terms: dict[str, torch.Tensor] = {}
    lm_mask = out["landmark_mask"]
    vis = batch.get("landmarks_visible")
    if vis is not None:
        vis = vis.to(lm_mask.dtype)
    has_3d = batch["has_3d"].to(lm_mask.dtype)[:, None]
    if weights.get("landmarks_3d", 0):
        terms["landmarks_3d"] = landmarks_3d_loss(out["landmarks_3d"], batch["landmarks_3d"], has_3d.expand_as(lm_mask), size)
    if weights.get("mesh_landmarks", 0):
        terms["mesh_landmarks"] = mesh_landmarks_loss(out["mesh_landmarks"], batch["landmarks_3d"], has_3d * lm_mask, size)
    if weights.get("landmarks_2d", 0) and "landmarks_2d" in batch:
        mask2d = (1.0 - has_3d) * (vis if vis is not None else 1.0)  # 2D-only rows (3D rows use the 3D terms)
        mask2d = mask2d.expand_as(lm_mask)
        terms["landmarks_2d"] = 0.5 * (
            landmarks_2d_loss(out["landmarks_3d"], batch["landmarks_2d"], mask2d, size)
            + landmarks_2d_loss(out["mesh_landmarks"], batch["landmarks_2d"], mask2d * lm_mask, size)
        )
    if weights.get("shape", 0) and "id_coeffs" in batch:
        has = batch["has_coeffs"].to(lm_mask.dtype)
        ids = pair_vertex_subset(core.num_vertices, 2048, lm_mask.device)
        pred = core.model_vertices(out["id_coeffs"], out["exp_coeffs"], ids)
        with torch.no_grad():
            target = core.model_vertices(batch["id_coeffs"], batch["exp_coeffs"], ids)
        terms["shape"] = shape_loss(pred, target, has, float(core.face_size))
    if weights.get("coeff_prior", 0):
        terms["coeff_prior"] = coeff_prior_loss(out["id_coeffs"], out["exp_coeffs"])
    return terms


def pair_terms(
    core,
    out_a: Mapping[str, torch.Tensor],
    out_b: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    num_vertices: int = 2048,
) -> dict[str, torch.Tensor]:
    """The frame-pair terms with a non-zero weight."""
    size = core.input_size
    terms: dict[str, torch.Tensor] = {}
    need_mesh = weights.get("flow", 0) or weights.get("photometric", 0)
    if need_mesh:
        ids = pair_vertex_subset(core.num_vertices, num_vertices, out_a["scale"].device)
        va = core.mesh_vertices(out_a, ids)
        vb = core.mesh_vertices(out_b, ids)
        mask = core.vertex_visibility(out_a, ids, projected=va) * core.vertex_visibility(out_b, ids, projected=vb)
        mask = mask * inside_crop(va.detach(), size) * inside_crop(vb.detach(), size)
        if weights.get("flow", 0):
            terms["flow"] = flow_consistency_loss(va, vb, batch["flow"], mask)
        if weights.get("photometric", 0):
            terms["photometric"] = photometric_loss(batch["images_a"], batch["images_b"], va, vb, mask)
    if weights.get("identity", 0):
        terms["identity"] = identity_consistency_loss(out_a["id_coeffs"], out_b["id_coeffs"])
    if weights.get("landmark_flow", 0) and core.pgn is not None:
        lm_a, lm_b = out_a["landmarks_3d"], out_b["landmarks_3d"]
        mask = inside_crop(lm_a.detach(), size) * inside_crop(lm_b.detach(), size)
        mask = mask * core.vertex_visibility(out_a, core.fm_landmark_ids.clamp_min(0), zbuffer=False) * out_a["landmark_mask"]
        terms["landmark_flow"] = landmark_flow_loss(lm_a, lm_b, batch["flow"], mask)
    if weights.get("landmarks_2d", 0) and "landmarks_2d_a" in batch:
        has = batch["has_landmarks_2d"].to(out_a["scale"].dtype)[:, None].expand(-1, 68)
        terms["pair_landmarks_2d"] = 0.5 * (
            landmarks_2d_loss(out_a["landmarks_3d"], batch["landmarks_2d_a"], has, size)
            + landmarks_2d_loss(out_b["landmarks_3d"], batch["landmarks_2d_b"], has, size)
        )
    return terms
