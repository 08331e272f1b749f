"""The software renderer: rasterisation, z-buffer, visibility and overlays on the real face model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facepgn import render
from facepgn.facemodel import load_face_model
from facepgn.geometry import euler_to_matrix, project


@pytest.fixture(scope="module")
def model():
    return load_face_model()


def _projected(model, pose_deg, scale=3.5, size=128):
    verts = model.vertices().astype(np.float64)
    R = euler_to_matrix(np.radians(np.asarray(pose_deg, dtype=np.float64)))
    return project(verts, scale, R, np.array([size / 2, size / 2 - 2 * scale, 0.0]))


def test_single_triangle_coverage_and_barycentrics():
    # Front-facing (negative signed area in y-down image coordinates).
    verts = np.array([[10.0, 10.0, 1.0], [10.0, 30.0, 2.0], [30.0, 10.0, 3.0]])
    tris = np.array([[0, 1, 2]])
    assert render.signed_areas(verts, tris)[0] < 0
    raster = render.rasterize(verts, tris, 40, 40)
    ys, xs = np.nonzero(raster.mask)
    # Pixel centres inside the right triangle x>=10, y>=10, x+y<=40.
    expected = sum(1 for y in range(40) for x in range(40) if x >= 10 and y >= 10 and x + y <= 40)
    assert len(xs) == expected
    w = raster.barycentrics[ys, xs]
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(w @ verts[:, 0], xs, atol=1e-4)
    np.testing.assert_allclose(w @ verts[:, 1], ys, atol=1e-4)
    np.testing.assert_allclose(raster.depth[ys, xs], w @ verts[:, 2], atol=1e-4)
    assert np.isneginf(raster.depth[~raster.mask]).all()
    # The back of the same triangle is culled, unless culling is off.
    back = tris[:, ::-1]
    assert not render.rasterize(verts, back, 40, 40).mask.any()
    assert render.rasterize(verts, back, 40, 40, cull_backfaces=False).mask.sum() == expected


def test_zbuffer_keeps_nearest_whatever_the_order():
    near = np.array([[0.0, 0.0, 5.0], [0.0, 20.0, 5.0], [20.0, 0.0, 5.0]])
    far = near.copy()
    far[:, 2] = -5.0
    verts = np.concatenate([far, near])
    for tris in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        raster = render.rasterize(verts, tris, 24, 24)
        ids = raster.triangle_ids[raster.mask]
        assert (tris[ids][:, 0] == 3).all()
        assert np.allclose(raster.depth[raster.mask], 5.0)


def test_chunked_rasterisation_matches_single_pass(model, monkeypatch):
    verts = _projected(model, (10, -35, 5), scale=9.0, size=256)
    whole = render.rasterize(verts, model.triangles, 256, 256)
    monkeypatch.setattr(render, "_MAX_CANDIDATES", 5000)
    chunked = render.rasterize(verts, model.triangles, 256, 256)
    np.testing.assert_array_equal(whole.triangle_ids, chunked.triangle_ids)
    np.testing.assert_array_equal(whole.depth, chunked.depth)


@pytest.mark.parametrize("pose", [(0, 0, 0), (20, 45, -15), (-30, -80, 25)])
def test_mask_bounds_match_projected_vertices(model, pose):
    verts = _projected(model, pose)
    raster = render.rasterize(verts, model.triangles, 128, 128, cull_backfaces=False)
    ys, xs = np.nonzero(raster.mask)
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    assert abs(xs.min() - lo[0]) <= 1.5 and abs(xs.max() - hi[0]) <= 1.5
    assert abs(ys.min() - lo[1]) <= 1.5 and abs(ys.max() - hi[1]) <= 1.5
    # With back-face culling the front surface alone gives (almost) the same silhouette.
    culled = render.rasterize(verts, model.triangles, 128, 128)
    assert culled.mask.sum() > 0.85 * raster.mask.sum()


def test_rendered_landmarks_fall_on_the_face(model):
    from facepgn.synthetic import face_skin

    skin = face_skin(model)  # the mesh with its eye and mouth holes closed
    verts = project(skin.close(model.vertices().astype(np.float64)), 3.5,
                    euler_to_matrix(np.radians([10.0, 25.0, 0.0])), np.array([64.0, 57.0, 0.0]))
    albedo = np.full((len(verts), 3), (0.8, 0.6, 0.5), np.float32)
    background = np.full((128, 128, 3), 30, np.uint8)
    out = render.render(verts, skin.triangles, albedo, 128, 128, background)
    assert out.image.dtype == np.uint8 and out.image.shape == (128, 128, 3)
    assert (out.image[~out.mask] == 30).all() and (out.image[out.mask] != 30).any(axis=-1).mean() > 0.99
    landmarks = verts[model.landmark_ids]
    visible = render.vertex_visibility(landmarks, out.raster)
    assert visible.sum() >= 55
    px = np.round(landmarks[:, :2]).astype(int)
    assert out.mask[px[visible, 1], px[visible, 0]].all()
    # Hidden ones (far jaw line) are at most a pixel or two off the silhouette.
    near = cv2.dilate(out.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert near[px[:, 1], px[:, 0]].all()
    drawn = render.draw_landmarks(out.image, landmarks, visible=visible)
    changed = np.any(drawn != out.image, axis=-1)
    assert changed.sum() > 68
    assert (changed & out.mask).sum() / changed.sum() > 0.9  # dots on the silhouette spill over


def test_vertex_visibility_far_side_and_occluder(model):
    verts = _projected(model, (0, 90, 0))
    lm = verts[model.landmark_ids]
    raster = render.rasterize(verts, model.triangles, 128, 128)
    visible = render.vertex_visibility(lm, raster)
    # Positive yaw turns the face to the image's left: the subject's right jaw (points 0-7) is hidden,
    # the left jaw (9-16) is the visible silhouette side.
    assert visible[0:7].sum() <= 1
    assert visible[10:17].sum() >= 5
    frontal = _projected(model, (0, 0, 0))
    nose_tip = model.landmark_ids[30]
    vis = render.vertex_visibility(frontal, triangles=model.triangles, height=128, width=128)
    assert vis[nose_tip] and vis.mean() > 0.7
    # A square put in front of the face hides everything behind it.
    x, y = frontal[nose_tip, :2]
    quad = np.array([[x - 20, y - 20, 500.0], [x - 20, y + 20, 500.0], [x + 20, y - 20, 500.0], [x + 20, y + 20, 500.0]])
    both = np.concatenate([frontal, quad])
    tris = np.concatenate([model.triangles, len(frontal) + np.array([[0, 1, 2], [2, 1, 3]])])
    vis = render.vertex_visibility(both, triangles=tris, height=128, width=128)
    assert not vis[nose_tip]
    assert vis[-4:].all()


def test_mesh_overlays(model):
    verts = _projected(model, (0, -20, 0))
    image = np.full((128, 128, 3), 200, np.uint8)
    wire = render.draw_mesh(image, verts, model.triangles, mode="wireframe", alpha=1.0)
    changed = np.any(wire != image, axis=-1)
    ys, xs = np.nonzero(changed)
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    assert changed.sum() > 500
    assert xs.min() >= lo[0] - 2 and xs.max() <= hi[0] + 2 and ys.min() >= lo[1] - 2 and ys.max() <= hi[1] + 2
    shaded = render.draw_mesh(image, verts, model.triangles, mode="shaded", alpha=0.6)
    mask = render.rasterize(verts, model.triangles, 128, 128).mask
    diff = np.any(shaded != image, axis=-1)
    assert (diff[~mask] == 0).all() and diff[mask].mean() > 0.9
    with pytest.raises(ValueError, match="unknown mesh overlay mode"):
        render.draw_mesh(image, verts, model.triangles, mode="points")
    sheet = render.contact_sheet([image, wire, shaded], columns=2, pad=2)
    assert sheet.shape == (2 * 130 + 2, 2 * 130 + 2, 3)
