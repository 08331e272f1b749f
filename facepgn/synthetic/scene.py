"""One rendered face: sampled identity, expression and pose, its placement in the crop, lighting,
a procedural background, and the render with its ground truth (landmarks and their visibility)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facepgn import render
from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, project
from facepgn.synthetic.skin import face_skin


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random textured background: smooth colour field, a few blurred shapes, sensor noise."""
    grid = rng.integers(2, 6)
    field = rng.uniform(0, 255, (grid, grid, 3)).astype(np.float32)
    field = field * rng.uniform(0.3, 1.0) + rng.uniform(0, 120)
    img = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 7)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if rng.random() < 0.5:
            axes = (int(rng.uniform(0.05, 0.4) * width), int(rng.uniform(0.05, 0.4) * height))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            w, h = int(rng.uniform(0.05, 0.5) * width), int(rng.uniform(0.05, 0.5) * height)
            cv2.rectangle(img, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), colour, -1)
    sigma = rng.uniform(0.5, 3.0) * max(height, width) / 128
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---- sampling ------------------------------------------------------------------------------


@dataclass
class FaceParams:
    """Ground truth of one rendered face (crop/frame pixels, model frame per facepgn.geometry)."""

    id_coeffs: np.ndarray
    exp_coeffs: np.ndarray
    pose: np.ndarray  # pitch, yaw, roll radians
    scale: float
    translation: np.ndarray  # (3,)


def sample_identity(rng: np.random.Generator, num_id: int, id_std: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(num_id) * id_std).astype(np.float32)


def sample_expression(rng: np.random.Generator, num_exp: int, active_prob: float = 0.15) -> np.ndarray:
    """Sparse blendshape weights in [0, 1]: each expression is on with ``active_prob``."""
    on = rng.random(num_exp) < active_prob
    return np.where(on, rng.uniform(0.1, 1.0, num_exp), 0.0).astype(np.float32)


def sample_pose(rng: np.random.Generator, yaw_max_deg: float = 90, pitch_max_deg: float = 40, roll_max_deg: float = 30) -> np.ndarray:
    """(pitch, yaw, roll) radians. |yaw| is uniform in [0, yaw_max], so the AFLW2000-3D buckets
    [0,30], (30,60], (60,90] are equally represented; pitch and roll are truncated normals."""
    yaw = rng.uniform(0, yaw_max_deg) * rng.choice([-1.0, 1.0])
    pitch = float(np.clip(rng.normal(0, pitch_max_deg / 2), -pitch_max_deg, pitch_max_deg))
    roll = float(np.clip(rng.normal(0, roll_max_deg / 2), -roll_max_deg, roll_max_deg))
    return np.radians([pitch, yaw, roll]).astype(np.float32)


def place_face(
    model: FaceModel,
    id_coeffs: np.ndarray,
    exp_coeffs: np.ndarray,
    pose: np.ndarray,
    box_size: float,
    centre: tuple[float, float],
) -> tuple[float, np.ndarray]:
    """Scale and translation putting the face's 68-landmark box (side ``box_size`` px, the larger of
    its width and height) at ``centre``; translation z centres the landmarks' depth at 0."""
    lm = model.landmarks(id_coeffs, exp_coeffs)[model.landmark_mask].astype(np.float64)
    R = euler_to_matrix(np.asarray(pose, dtype=np.float64))
    p = project(lm, 1.0, R, np.zeros(3))
    extent = max(float(np.ptp(p[:, 0])), float(np.ptp(p[:, 1])), 1e-6)
    scale = box_size / extent
    mid = (p.max(0) + p.min(0)) / 2 * scale
    t = np.array([centre[0] - mid[0], centre[1] - mid[1], -float(p[:, 2].mean()) * scale])
    return float(scale), t


@dataclass
class FaceRender:
    """A rendered face with its ground truth."""

    image: np.ndarray  # RGB uint8
    params: FaceParams
    landmarks_3d: np.ndarray  # (68, 3) image px, NaN rows for unmapped landmarks
    landmarks_visible: np.ndarray  # (68,) bool
    verts: np.ndarray  # (V_all, 3) image-space vertices of the closed mesh
    rendering: render.Rendering


def render_face(
    model: FaceModel,
    params: FaceParams,
    albedo: np.ndarray,
    height: int,
    width: int,
    background: np.ndarray | None = None,
    light_dir=(0.3, -0.4, 1.0),
    ambient: float = 0.45,
    diffuse: float = 0.6,
    vertex_colours: np.ndarray | None = None,
    draw_inside: bool = True,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> FaceRender:
    """Render one face; ``vertex_colours`` (pre-shaded, [0, 1]) bypasses the lighting (for pairs
    with brightness constancy). ``draw_inside`` draws the inside of the open face mask (seen past
    its border at steep poses) in a dark flat colour instead of letting the background through.
    ``extra`` (model-frame vertices (E, 3), triangles (T, 3) into them, albedo (E, 3)) is more
    geometry posed with the face and z-buffered with it (hair: :func:`hair_mesh`); its triangles come
    after the face's in the raster, and landmarks it covers are not visible."""
    skin = face_skin(model)
    verts_model = skin.close(model_vertices(model, params.id_coeffs, params.exp_coeffs))
    R = euler_to_matrix(np.asarray(params.pose, dtype=np.float64))
    verts = project(verts_model, float(params.scale), R, np.asarray(params.translation, dtype=np.float64))
    if vertex_colours is None:
        top = skin.regions["height"] > 0.9
        back = albedo[top].mean(0) * 0.45 if top.any() else albedo.mean(0) * 0.45
        all_verts, all_tris, all_albedo = verts, skin.triangles, albedo
        if extra is not None:
            extra_verts = project(np.asarray(extra[0], np.float64), float(params.scale), R, np.asarray(params.translation, dtype=np.float64))
            all_verts = np.concatenate([verts, extra_verts])
            all_tris = np.concatenate([skin.triangles, np.asarray(extra[1]) + len(verts)]).astype(np.int32)
            all_albedo = np.concatenate([albedo, np.asarray(extra[2], albedo.dtype)])
        rendering = render.render(all_verts, all_tris, all_albedo, height, width, background, light_dir, ambient, diffuse,
                                  cull_backfaces=not draw_inside, back_colour=back)
    else:
        raster = render.rasterize(verts, skin.triangles, height, width, cull_backfaces=not draw_inside)
        image = np.zeros((height, width, 3), np.uint8) if background is None else background.copy()
        mask = raster.mask
        colours = render.interpolate(raster, skin.triangles, vertex_colours)
        image[mask] = np.clip(colours[mask] * 255 + 0.5, 0, 255).astype(np.uint8)
        rendering = render.Rendering(image, raster)
    lm_ids = np.asarray(model.landmark_ids)
    lm = np.full((len(lm_ids), 3), np.nan)
    ok = lm_ids >= 0
    lm[ok] = verts[lm_ids[ok]]
    visible = np.zeros(len(lm_ids), dtype=bool)
    extent = float(np.ptp(verts[: model.num_vertices, :2], axis=0).max())
    visible[ok] = render.vertex_visibility(lm[ok], rendering.raster, tolerance=max(1.0, 0.015 * extent))
    return FaceRender(rendering.image, params, lm, visible, verts, rendering)


def model_vertices(model: FaceModel, id_coeffs: np.ndarray, exp_coeffs: np.ndarray) -> np.ndarray:
    """The face model's mesh (V, 3) float64, evaluated with torch (one intra-op thread under
    :func:`single_threaded`) rather than numpy's multi-threaded BLAS, which burns CPU on this thin product."""
    import torch

    ids = torch.from_numpy(np.asarray(id_coeffs, dtype=np.float32))
    exps = torch.from_numpy(np.asarray(exp_coeffs, dtype=np.float32))
    return model.vertices(ids, exps).numpy().astype(np.float64)


def shade_albedo(verts: np.ndarray, triangles: np.ndarray, albedo: np.ndarray, light_dir=(0.3, -0.4, 1.0), ambient=0.45, diffuse=0.6) -> np.ndarray:
    return render.shade_vertices(render.vertex_normals(verts, triangles), albedo, light_dir, ambient, diffuse)


def _random_light(rng: np.random.Generator) -> tuple[tuple[float, float, float], float, float]:
    light = (rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.4), rng.uniform(0.6, 1.2))
    ambient = rng.uniform(0.4, 0.65)
    diffuse = rng.uniform(0.45, 0.75)
    return light, ambient, diffuse

