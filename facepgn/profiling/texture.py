"""Face profiling's source view: the person's foreground, the shell's extent fitted to it, the head's
texture sampled from the photo, the head rendered over its surroundings warped about it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp

from facepgn import render
from facepgn.profiling.head import HeadMesh, _smoothstep

# ---- the source view: foreground, shell extent, texture ----------------------------------------


def _propagate(adjacency: sp.csr_matrix, values: np.ndarray, known: np.ndarray, max_steps: int = 400) -> np.ndarray:
    """Fill unknown vertices' values front by front from known neighbours (mean of the known ones):
    the nearest known texture is stretched over what the source never saw."""
    values = np.array(values, np.float64, copy=True)
    known = np.array(known, bool, copy=True)
    for _ in range(max_steps):
        if known.all():
            break
        k = known.astype(np.float64)
        count = adjacency @ k
        total = adjacency @ (values * k[:, None])
        new = ~known & (count > 0)
        if not new.any():
            break
        values[new] = total[new] / count[new, None]
        known |= new
    return values


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear values (N, C) float of ``image`` (H, W[, C]) at points (N, 2)."""
    xy = np.asarray(xy, np.float32).reshape(-1, 1, 2)
    out = cv2.remap(image, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(xy), -1).astype(np.float64)


def head_foreground(image: np.ndarray, sure: np.ndarray, likely: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Soft (H, W) float32 mask of the person's head and hair in the source crop, by GrabCut seeded
    with the face core (sure) and the head proxy (likely); everything else starts as likely
    background. Why: the head proxy's ellipsoid is only a guess of where the hair ends, and the
    source's background must not turn with the head."""
    h, w = image.shape[:2]
    fallback = cv2.GaussianBlur(likely.astype(np.float32), (0, 0), 0.7)
    if not sure.any() or likely.all():
        return fallback
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    mask[likely] = cv2.GC_PR_FGD
    mask[sure] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return fallback
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, labels = cv2.connectedComponents(fg)
    if n > 2:  # keep what is connected to the face
        keep = np.unique(labels[sure & (fg > 0)])
        fg = np.isin(labels, keep[keep > 0]).astype(np.uint8)
    fg = np.maximum(fg, sure.astype(np.uint8))
    if fg.sum() < 0.5 * sure.sum():
        return fallback
    return cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 0.7)


def _body_prior(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where the neck and shoulders probably are: below the chin, widening from the jaw's width to
    the whole crop at the bottom (GrabCut's likely foreground, so that a new background keeps the
    person's clothes)."""
    prior = np.zeros((size, size), bool)
    lm = landmarks[np.all(np.isfinite(landmarks[:, :2]), 1)]
    if len(lm) < 3:
        return prior
    top = int(np.clip(np.ceil(lm[:, 1].max()), 0, size))
    left, right = float(lm[:, 0].min()), float(lm[:, 0].max())
    for y in range(top, size):
        t = (y - top) / max(size - 1 - top, 1)
        prior[y, max(0, int(round(left * (1 - t)))): int(round(right + (size - 1 - right) * t)) + 1] = True
    return prior


def fit_shell_extent(head: HeadMesh, verts_src: np.ndarray, centre_src: np.ndarray, foreground: np.ndarray,
                     limits: tuple[float, float] = (0.75, 1.3)) -> np.ndarray:
    """Per-path scale (N,) of the head ellipsoid that puts the shell's silhouette in the source on
    the foreground's edge, so the hair outline turns with the head and no background is carried
    along. Paths pointing down (the neck and body, part of the foreground) are not grown."""
    h, w = foreground.shape
    n, k = len(head.boundary), head.num_rings
    rings = np.concatenate([verts_src[head.boundary][None], verts_src[head.num_closed: head.num_closed + n * k].reshape(k, n, 3)], 0)
    rel = rings[..., :2] - centre_src[:2]  # (K+1, N, 2)
    dist = np.linalg.norm(rel, axis=-1)
    kmax = dist.argmax(0)
    r_shell = dist[kmax, np.arange(n)]
    direction = rel[kmax, np.arange(n)] / np.maximum(r_shell, 1e-6)[:, None]
    r_border = dist[0]
    steps = np.linspace(0.0, limits[1] * 1.05, 64)[None, :] * r_shell[:, None]  # (N, S)
    pts = centre_src[None, None, :2] + steps[..., None] * direction[:, None, :]
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= w - 1) & (pts[..., 1] >= 0) & (pts[..., 1] <= h - 1)
    fg = _sample(foreground, pts.reshape(-1, 2)).reshape(n, -1)
    outside = (fg < 0.5) & (steps > r_border[:, None]) & inside
    first = np.where(outside.any(1), outside.argmax(1), steps.shape[1] - 1)
    # Off the crop the foreground is unknown: keep the shell as it is where its edge leaves the crop.
    off = ~outside.any(1) & ~inside[:, -1]
    r_fg = steps[np.arange(n), first]
    lam = np.clip(r_fg / np.maximum(r_shell, 1e-6), *limits)
    lam[off] = 1.0
    down = direction[:, 1] > 0.6  # image y down: the neck
    lam[down] = np.minimum(lam[down], 1.0)
    # Smooth round the loop: median against single-ray outliers, then a small blur.
    pad = 6
    wrapped = np.r_[lam[-pad:], lam, lam[:pad]]
    med = np.array([np.median(wrapped[i: i + 2 * pad + 1]) for i in range(n)])
    kernel = np.exp(-0.5 * (np.arange(-pad, pad + 1) / 3.0) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.r_[med[-pad:], med, med[:pad]], kernel, mode="valid")


@dataclass
class HeadTexture:
    """Per-vertex texture of the head proxy in source-crop coordinates (see the module docstring).

    ``own``/``partner``/``fill`` (V, 2): where each vertex's own projection, its mirror partner's
    and the propagated fill sample the source; ``weights`` (V, 4) blend own, partner, own from the
    blurred source (stretched) and fill (rows sum to 1);
    ``gain`` (V, 3) matches the partner's colour to the own side's lighting; ``opaque`` (V,) 1 on
    the face mesh (foreground whatever the segmentation says), 0 on the shell.
    """

    own: np.ndarray
    partner: np.ndarray
    fill: np.ndarray
    weights: np.ndarray
    gain: np.ndarray
    opaque: np.ndarray
    source_visible: np.ndarray  # (V,) bool, z-buffer visibility in the source view


def head_texture(head: HeadMesh, verts_src: np.ndarray, image: np.ndarray, foreground: np.ndarray,
                 raster: render.Raster | None = None, grazing: tuple[float, float] = (0.12, 0.45),
                 fill_smoothing: int = 20) -> HeadTexture:
    """Texture the head proxy from the source crop (``verts_src``: its image-space vertices there).

    ``grazing`` (lo, hi): surface whose normal's z (towards the camera) is below ``lo`` is too
    foreshortened in the source to trust; above ``hi`` it is fully trusted."""
    h, w = image.shape[:2]
    tris = head.triangles
    if raster is None:
        raster = render.rasterize(verts_src, tris, h, w, cull_backfaces=False)
    visible = render.vertex_visibility(verts_src, raster)
    nz = render.vertex_normals(verts_src, tris)[:, 2]
    own = verts_src[:, :2].astype(np.float64)
    # On the shell (a guess of the hair's extent), a sample of the source's background is no
    # texture: that vertex takes its partner's or the nearest hair instead. The face mesh keeps its
    # own samples whatever the segmentation says (GrabCut loses blonde hair on a beige wall).
    on_person = np.where(head.is_shell, _smoothstep(_sample(foreground, own)[:, 0], 0.3, 0.7), 1.0)
    trust = visible * _smoothstep(nz, *grazing) * on_person
    seen = visible * _smoothstep(nz, -0.1, 0.12) * on_person  # front-facing at all: stretched, but the right place
    partner = own[head.mirror]
    trust_p = trust[head.mirror]
    rest = (1 - trust) * (1 - trust_p)
    # own sharp, partner sharp, own stretched (from the blurred source: a stretched strip is blurry
    # anyway, and sharp it prints streaks), fill (blurred)
    weights = np.stack([trust, (1 - trust) * trust_p, rest * seen, rest * (1 - seen)], 1)
    # Fill: the better of own/partner where either is good (and, on the shell, on the person),
    # propagated over the rest.
    # (Grazing but seen counts: it is the source's silhouette, whose colour -- hair, an ear -- is
    # the best guess for the unseen side of the head, better than the cheek next to it.)
    # Only samples of the person seed the fill: a wall seen past a tight hairdo must not become the
    # back of the head.
    own_q = np.maximum(trust, seen)
    best = np.where((own_q >= trust_p)[:, None], own, partner)
    known = (np.maximum(own_q, trust_p) > 0.5) & (head.core | (_sample(foreground, best)[:, 0] > 0.5))
    fill = _propagate(head.adjacency, best, known) if known.any() else best
    # Smooth where the fronts met (known vertices fixed): no hard edges between stretched patches;
    # few passes, so coordinates stay local (a full harmonic fill would average round the head and
    # sample the middle of the face).
    deg = np.maximum(np.asarray(head.adjacency.sum(1)).ravel(), 1)[:, None]
    free = ~known
    for _ in range(fill_smoothing):
        fill[free] = ((head.adjacency @ fill) / deg)[free]
    # Lighting of the partner's side -> own side: colour ratio where both are seen, spread outward.
    blur = cv2.GaussianBlur(image, (0, 0), max(1.0, w / 64)).astype(np.float32)
    ratio = (_sample(blur, own) + 8.0) / (_sample(blur, partner) + 8.0)
    both = (trust > 0.5) & (trust_p > 0.5) & ~head.is_shell
    gain = np.ones_like(ratio)
    if both.any():
        gain = _propagate(head.adjacency, np.where(both[:, None], ratio, 1.0), both)
        deg = np.maximum(np.asarray(head.adjacency.sum(1)).ravel(), 1)[:, None]
        for _ in range(10):  # a blotchy gain would print its own pattern
            gain = 0.5 * gain + 0.5 * (head.adjacency @ gain) / deg
        gain = np.clip(gain, 0.6, 1.6)
    return HeadTexture(own=own, partner=partner, fill=fill, weights=weights, gain=gain,
                       opaque=(~head.is_shell).astype(np.float64), source_visible=visible)


def render_head(head: HeadMesh, texture: HeadTexture, verts: np.ndarray, image: np.ndarray, blurred: np.ndarray,
                foreground: np.ndarray, feather_px: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray, render.Raster]:
    """The textured head proxy at image-space ``verts``: colour (H, W, 3) float32, opacity (H, W),
    how much of each pixel's texture the source saw sharply (own or partner sample, (H, W)) and
    the raster. Opacity is 1 on the face mesh and on what the source never saw (the back of
    the head), the source foreground where the shell's texture comes from, feathered at the
    silhouette."""
    h, w = image.shape[:2]
    raster = render.rasterize(verts, head.triangles, h, w, cull_backfaces=False)
    mask = raster.mask
    colour = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    if not mask.any():
        return colour, alpha, np.zeros((h, w), np.float32), raster
    attrs = np.concatenate([texture.own, texture.partner, texture.fill, texture.weights, texture.gain,
                            texture.opaque[:, None]], 1)
    pix = render.interpolate(raster, head.triangles, attrs)
    wts = pix[..., 6:10] / np.maximum(pix[..., 6:10].sum(-1, keepdims=True), 1e-6)
    for j, (src, layer) in enumerate(((image, 0), (image, 2), (blurred, 0), (blurred, 4))):
        if not (wts[..., j][mask] > 1e-3).any():
            continue
        mx, my = pix[..., layer].astype(np.float32), pix[..., layer + 1].astype(np.float32)
        rgb = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if j == 1:
            rgb = rgb * pix[..., 10:13]
        # The fill covers what the source never saw (the back of the head): opaque.
        fg = cv2.remap(foreground, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) if j < 3 else 1.0
        colour += rgb * wts[..., j: j + 1]
        alpha += fg * wts[..., j]
    alpha = np.maximum(alpha, np.clip(pix[..., 13], 0.0, 1.0)) * mask
    if feather_px > 0:  # soften the silhouette on its inner side only
        edge = np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), feather_px) * 2.0, 0.0, 1.0)
        alpha *= edge
    return colour, alpha, (wts[..., 0] + wts[..., 1]) * mask, raster


def outline_radii(mask: np.ndarray, centre: np.ndarray, n_angles: int = 180) -> np.ndarray:
    """(n_angles,) distance from ``centre`` to the outermost pixel of ``mask`` along rays at angles
    2 pi k / n (0 where a ray meets none)."""
    h, w = mask.shape
    angles = np.arange(n_angles) * (2 * np.pi / n_angles)
    steps = np.arange(0.0, float(np.hypot(h, w)), 0.5)
    x = centre[0] + np.cos(angles)[:, None] * steps[None]
    y = centre[1] + np.sin(angles)[:, None] * steps[None]
    xi, yi = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    hit = np.zeros_like(ok)
    hit[ok] = mask[yi[ok], xi[ok]]
    last = np.where(hit.any(1), hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1), 0)
    return steps[last] * hit.any(1)


def _smooth_circular(values: np.ndarray, sigma: float) -> np.ndarray:
    n = len(values)
    half = min(n // 2, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.r_[values[-half:], values, values[:half]], kernel, mode="valid") if half else values


def surround_warp(size: int, centre: np.ndarray, radii_src: np.ndarray, radii_dst: np.ndarray,
                  smooth: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Backward maps (map_x, map_y) of a radial warp of the crop about ``centre``: the source's
    head outline (``radii_src``, see :func:`outline_radii`) goes onto the view's (``radii_dst``)
    and the crop border stays put, linearly in between. Why: the hair, neck and scene next to the
    head follow its new outline continuously (300W-LP's image warp, without its folds), instead of
    a turned head pasted on a still photo. ``smooth``: circular blur of the radii (angle steps),
    so a jagged outline does not print radial streaks."""
    n = len(radii_dst)
    r_src = _smooth_circular(np.asarray(radii_src, np.float64), smooth)
    r_dst = _smooth_circular(np.asarray(radii_dst, np.float64), smooth)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xs - centre[0], ys - centre[1]
    rho = np.hypot(dx, dy)
    phi = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    grid = np.arange(n + 1) * (2 * np.pi / n)
    r_t = np.interp(phi, grid, np.r_[r_dst, r_dst[:1]])
    r_s = np.interp(phi, grid, np.r_[r_src, r_src[:1]])
    ux, uy = np.cos(phi), np.sin(phi)
    with np.errstate(divide="ignore", invalid="ignore"):  # distance to the crop border along the ray
        tx = np.where(ux > 1e-9, (size - 1 - centre[0]) / ux, np.where(ux < -1e-9, -centre[0] / ux, np.inf))
        ty = np.where(uy > 1e-9, (size - 1 - centre[1]) / uy, np.where(uy < -1e-9, -centre[1] / uy, np.inf))
    border = np.maximum(np.minimum(tx, ty), np.maximum(r_t, r_s) + 1.0)
    # Where the source head reaches the crop's edge there is next to nothing left to stretch: take
    # the band from inside its outline (hair) rather than smear the last pixels into a sunburst.
    r_s = np.where(r_s > r_t, np.minimum(r_s, border - 0.5 * (border - r_t)), r_s)
    # rho in [r_t, border] maps linearly onto [r_s, border]; inside the head: scaled.
    src_rho = np.where(rho >= r_t, r_s + (rho - r_t) * (border - r_s) / np.maximum(border - r_t, 1e-6),
                       rho * r_s / np.maximum(r_t, 1e-6))
    return (centre[0] + src_rho * ux).astype(np.float32), (centre[1] + src_rho * uy).astype(np.float32)
