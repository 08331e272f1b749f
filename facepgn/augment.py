"""Geometric augmentation of labelled face crops: scale, shift, in-plane rotation and mirror, with
every label moved exactly like the image.

Why: the training crops (synthetic renders, pseudo-labelled and profiled real faces, 300W-LP) are
all cut the same way, face centred and upright; real crops from a detector are not. A random
similarity of the crop, applied to the image and to the labels together, teaches the networks the
variation without new data.

One augmentation is a 2x3 affine ``A`` from old crop pixels to new crop pixels (pixel centres at
integers, as ``cv2.warpAffine`` samples them)::

    A = T(c + shift) . k Q(theta) . [mirror] . T(-c),   c = ((S - 1) / 2, (S - 1) / 2)

with ``k`` the scale, ``Q`` a rotation in the image plane (positive ``theta`` turns clockwise on
screen, y down) and the optional mirror ``x -> -x`` about the crop centre. What it does to each
label (``facepgn.records`` face-record columns):

* ``landmarks_2d`` / ``landmarks_3d``: x, y through ``A``; z (towards the camera) scaled by ``k`` and
  not negated by a mirror (the mirror is left-right, z still points at the camera); a mirror also
  relabels the points with :data:`FLIP_PERMUTATION` (the subject's right eye corner becomes the
  left one, ...).
* ``landmarks_visible``: permuted like the points, and False for points the warp moves out of the crop
  (synthetic visibility already means "inside the crop and not hidden").
* ``pose``, ``scale``, ``translation`` (weak perspective ``p = s F R X + t``, see
  :mod:`facepgn.geometry`): exactly ``R' = F An F R D``, ``s' = k s``, ``t' = A3 t + b`` where ``An`` is
  ``A``'s 2x2 part over ``k`` extended by a 1 for z, ``A3`` the same times ``k``, and ``D =
  diag(-1, 1, 1)`` for a mirror (else the identity). Then ``project(D X[perm], s', R', t')`` equals
  the transformed labels for the face model's landmarks ``X``: without a mirror the same face in a
  new pose; with one, the mirrored face, whose pose has yaw and roll negated and pitch kept.
* ``id_coeffs``/``exp_coeffs``: unchanged, but a mirrored face is not the face the coefficients
  describe (identity modes are not left-right symmetric), so callers drop them for mirrored crops
  (``has_coeffs`` False); the pose stays valid.
* ``crop_to_frame``: ``C' = C A^-1``, so it still maps the new crop's pixels to the same source-frame
  points.

Images are warped with a replicated or reflected border, never black: black corners would be a
shortcut the networks learn (they appear only on augmented crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from facepgn.geometry import FLIP_PERMUTATION  # the 68-point mirror relabelling (one home)

NUM_LANDMARKS = 68

_F = np.diag([1.0, -1.0, 1.0])  # geometry.MODEL_TO_IMAGE_FLIP
_MIRROR = np.diag([-1.0, 1.0, 1.0])
_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE}


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random similarity (``config.TrainDataConfig``'s ``aug_*`` fields).

    ``scale`` is the zoom factor range (> 1 enlarges the face), ``rotate_deg`` the largest in-plane
    rotation either way, ``shift`` the largest shift per axis as a fraction of the crop side,
    ``flip_prob`` the chance of a mirror, ``border`` how the warp fills pixels from outside the crop.
    """

    scale: tuple[float, float] = (0.85, 1.15)
    rotate_deg: float = 20.0
    shift: float = 0.06
    flip_prob: float = 0.5
    border: str = "reflect"

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"augment scale range {self.scale}: need 0 < low <= high")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"augment flip_prob {self.flip_prob}: need a probability in [0, 1]")
        if self.rotate_deg < 0 or self.shift < 0:
            raise ValueError("augment rotate_deg and shift must be >= 0")
        if self.border not in _BORDERS:
            raise ValueError(f"augment border {self.border!r}: one of {sorted(_BORDERS)}")


@dataclass(frozen=True)
class Similarity:
    """One augmentation: ``matrix`` (2, 3) maps old crop pixels to new crop pixels; ``size`` is the
    (square) crop side it was made for."""

    matrix: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        """The zoom factor k (z and the weak-perspective scale are multiplied by it)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def flipped(self) -> bool:
        """Whether the similarity mirrors the crop (then landmarks are relabelled)."""
        return bool(np.linalg.det(self.matrix[:, :2]) < 0)


def similarity(size: int, scale: float = 1.0, angle_deg: float = 0.0, shift: tuple[float, float] = (0.0, 0.0),
               flip: bool = False) -> Similarity:
    """The similarity that mirrors (optionally), rotates by ``angle_deg`` (clockwise on screen) and
    scales about the crop centre, then shifts by ``shift`` pixels; see the module docstring."""
    c = (size - 1) / 2.0
    t = np.radians(angle_deg)
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    offset = np.array([c, c]) + np.asarray(shift, np.float64) - lin @ np.array([c, c])
    return Similarity(np.concatenate([lin, offset[:, None]], 1), int(size))


def random_similarity(rng: np.random.Generator, size: int, settings: AugmentSettings) -> Similarity:
    """A random similarity within ``settings`` (scale log-uniform, so zooming in and out are equally
    likely; angle and shift uniform). Draws the same number of values whatever the settings, so a
    seed gives the same stream."""
    u = rng.random(5)
    lo, hi = settings.scale
    scale = float(np.exp(np.log(lo) + u[0] * (np.log(hi) - np.log(lo))))
    angle = (2 * u[1] - 1) * settings.rotate_deg
    shift = (2 * u[2:4] - 1) * settings.shift * size
    flip = bool(u[4] < settings.flip_prob)
    return similarity(size, scale, angle, (float(shift[0]), float(shift[1])), flip)


def warp_image(image: np.ndarray, sim: Similarity, border: str = "reflect") -> np.ndarray:
    """The crop resampled through the similarity (bilinear), borders filled by replication or
    reflection (no black corners); zooming out is pre-blurred so it does not alias."""
    if image.shape[0] != sim.size or image.shape[1] != sim.size:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, the similarity is for {sim.size} px crops")
    if border not in _BORDERS:
        raise ValueError(f"border {border!r}: one of {sorted(_BORDERS)}")
    k = sim.scale
    if k < 0.7:  # a strong zoom-out: blur first (as facepgn.labelled.crop_with_affine does)
        sigma = 0.5 * np.sqrt(1.0 / (k * k) - 1.0)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.warpAffine(image, sim.matrix, (sim.size, sim.size), flags=cv2.INTER_LINEAR, borderMode=_BORDERS[border])


def transform_points(points: np.ndarray, sim: Similarity) -> np.ndarray:
    """(..., 2) or (..., 3) crop points -> new crop points: x, y through the affine, z times the scale.
    No relabelling (see :func:`transform_landmarks`)."""
    pts = np.asarray(points, np.float64)
    out = pts.copy()
    out[..., :2] = pts[..., :2] @ sim.matrix[:, :2].T + sim.matrix[:, 2]
    if pts.shape[-1] > 2:
        out[..., 2:] = pts[..., 2:] * sim.scale
    return out


def mirror_order(values: np.ndarray, sim: Similarity) -> np.ndarray:
    """Per-landmark values (68, ...) in the new order: ``values[FLIP_PERMUTATION]`` for a mirror."""
    return np.asarray(values)[FLIP_PERMUTATION] if sim.flipped else np.asarray(values)


def transform_landmarks(landmarks: np.ndarray, sim: Similarity) -> np.ndarray:
    """68 landmarks (68, 2 or 3) in crop pixels -> the same landmarks in the new crop (relabelled by
    :data:`FLIP_PERMUTATION` for a mirror), float32."""
    lm = np.asarray(landmarks)
    if lm.shape[0] != NUM_LANDMARKS:
        raise ValueError(f"expected 68 landmarks, got {lm.shape}")
    return mirror_order(transform_points(lm, sim), sim).astype(np.float32)


def inside_crop(points: np.ndarray, size: int) -> np.ndarray:
    """Which (N, 2+) points lie inside a ``size`` crop (pixel centres at integers, edges at -0.5)."""
    xy = np.asarray(points, np.float64)[..., :2]
    return np.all((xy >= -0.5) & (xy <= size - 0.5), axis=-1)


def transform_visible(visible: np.ndarray | None, landmarks: np.ndarray, sim: Similarity) -> np.ndarray:
    """Visibility (68,) after the similarity: relabelled for a mirror and False where the point left
    the crop. ``landmarks`` are the OLD crop points; ``visible`` None means all visible."""
    vis = np.ones(NUM_LANDMARKS, bool) if visible is None else np.asarray(visible).astype(bool).reshape(NUM_LANDMARKS)
    moved = transform_points(np.asarray(landmarks)[:, :2], sim)
    return mirror_order(vis & inside_crop(moved, sim.size), sim)


def transform_rotation(R: np.ndarray, sim: Similarity) -> np.ndarray:
    """Model->camera rotation (3, 3) after the similarity: ``F An F R D`` (module docstring)."""
    an = np.eye(3)
    an[:2, :2] = sim.matrix[:, :2] / sim.scale
    d = _MIRROR if sim.flipped else np.eye(3)
    return _F @ an @ _F @ np.asarray(R, np.float64) @ d


def transform_pose(pose: np.ndarray | None, scale: float | None, translation: np.ndarray | None,
                   sim: Similarity) -> tuple[np.ndarray | None, float | None, np.ndarray | None]:
    """Weak-perspective pose labels (pitch, yaw, roll radians; scale; translation (3,)) after the
    similarity. Each may be None (e.g. 300W-LP records have angles only) and stays None."""
    from facepgn.geometry import euler_to_matrix, matrix_to_euler

    new_pose = None
    if pose is not None:
        R = euler_to_matrix(np.asarray(pose, np.float64).reshape(3))
        new_pose = np.asarray(matrix_to_euler(transform_rotation(R, sim)), np.float32)
    new_scale = None if scale is None else float(scale) * sim.scale
    new_t = None
    if translation is not None:
        new_t = transform_points(np.asarray(translation, np.float64).reshape(1, 3), sim)[0].astype(np.float32)
    return new_pose, new_scale, new_t


def transform_crop_to_frame(crop_to_frame: np.ndarray, sim: Similarity) -> np.ndarray:
    """The new crop's crop->frame affine (2, 3): ``C A^-1``, float32."""
    c = np.vstack([np.asarray(crop_to_frame, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    a = np.vstack([sim.matrix, [0.0, 0.0, 1.0]])
    return (c @ np.linalg.inv(a))[:2].astype(np.float32)


def augment_record(image: np.ndarray, labels: Mapping[str, Any], sim: Similarity, border: str = "reflect") -> tuple[np.ndarray, dict[str, Any]]:
    """Apply one similarity to a crop and its labels.

    ``labels`` may hold ``landmarks_2d`` (68, 2), ``landmarks_3d`` (68, 3), ``landmarks_visible``
    (68,), ``pose``, ``scale``, ``translation``, ``crop_to_frame`` (6,) or (2, 3) and ``has_coeffs``;
    missing or None entries stay so, except the visibility, which is always computed when there are
    landmarks (None counts as all visible before the warp). Returns (new image, new labels); for a
    mirror ``has_coeffs`` becomes False.
    """
    out = dict(labels)
    image = warp_image(image, sim, border)
    ref = labels.get("landmarks_2d")
    if ref is None and labels.get("landmarks_3d") is not None:
        ref = np.asarray(labels["landmarks_3d"])[:, :2]
    if ref is not None:
        out["landmarks_visible"] = transform_visible(labels.get("landmarks_visible"), np.asarray(ref), sim)
    for key in ("landmarks_2d", "landmarks_3d"):
        if labels.get(key) is not None:
            out[key] = transform_landmarks(labels[key], sim)
    if any(labels.get(k) is not None for k in ("pose", "scale", "translation")):
        out["pose"], out["scale"], out["translation"] = transform_pose(labels.get("pose"), labels.get("scale"), labels.get("translation"), sim)
    if labels.get("crop_to_frame") is not None:
        shape = np.asarray(labels["crop_to_frame"]).shape
        out["crop_to_frame"] = transform_crop_to_frame(labels["crop_to_frame"], sim).reshape(shape)
    if sim.flipped and "has_coeffs" in labels:
        out["has_coeffs"] = False
    return image, out
