"""Face profiling (facepgn.profiling) on synthetic faces rendered from known coefficients: the views'
labels are the model's, the texture really moves with the head, poses cover large yaw, bad records
are skipped with a reason, rows fit the face-record schema."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn import profiling, records, render, synthetic
from facepgn.flow import warp_by_flow
from facepgn.geometry import euler_to_matrix, project

SETTINGS = synthetic.FaceSettings(size=128, yaw_max_deg=25, pitch_max_deg=10, roll_max_deg=10)
MAGENTA = np.array([255, 0, 255], np.uint8)


@pytest.fixture(scope="module")
def model():
    return synthetic.face_model_for(SETTINGS)


@pytest.fixture(scope="module")
def source(model):
    face, row = synthetic.synthesize_face(3, 11, SETTINGS, model)
    return face, row


def _face_mask(model, row) -> np.ndarray:
    """The closed face mesh rasterised with the row's own pose/scale/translation (independent of profiling)."""
    skin = synthetic.face_skin(model)
    verts = skin.close(synthetic.model_vertices(model, row["id_coeffs"], row["exp_coeffs"]))
    img = project(verts, float(row["scale"]), euler_to_matrix(np.asarray(row["pose"], np.float64)),
                  np.asarray(row["translation"], np.float64))
    return render.rasterize(img, skin.triangles, row["image_size"], row["image_size"]).mask


def _patch_mean(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return image[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2].reshape(-1, 3).astype(np.float64).mean(0)


def test_view_landmarks_are_where_the_model_puts_them_and_on_the_rendered_face(model, source):
    _, row = source
    poses = np.radians([[0.0, 80.0, 0.0], [-20.0, -45.0, 15.0], [30.0, 10.0, -25.0]])
    background = np.broadcast_to(MAGENTA, (128, 128, 3)).copy()
    rows = profiling.profile_views(row, model, 3, np.random.default_rng(0), background=background, poses=poses)
    assert len(rows) == 3
    lm_model = np.asarray(model.landmarks(row["id_coeffs"], row["exp_coeffs"]), np.float64)
    for view, pose in zip(rows, poses):
        np.testing.assert_allclose(view["pose"], pose, atol=1e-6)
        expected = project(lm_model, view["scale"], euler_to_matrix(pose), np.asarray(view["translation"], np.float64))
        np.testing.assert_allclose(np.asarray(view["landmarks_3d"]).reshape(68, 3), expected, atol=1e-3)
        np.testing.assert_allclose(expected[:, 2].mean(), 0.0, atol=1e-3)  # z centred, as records want
        image = records.decode_image(view["image"])
        mask = _face_mask(model, view)
        visible = np.asarray(view["landmarks_visible"])
        assert 20 <= visible.sum() <= 68
        pts = np.round(expected[visible, :2]).astype(int)
        near = np.zeros_like(mask)  # the mask grown by a pixel: rounding
        near[1:-1, 1:-1] = mask[1:-1, 1:-1] | mask[:-2, 1:-1] | mask[2:, 1:-1] | mask[1:-1, :-2] | mask[1:-1, 2:]
        assert near[pts[:, 1], pts[:, 0]].all(), "a visible landmark is off the face mesh"
        # The view's pixels there are the face, not the magenta scene behind it (up to a pixel:
        # points on the silhouette, the jawline or the lips in profile, sit on its feathered edge).
        not_scene = np.abs(image.astype(int) - MAGENTA.astype(int)).sum(-1) > 120
        assert not_scene[pts[:, 1], pts[:, 0]].mean() > 0.9
        grown = not_scene.copy()
        grown[1:-1, 1:-1] |= not_scene[:-2, 1:-1] | not_scene[2:, 1:-1] | not_scene[1:-1, :-2] | not_scene[1:-1, 2:]
        assert grown[pts[:, 1], pts[:, 0]].all()
        assert not_scene[mask].mean() > 0.95
        # Same person, same labels source; a synthetic frame of its own.
        assert view["subject_id"] == row["subject_id"] and view["parent_record_id"] == row["record_id"]
        assert view["record_id"].startswith(row["record_id"] + "/view")
        np.testing.assert_array_equal(view["id_coeffs"], row["id_coeffs"])
        np.testing.assert_allclose(view["crop_to_frame"], records.crop_transform(0, 0, 128, 128).reshape(-1))


def test_texture_moves_with_the_head(model, source):
    face, row = source
    src_img = face.image
    src_lm = np.asarray(row["landmarks_3d"]).reshape(68, 3)
    src_vis = np.asarray(row["landmarks_visible"])
    pose = np.asarray(row["pose"], np.float64)
    turned = pose + np.radians([0.0, 20.0 * (1 if pose[1] < 0 else -1), 0.0])
    out = profiling.profile_record(row, model, 2, np.random.default_rng(0), poses=np.stack([pose, turned]))
    assert out.reason is None and len(out.rows) == 2
    # The source pose reproduces the source crop on the face.
    same = records.decode_image(out.rows[0]["image"]).astype(np.float64)
    mask = face.rendering.mask
    assert np.abs(same[mask] - src_img[mask]).mean() < 6.0
    # Turned 20 degrees: at landmarks seen in both views the colour is the source's colour there,
    # much closer than the colour of other landmarks (the texture moved with the geometry).
    view = out.rows[1]
    img = records.decode_image(view["image"])
    lm = np.asarray(view["landmarks_3d"]).reshape(68, 3)
    both = src_vis & np.asarray(view["landmarks_visible"])
    both[:17] = False  # jawline points sit on the silhouette: their colour is half background
    assert both.sum() >= 30
    ids = np.flatnonzero(both)
    src_c = np.stack([_patch_mean(src_img, src_lm[i]) for i in ids])
    new_c = np.stack([_patch_mean(img, lm[i]) for i in ids])
    err = np.abs(new_c - src_c).mean(1)
    shuffled = np.abs(new_c - np.roll(src_c, 7, axis=0)).mean(1)
    assert np.median(err) < 10.0
    assert np.median(err) < 0.5 * np.median(shuffled)


def test_poses_cover_large_yaw_and_views_are_counted(model, source):
    _, row = source
    rng = np.random.default_rng(5)
    yaws = np.degrees(np.concatenate([profiling.sample_view_poses(rng, 10, np.radians([0.0, 10.0, 0.0]))[:, 1]
                                      for _ in range(20)]))
    assert np.all(np.abs(yaws) <= 90.0 + 1e-9)
    assert np.mean(np.abs(yaws) > 60) > 0.4  # the (60, 90] bucket is well covered
    assert np.abs(yaws).max() > 85 and np.mean(yaws > 0) > 0.5  # up to 90; favours the source's side
    poses = profiling.sample_view_poses(np.random.default_rng(1), 6, np.zeros(3), pitch_max_deg=40, roll_max_deg=30)
    assert np.all(np.abs(np.degrees(poses[:, 0])) <= 40) and np.all(np.abs(np.degrees(poses[:, 2])) <= 30)
    out = profiling.profile_record(row, model, 4, np.random.default_rng(2))
    assert len(out.rows) == 4 and [r["record_id"] for r in out.rows] == [f"{row['record_id']}/view{k:02d}" for k in range(4)]
    assert all(r["source"] == "profiled" for r in out.rows)
    assert out.figures["ms_per_view"] > 0


def test_records_that_cannot_be_profiled_are_skipped_with_a_reason(model, source):
    _, row = source
    rng = np.random.default_rng(0)
    no_coeffs = dict(row, id_coeffs=None, exp_coeffs=None)
    out = profiling.profile_record(no_coeffs, model, 3, rng)
    assert out.rows == [] and out.reason == "no_coefficients"
    assert profiling.profile_views(no_coeffs, model, 3, rng) == []
    assert profiling.skip_reason(dict(row, pose=None), model) == "no_coefficients"
    turned = dict(row, pose=np.radians([0.0, 60.0, 0.0]).astype(np.float32))
    assert profiling.profile_record(turned, model, 3, rng).reason == "yaw_out_of_range"
    shifted = dict(row, landmarks_2d=np.asarray(row["landmarks_2d"]) + 20.0)
    assert profiling.skip_reason(shifted, model) == "landmarks_disagree"
    assert profiling.skip_reason(dict(row, face_model="another-model"), model) == "face_model_mismatch"
    assert all(r in profiling.SKIP_REASONS for r in ("no_coefficients", "yaw_out_of_range", "landmarks_disagree"))


def test_rows_fit_the_face_record_schema(model, source):
    _, row = source
    rows = profiling.profile_views(dict(row, landmark_definition="upstream", quality=0.8), model, 2, np.random.default_rng(3))
    table = records.to_table(rows, "face_record")
    records.check_table(table, "face_record")
    assert table.num_rows == 2
    assert table.column("source").to_pylist() == ["profiled", "profiled"]
    assert table.column("landmark_definition").to_pylist() == ["upstream", "upstream"]
    assert table.column("parent_record_id").to_pylist() == [row["record_id"]] * 2
    sheet = profiling.profile_contact_sheet([row], [rows])
    assert sheet.shape[0] > 128 and sheet.shape[1] > 3 * 128


def test_head_proxy_is_closed_and_consistently_wound(model):
    head = profiling.head_mesh(model)
    tris = head.triangles.astype(np.int64)
    directed = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    # Closed (no inside of the mask can show) and every edge walked once each way (outward normals).
    undirected, counts = np.unique(np.sort(directed, 1), axis=0, return_counts=True)
    assert np.all(counts == 2)
    assert len(np.unique(directed, axis=0)) == len(directed)
    assert head.num_vertices == head.num_closed + head.num_rings * len(head.boundary) + 1
    # Mirror partners are an involution on the symmetric mean shape (up to a few ties).
    assert np.mean(head.mirror[head.mirror] == np.arange(head.num_vertices)) > 0.95


def test_a_fitted_real_photo_profiles(shared):
    import cv2

    from facepgn import faces
    from facepgn.facemodel import load_face_model

    model = load_face_model(None).truncated(20, 10).with_landmarks("upstream")
    rgb = cv2.cvtColor(cv2.imread(str(shared / "media" / "faces-wild" / "batchface" / "obama.jpg")), cv2.COLOR_BGR2RGB)
    detection = faces.FaceDetector().detect(rgb)[0]
    points = faces.LandmarkModel().predict(rgb, detection.box)
    record = profiling.fit_photo_record(rgb, points, model, "faces-wild/obama", size=96, steps=150)
    record["landmark_definition"] = "upstream"
    assert record["fit_residual"] < 0.05 and abs(np.degrees(record["pose"][1])) < 20
    out = profiling.profile_record(record, model, 3, np.random.default_rng(0))
    assert out.reason is None and len(out.rows) == 3
    records.check_table(records.to_table([record] + out.rows, "face_record"), "face_record")
    for row in out.rows:
        image = records.decode_image(row["image"])
        assert image.shape == (96, 96, 3) and row["subject_id"] == "faces-wild/obama"
        assert 0 < np.asarray(row["landmarks_visible"]).sum() <= 68


def test_a_profiled_sequence_has_exact_labels_shape_and_flow(model, source):
    import cv2

    _, row = source
    poses = profiling.sequence_poses(np.random.default_rng(4), 3)
    steps = np.degrees(np.diff(poses, axis=0))
    assert np.all((np.abs(steps[:, 1]) >= 4 - 1e-9) & (np.abs(steps[:, 1]) <= 10 + 1e-9)) and np.all(np.abs(steps[:, 0]) <= 3 + 1e-9)
    seq = profiling.profile_sequence(row, model, poses)
    assert seq.reason is None and len(seq.rows) == 3 and len(seq.pairs) == 2 == len(seq.valid)
    records.check_table(records.to_table(seq.rows, "face_record"), "face_record")
    records.check_table(records.to_table(seq.pairs, "frame_pair"), "frame_pair")
    assert [p["pair_id"] for p in seq.pairs] == [f"{row['record_id']}/seq/0/0-1", f"{row['record_id']}/seq/0/1-2"]
    ids, exps = np.asarray(row["id_coeffs"], np.float32), np.asarray(row["exp_coeffs"], np.float32)
    # The fitted mesh is the exact shape of each frame where exact_vertex_mask says so (not the
    # flattened ears, not the neck), and the labels are its landmark vertices.
    exact = profiling.exact_vertex_mask(model)
    assert 0.6 * model.num_vertices < exact.sum() < model.num_vertices
    true_verts = synthetic.model_vertices(model, ids, exps)
    src = profiling.prepare_source(row, model, records.decode_image(row["image"]))
    geos = []
    for frame, pose in zip(seq.rows, poses):
        geo = profiling.view_geometry(src, model, pose, ids, exps)
        geos.append(geo)
        posed = project(true_verts, float(frame["scale"]), euler_to_matrix(pose), np.asarray(frame["translation"], np.float64))
        np.testing.assert_allclose(geo.verts[: model.num_vertices][exact], posed[exact], atol=1e-3)
        lm = np.asarray(frame["landmarks_3d"]).reshape(68, 3)
        np.testing.assert_allclose(geo.verts[np.asarray(model.landmark_ids)], lm, atol=1e-3)
        np.testing.assert_allclose(frame["pose"], pose, atol=1e-6)
    for k, (pair, valid) in enumerate(zip(seq.pairs, seq.valid)):
        a = records.decode_image(pair["image_a"]).astype(np.float64)
        b = records.decode_image(pair["image_b"])
        flow = records.decode_flow(pair["flow"], 128)
        assert valid.mean() > 0.8
        # B warped back by the flow is A, on the head and on the surroundings that moved with it.
        back = warp_by_flow(b, flow).astype(np.float64)
        err, still = np.abs(back - a).mean(-1), np.abs(b.astype(np.float64) - a).mean(-1)
        head = geos[k].raster.mask & (geos[k].alpha >= 0.5)
        around = ~head & valid & (np.linalg.norm(flow, axis=-1) > 0.5)
        assert around.sum() > 200
        for region in (head & valid, around):
            assert err[region].mean() < 3.0 and err[region].mean() < 0.5 * still[region].mean()
        # Landmarks of A moved by the flow land on B's (the flow is the labels' motion).
        lm_a = np.asarray(seq.rows[k]["landmarks_3d"]).reshape(68, 3)
        lm_b = np.asarray(seq.rows[k + 1]["landmarks_3d"]).reshape(68, 3)
        seen = np.asarray(seq.rows[k]["landmarks_visible"]) & np.asarray(seq.rows[k + 1]["landmarks_visible"])
        seen[:17] = False  # the jawline sits on the silhouette, where the flow jumps
        pts = lm_a[seen, :2].astype(np.float32).reshape(-1, 1, 2)
        moved = np.stack([cv2.remap(flow[..., c], pts[..., 0], pts[..., 1], cv2.INTER_LINEAR)[:, 0] for c in (0, 1)], 1)
        miss = np.linalg.norm(lm_a[seen, :2] + moved - lm_b[seen, :2], axis=1)
        assert seen.sum() >= 30 and np.median(miss) < 0.1 and np.median(np.linalg.norm(lm_b - lm_a, axis=1)) > 1.0
    unfit = profiling.profile_sequence(dict(row, id_coeffs=None), model, poses)
    assert unfit.reason == "no_coefficients" and unfit.rows == [] and unfit.pairs == []
