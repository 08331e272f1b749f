"""A small software renderer for face meshes: z-buffered rasterisation, shading, overlays.

Everything is vectorised numpy (no OpenGL, no per-triangle Python loop), so it runs on any CPU worker.
At 128 px a face mesh's triangles cover about one pixel each; the rasteriser enumerates, for all
triangles at once, the pixel centres inside each triangle's bounding box, keeps those inside the
triangle (barycentric test) and resolves overlaps with a sort-based z-buffer.

Conventions (see ``facepgn.geometry``): vertices are in image space, pixels, x right, y down, z towards
the camera (larger z is nearer). Pixel centres sit at integer coordinates: pixel ``[row, col]`` is the
point ``(x=col, y=row)``. Triangles are wound counter-clockwise when seen from the camera in a y-up
frame (OpenGL's convention, which the ICT face model follows); in the y-down image such a front-facing
triangle has a negative signed area.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Candidate (triangle, pixel) pairs handled per chunk; bounds memory for large renders.
_MAX_CANDIDATES = 2_000_000


@dataclass
class Raster:
    """Which triangle each pixel sees, where on it, and how near.

    ``triangle_ids`` (H, W) int32 is -1 on the background; ``barycentrics`` (H, W, 3) float32 are the
    weights of the triangle's three vertices (0 on the background); ``depth`` (H, W) float32 is the
    image-space z of the visible surface (-inf on the background).
    """

    triangle_ids: np.ndarray
    barycentrics: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.triangle_ids >= 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.triangle_ids.shape  # type: ignore[return-value]


def _of_raster(name: str) -> property:
    """A read-only attribute of a :class:`Rendering` that is its raster's ``name``."""
    return property(lambda self: getattr(self.raster, name), doc=f"``raster.{name}``")


@dataclass
class Rendering:
    """The output of :func:`render`: an RGB uint8 image plus the raster it came from (its mask,
    depth, triangle ids and barycentrics read through)."""

    image: np.ndarray
    raster: Raster

    mask = _of_raster("mask")
    depth = _of_raster("depth")
    triangle_ids = _of_raster("triangle_ids")
    barycentrics = _of_raster("barycentrics")


# ---- rasterisation -------------------------------------------------------------------------


def signed_areas(verts: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Twice the signed 2D area of each triangle in image (y-down) coordinates; < 0 is front-facing."""
    p = np.asarray(verts, dtype=np.float64)[:, :2][triangles]  # (F, 3, 2)
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    return e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]


def rasterize(
    verts: np.ndarray,
    triangles: np.ndarray,
    height: int,
    width: int,
    cull_backfaces: bool = True,
) -> Raster:
    """Z-buffered rasterisation of a mesh given image-space vertices (V, 3) into an H x W raster.

    ``cull_backfaces`` drops triangles facing away from the camera (the mesh must be consistently
    wound, see the module docstring); without it both sides are drawn and the z-buffer decides.
    """
    verts = np.asarray(verts, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"expected image-space vertices (V, 3), got {verts.shape}")
    tri_ids = np.full(height * width, -1, dtype=np.int32)
    bary = np.zeros((height * width, 3), dtype=np.float32)
    depth = np.full(height * width, -np.inf, dtype=np.float64)
    if len(triangles) == 0:
        return Raster(tri_ids.reshape(height, width), bary.reshape(height, width, 3), depth.astype(np.float32).reshape(height, width))

    area = signed_areas(verts, triangles)
    keep = area < -1e-12 if cull_backfaces else np.abs(area) > 1e-12
    p = verts[triangles]  # (F, 3, 3)
    xs, ys = p[:, :, 0], p[:, :, 1]
    xmin = np.maximum(np.ceil(xs.min(1)), 0)
    xmax = np.minimum(np.floor(xs.max(1)), width - 1)
    ymin = np.maximum(np.ceil(ys.min(1)), 0)
    ymax = np.minimum(np.floor(ys.max(1)), height - 1)
    nx = (xmax - xmin + 1).clip(min=0)
    ny = (ymax - ymin + 1).clip(min=0)
    count = np.where(keep & np.isfinite(area), nx * ny, 0).astype(np.int64)
    live = np.flatnonzero(count)
    if len(live) == 0:
        return Raster(tri_ids.reshape(height, width), bary.reshape(height, width, 3), depth.astype(np.float32).reshape(height, width))

    # Barycentric weight i of triangle f at pixel (x, y) is a[f,i]*x + b[f,i]*y + c[f,i].
    x0, x1, x2 = xs[:, 0], xs[:, 1], xs[:, 2]
    y0, y1, y2 = ys[:, 0], ys[:, 1], ys[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / area
    a = np.stack([(y1 - y2), (y2 - y0), (y0 - y1)], 1) * inv[:, None]
    b = np.stack([(x2 - x1), (x0 - x2), (x1 - x0)], 1) * inv[:, None]
    c = -(a * np.stack([x1, x2, x0], 1) + b * np.stack([y1, y2, y0], 1))

    bounds = _chunk_bounds(count[live])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        tri = live[lo:hi]
        cnt = count[tri]
        rep = np.repeat(tri, cnt)
        offsets = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        nxr = nx[rep].astype(np.int64)
        px = xmin[rep].astype(np.int64) + offsets % nxr
        py = ymin[rep].astype(np.int64) + offsets // nxr
        w = a[rep] * px[:, None] + b[rep] * py[:, None] + c[rep]
        inside = (w >= -1e-9).all(1)
        _keep_nearest(rep[inside], py[inside] * width + px[inside], w[inside], p, depth, tri_ids, bary)
    return Raster(
        tri_ids.reshape(height, width),
        bary.reshape(height, width, 3),
        depth.astype(np.float32).reshape(height, width),
    )


def _chunk_bounds(counts: np.ndarray) -> list[int]:
    """Chunks of triangles (candidate pixels ``counts`` each) so that a chunk's candidate list stays
    bounded: indices ``bounds[k]:bounds[k + 1]`` into ``counts``."""
    cum = np.cumsum(counts)
    starts = [0]
    while cum[-1] - (cum[starts[-1] - 1] if starts[-1] else 0) > _MAX_CANDIDATES:
        base = cum[starts[-1] - 1] if starts[-1] else 0
        nxt = int(np.searchsorted(cum, base + _MAX_CANDIDATES, side="right"))
        starts.append(max(nxt, starts[-1] + 1))
        if starts[-1] >= len(counts):
            starts.pop()
            break
    return starts + [len(counts)]


def _keep_nearest(rep: np.ndarray, pix: np.ndarray, w: np.ndarray, p: np.ndarray, depth: np.ndarray,
                  tri_ids: np.ndarray, bary: np.ndarray) -> None:
    """Candidates (triangle ``rep``, flat pixel ``pix``, barycentric weights ``w``) -> the buffers:
    per pixel the nearest candidate (largest z), where it is nearer than what the pixel holds."""
    if len(rep) == 0:
        return
    z = (w * p[rep, :, 2]).sum(1)
    order = np.lexsort((z, pix))  # by pixel, then nearest (largest z) last
    pix_s = pix[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = pix_s[1:] != pix_s[:-1]
    win = order[last]
    pix_w = pix[win]
    nearer = z[win] > depth[pix_w]
    win, pix_w = win[nearer], pix_w[nearer]
    depth[pix_w] = z[win]
    tri_ids[pix_w] = rep[win]
    bary[pix_w] = w[win]


def interpolate(raster: Raster, triangles: np.ndarray, vertex_values: np.ndarray) -> np.ndarray:
    """Per-vertex values (V, C) -> per-pixel (H, W, C) by barycentric interpolation (0 off the mesh)."""
    values = np.asarray(vertex_values)
    h, w = raster.shape
    out = np.zeros((h * w, values.shape[1]), dtype=np.float32)
    ids = raster.triangle_ids.reshape(-1)
    pix = np.flatnonzero(ids >= 0)
    if len(pix):
        corners = values[np.asarray(triangles)[ids[pix]]]  # (P, 3, C)
        weights = raster.barycentrics.reshape(-1, 3)[pix]
        out[pix] = np.einsum("pk,pkc->pc", weights, corners)
    return out.reshape(h, w, values.shape[1])


# ---- shading -------------------------------------------------------------------------------


def vertex_normals(verts: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unit per-vertex normals in image space (z towards the camera for front-facing surface)."""
    v = np.asarray(verts, dtype=np.float64)
    t = np.asarray(triangles)
    # Image space is a reflection of a right-handed frame (y down), hence the minus sign.
    face_n = -np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    # Area-weighted sum of the adjacent faces' normals (bincount is much faster than np.add.at).
    idx = t.reshape(-1)
    normals = np.stack(
        [np.bincount(idx, weights=np.repeat(face_n[:, c], 3), minlength=len(v)) for c in range(3)], 1
    )
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.maximum(norm, 1e-12)).astype(np.float32)


def shade_vertices(
    normals: np.ndarray,
    albedo: np.ndarray,
    light_dir: np.ndarray = (0.3, -0.4, 1.0),
    ambient: float = 0.45,
    diffuse: float = 0.6,
    specular: float = 0.0,
    shininess: float = 20.0,
) -> np.ndarray:
    """Lambertian (+ optional Blinn-Phong) shading: colours in [0, 1] per vertex.

    ``light_dir`` points from the surface towards the light in image space (x right, y down, z towards
    the camera), so the default lights the face from the upper right of the image and the front.
    """
    light = np.asarray(light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    n_dot_l = np.clip(np.einsum("vc,c->v", normals, light), 0.0, None)[:, None]  # einsum: no BLAS threads
    colour = np.asarray(albedo, dtype=np.float64) * (ambient + diffuse * n_dot_l)
    if specular > 0:
        half = light + np.array([0.0, 0.0, 1.0])
        half /= np.linalg.norm(half)
        colour = colour + specular * np.clip(np.einsum("vc,c->v", normals, half), 0.0, None)[:, None] ** shininess
    return np.clip(colour, 0.0, 1.0).astype(np.float32)


def render(
    verts: np.ndarray,
    triangles: np.ndarray,
    albedo: np.ndarray,
    height: int,
    width: int,
    background: np.ndarray | None = None,
    light_dir=(0.3, -0.4, 1.0),
    ambient: float = 0.45,
    diffuse: float = 0.6,
    specular: float = 0.0,
    cull_backfaces: bool = True,
    back_colour=None,
) -> Rendering:
    """Render a mesh with per-vertex albedo (V, 3) in [0, 1] over ``background`` (RGB uint8, or black).

    With ``cull_backfaces=False`` the inside of an open mesh is drawn too (nothing behind it shows
    through); ``back_colour`` (RGB in [0, 1]) paints those back-facing pixels flat.
    """
    raster = rasterize(verts, triangles, height, width, cull_backfaces=cull_backfaces)
    colours = shade_vertices(vertex_normals(verts, triangles), albedo, light_dir, ambient, diffuse, specular)
    image = np.zeros((height, width, 3), np.uint8) if background is None else np.array(background, np.uint8, copy=True)
    if image.shape != (height, width, 3):
        raise ValueError(f"background must be ({height}, {width}, 3), got {image.shape}")
    mask = raster.mask
    if mask.any():
        shaded = interpolate(raster, triangles, colours)
        image[mask] = np.clip(shaded[mask] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if back_colour is not None and not cull_backfaces:
            back = np.zeros(mask.shape, bool)
            back[mask] = signed_areas(verts, triangles)[raster.triangle_ids[mask]] > 0
            image[back] = np.clip(np.asarray(back_colour, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Rendering(image=image, raster=raster)


# ---- visibility ----------------------------------------------------------------------------


def vertex_visibility(
    verts: np.ndarray,
    raster: Raster | None = None,
    triangles: np.ndarray | None = None,
    height: int | None = None,
    width: int | None = None,
    tolerance: float | None = None,
) -> np.ndarray:
    """Which vertices (V,) are visible: inside the image and not behind the z-buffered surface.

    Pass a ``raster`` of the same mesh, or ``triangles`` + ``height`` + ``width`` to rasterise here.
    A vertex is visible when its z is within ``tolerance`` pixels of the nearest surface at the 2x2
    pixel centres around it (default: 1.5% of the mesh's image-space extent, at least 1 px), so points
    on the silhouette of their own surface count as visible.
    """
    v = np.asarray(verts, dtype=np.float64)
    if raster is None:
        if triangles is None or height is None or width is None:
            raise ValueError("vertex_visibility needs a raster or triangles with height and width")
        raster = rasterize(v, triangles, height, width)
    h, w = raster.shape
    if tolerance is None:
        extent = float(np.ptp(v[:, :2], axis=0).max()) if len(v) else 0.0
        tolerance = max(1.0, 0.015 * extent)
    depth = raster.depth
    x0 = np.floor(v[:, 0]).astype(np.int64)
    y0 = np.floor(v[:, 1]).astype(np.int64)
    nearest = np.full(len(v), np.inf)
    covered = np.zeros(len(v), dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            d = np.full(len(v), -np.inf)
            d[ok] = depth[yi[ok], xi[ok]]
            hit = np.isfinite(d)
            covered |= hit
            # The surface nearest to the vertex's own depth among the neighbours decides.
            gap = np.where(hit, d - v[:, 2], np.inf)
            nearest = np.minimum(nearest, gap)
    inside = (v[:, 0] >= -0.5) & (v[:, 0] <= w - 0.5) & (v[:, 1] >= -0.5) & (v[:, 1] <= h - 0.5)
    return inside & covered & (nearest <= tolerance)


# ---- overlays ------------------------------------------------------------------------------

_SHIFT = 4  # sub-pixel precision of cv2 drawing calls (1/16 px)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64)[..., :2] * (1 << _SHIFT)).astype(np.int32)


def draw_landmarks(
    image: np.ndarray,
    points: np.ndarray,
    visible: np.ndarray | None = None,
    color=(0, 255, 0),
    hidden_color=(255, 0, 0),
    radius: float | None = None,
) -> np.ndarray:
    """A copy of ``image`` (RGB uint8) with landmarks (N, 2|3) drawn as dots; hidden ones in another colour."""
    out = np.array(image, dtype=np.uint8, copy=True)
    finite = np.isfinite(np.asarray(points, dtype=np.float64)[:, :2]).all(1)  # unmapped landmarks are NaN
    pts = _fixed(np.nan_to_num(np.asarray(points, dtype=np.float64)))
    if radius is None:
        radius = max(1.0, min(out.shape[:2]) / 128.0)
    r = max(1, int(round(radius * (1 << _SHIFT))))
    for i, (x, y) in enumerate(pts):
        if not finite[i]:
            continue
        c = color if visible is None or visible[i] else hidden_color
        cv2.circle(out, (int(x), int(y)), r, tuple(int(v) for v in c), -1, cv2.LINE_AA, _SHIFT)
    return out


def draw_mesh(
    image: np.ndarray,
    verts: np.ndarray,
    triangles: np.ndarray,
    mode: str = "wireframe",
    color=(80, 200, 255),
    alpha: float = 0.5,
    thickness: int = 1,
    light_dir=(0.3, -0.4, 1.0),
) -> np.ndarray:
    """A copy of ``image`` with a mesh drawn over it.

    ``mode="wireframe"`` draws triangle edges (with (V, 3) vertices only the visible triangles are
    drawn); ``mode="shaded"`` blends a grey Lambertian-shaded rendering with weight ``alpha``.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    verts = np.asarray(verts, dtype=np.float64)
    triangles = np.asarray(triangles)
    if mode == "wireframe":
        tris = triangles
        if verts.shape[1] == 3:
            raster = rasterize(verts, triangles, h, w)
            seen = np.unique(raster.triangle_ids[raster.mask])
            tris = triangles[seen]
        polys = list(_fixed(verts[tris]))
        layer = out.copy()
        cv2.polylines(layer, polys, True, tuple(int(c) for c in color), thickness, cv2.LINE_AA, _SHIFT)
        return cv2.addWeighted(layer, alpha, out, 1 - alpha, 0) if alpha < 1 else layer
    if mode == "shaded":
        if verts.shape[1] != 3:
            raise ValueError("shaded mesh overlay needs (V, 3) image-space vertices")
        grey = np.broadcast_to(np.asarray(color, np.float32) / 255.0, verts.shape).copy()
        rendering = render(verts, triangles, grey, h, w, background=out, light_dir=light_dir, ambient=0.35, diffuse=0.75)
        mask = rendering.mask
        blend = out.astype(np.float32)
        blend[mask] = (1 - alpha) * blend[mask] + alpha * rendering.image[mask].astype(np.float32)
        return np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown mesh overlay mode {mode!r} (wireframe or shaded)")


def contact_sheet(images: list[np.ndarray], columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB images into one grid image (for eyeballing datasets)."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = img
    return sheet
