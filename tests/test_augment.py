"""Geometric augmentation (facepgn.augment): the mirror relabelling, labels that move with the image,
the exact pose transform, crop_to_frame, and its use in the training batches."""

from __future__ import annotations

import glob

import cv2
import numpy as np
import pytest
import torch

from facepgn import augment, labelled, records, synthetic
from facepgn.augment import FLIP_PERMUTATION, AugmentSettings, similarity
from facepgn.config import TrainConfig
from facepgn.geometry import euler_to_matrix, project, similarity_fit
from facepgn.train import data as train_data

SIMILARITIES = [
    dict(scale=1.12, angle_deg=23.0, shift=(5.0, -7.0), flip=False),
    dict(scale=0.86, angle_deg=-31.0, shift=(-4.0, 3.0), flip=False),
    dict(scale=1.0, angle_deg=0.0, shift=(0.0, 0.0), flip=True),
    dict(scale=0.9, angle_deg=17.0, shift=(6.0, 2.0), flip=True),
]
LABEL_KEYS = ("landmarks_2d", "landmarks_3d", "landmarks_visible", "pose", "scale", "translation", "crop_to_frame")


@pytest.fixture(scope="module")
def faces():
    """Three synthetic faces (exact labels) with their face model."""
    settings = synthetic.FaceSettings(size=128)
    model = synthetic.face_model_for(settings)
    return model, [synthetic.synthesize_face(i, 11, settings, model) for i in (0, 1, 2)]


def _labels(row: dict) -> dict:
    return {k: np.asarray(row[k]) if k != "scale" else row[k] for k in LABEL_KEYS} | {"has_coeffs": True}


def _rigid_residual(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    s, R, t = similarity_fit(src, dst)
    return np.linalg.norm(s * src @ R.T + t - dst, axis=1)


def test_flip_permutation_pairs_each_point_with_its_mirror_partner_on_real_faces(shared):
    perm = FLIP_PERMUTATION
    assert sorted(perm.tolist()) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))  # an involution
    assert set(np.flatnonzero(perm == np.arange(68))) == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}  # the midline
    # On labelled faces (AFLW2000-3D pt3d_68): the mirrored face with its points relabelled is the
    # same face moved rigidly (faces are nearly symmetric), so a similarity fits it closely.
    # Mirroring without relabelling, or with one pair of partners wrong, does not fit.
    wrong = perm.copy()
    wrong[[36, 39]] = wrong[[39, 36]]  # outer and inner eye corner partners swapped
    checked = 0
    for mat_path in sorted(glob.glob(str(shared / "media" / "aflw2000-3d" / "*.mat"))):
        mat = labelled.read_mat(mat_path)
        if abs(np.degrees(mat["Pose_Para"].reshape(-1)[1])) > 30:
            continue
        pts = labelled.landmarks_from_mat(mat, mat_path).astype(np.float64)
        size = float(np.ptp(pts[:, :2], axis=0).max())
        mirrored = pts * [-1.0, 1.0, 1.0]
        good = _rigid_residual(pts, mirrored[perm]) / size
        assert good.max() < 0.08 and np.median(good) < 0.03, (mat_path, good.max())
        assert np.median(_rigid_residual(pts, mirrored) / size) > 0.15
        assert (_rigid_residual(pts, mirrored[wrong]) / size).max() > 0.12
        checked += 1
        if checked == 10:
            break
    assert checked == 10


def test_similarity_maps_points_like_warp_affine():
    # A one-pixel dot moves where transform_points says (pixel centres at integers).
    img = np.zeros((64, 64, 3), np.uint8)
    img[20, 40] = 255
    for kw in SIMILARITIES:
        sim = similarity(64, **{**kw, "shift": tuple(np.asarray(kw["shift"]) / 2)})
        warped = augment.warp_image(cv2.GaussianBlur(img, (0, 0), 1.5), sim, "replicate")[..., 0].astype(np.float64)
        ys, xs = np.mgrid[:64, :64]
        peak = np.array([(xs * warped).sum(), (ys * warped).sum()]) / warped.sum()
        np.testing.assert_allclose(peak, augment.transform_points(np.array([[40.0, 20.0]]), sim)[0], atol=0.15)
        assert sim.flipped == kw["flip"] and abs(sim.scale - kw["scale"]) < 1e-9
    # Borders are filled from the image, never black.
    grey = np.full((64, 64, 3), 128, np.uint8)
    for border in ("reflect", "replicate"):
        assert augment.warp_image(grey, similarity(64, 0.7, 30.0, (8.0, 8.0)), border).min() >= 120


def test_labels_stay_on_the_warped_face_and_pose_reproduces_them(faces):
    model, items = faces
    for (face, row), kw in zip(items * 2, SIMILARITIES * 2):
        sim = similarity(128, **kw)
        image, lab = augment.augment_record(face.image, _labels(row), sim)
        assert image.shape == face.image.shape
        # The visible landmarks sit on the warped silhouette of the rendered face.
        mask = augment.warp_image(face.rendering.mask.astype(np.uint8) * 255, sim, "replicate") > 127
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        vis = lab["landmarks_visible"]
        px = np.round(lab["landmarks_2d"][vis]).astype(int)
        assert vis.sum() >= 20 and mask[px[:, 1], px[:, 0]].all()
        # Points moved out of the crop are not visible; the rest keep their (relabelled) flag.
        inside = augment.inside_crop(lab["landmarks_2d"], 128)
        np.testing.assert_array_equal(vis, augment.mirror_order(row["landmarks_visible"], sim) & inside)
        np.testing.assert_allclose(lab["landmarks_2d"], lab["landmarks_3d"][:, :2])
        assert abs(lab["landmarks_3d"][:, 2].mean()) < 1e-3  # z stays centred
        # Pose + coefficients through the face model give the new labels exactly: the same face in a
        # new pose, or (mirror) the mirrored face, whose landmark i is the mirror of landmark perm[i].
        X = model.landmarks(np.asarray(row["id_coeffs"]), np.asarray(row["exp_coeffs"])).astype(np.float64)
        if sim.flipped:
            X = X[FLIP_PERMUTATION] * [-1.0, 1.0, 1.0]
        R = euler_to_matrix(lab["pose"].astype(np.float64))
        np.testing.assert_allclose(project(X, lab["scale"], R, lab["translation"].astype(np.float64)), lab["landmarks_3d"], atol=2e-3)
        assert lab["has_coeffs"] == (not sim.flipped)
        if kw["flip"] and kw["angle_deg"] == 0:  # a pure mirror: pitch kept, yaw and roll negated
            np.testing.assert_allclose(lab["pose"], np.asarray(row["pose"]) * [1, -1, -1], atol=1e-5)


def test_face_rendered_in_the_transformed_pose_is_the_warped_render(faces):
    # Independent of the label arithmetic: re-render the face from the transformed pose labels.
    model, items = faces
    face, row = items[1]
    flat = np.full((len(face.verts), 3), 0.6, np.float32)
    params = synthetic.FaceParams(np.asarray(row["id_coeffs"]), np.asarray(row["exp_coeffs"]), np.asarray(row["pose"]),
                                  row["scale"], np.asarray(row["translation"]))
    before = synthetic.render_face(model, params, flat, 128, 128).rendering.mask
    for kw in SIMILARITIES[:2]:
        sim = similarity(128, **kw)
        _, lab = augment.augment_record(face.image, _labels(row), sim)
        moved = synthetic.FaceParams(params.id_coeffs, params.exp_coeffs, lab["pose"], lab["scale"], lab["translation"])
        after = synthetic.render_face(model, moved, flat, 128, 128).rendering.mask
        warped = augment.warp_image(before.astype(np.uint8) * 255, sim, "replicate") > 127
        # compare where the new crop shows the old one (not the border fill)
        ys, xs = np.mgrid[:128, :128]
        old = augment.transform_points(np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64),
                                       augment.Similarity(cv2.invertAffineTransform(sim.matrix), 128))
        seen = np.all((old > 0.5) & (old < 126.5), axis=1).reshape(128, 128)
        iou = (after & warped & seen).sum() / ((after | warped) & seen).sum()
        assert iou > 0.96, iou


def test_crop_to_frame_still_maps_crop_pixels_to_the_same_frame_points(shared):
    image = shared / "media" / "aflw2000-3d" / "image00002.jpg"
    face = labelled.read_face(str(image))
    rec = labelled.face_record(face, 128)
    crop = records.decode_image(rec["image"])
    frame_lm = face.landmarks[:, :2]
    labels = {"landmarks_2d": rec["landmarks_2d"], "crop_to_frame": rec["crop_to_frame"]}
    for kw in SIMILARITIES:
        sim = similarity(128, **kw)
        new_crop, lab = augment.augment_record(crop, labels, sim)
        c2f = np.asarray(lab["crop_to_frame"]).reshape(2, 3)
        expected = frame_lm[FLIP_PERMUTATION] if sim.flipped else frame_lm
        np.testing.assert_allclose(records.apply_affine(c2f, lab["landmarks_2d"]), expected, atol=1e-2)
        # Pixels of the new crop show the frame at crop_to_frame of their position.
        resampled = cv2.warpAffine(face.image, c2f.astype(np.float64), (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        ys, xs = np.mgrid[:128, :128]
        old = augment.transform_points(np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64),
                                       augment.Similarity(cv2.invertAffineTransform(sim.matrix), 128))
        interior = (np.all((old > 2) & (old < 125), axis=1)).reshape(128, 128)  # not the border fill
        err = np.abs(new_crop.astype(np.float64) - resampled)[interior].mean()
        shuffled = np.abs(new_crop.astype(np.float64) - np.roll(resampled, 6, axis=1))[interior].mean()
        assert err < 8 and err < 0.5 * shuffled, (err, shuffled)


def _table(items) -> "records.pa.Table":
    return records.to_table([row for _, row in items], "face_record")


def test_training_batches_augment_reproducibly_with_labels_on_the_image(faces):
    model, items = faces
    table = _table(items * 2)
    geo = AugmentSettings(flip_prob=0.5)

    def batch(seed, **kw):
        return train_data.face_batch_to_tensors(table, 128, 40, 20, model.name, augment=True,
                                                generator=torch.Generator().manual_seed(seed), geometric=geo, **kw)

    a, b, c = batch(3), batch(3), batch(4)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["images"], c["images"]) and not torch.equal(a["landmarks_2d"], c["landmarks_2d"])
    plain = train_data.face_batch_to_tensors(table, 128, 40, 20, model.name)
    assert plain["has_coeffs"].all()
    flipped = a["has_coeffs"] == 0
    assert 0 < flipped.sum() < len(flipped), a["has_coeffs"]  # seed 3 gives both kinds
    for i, (face, row) in enumerate(items * 2):
        X = model.landmarks(np.asarray(row["id_coeffs"]), np.asarray(row["exp_coeffs"])).astype(np.float64)
        old = np.asarray(row["landmarks_2d"]).reshape(68, 2)
        if flipped[i]:
            X, old = X[FLIP_PERMUTATION] * [-1.0, 1.0, 1.0], old[FLIP_PERMUTATION]
        R = euler_to_matrix(a["pose"][i].double().numpy())
        lm3 = a["landmarks_3d"][i].double().numpy()
        np.testing.assert_allclose(project(X, float(a["scale"][i]), R, a["translation"][i].double().numpy()), lm3, atol=2e-2)
        # The image moved like the labels: warp the original by the affine the landmarks moved by.
        ones = np.concatenate([old, np.ones((68, 1))], 1)
        affine = np.linalg.lstsq(ones, lm3[:, :2], rcond=None)[0].T
        expected = cv2.warpAffine(face.image, affine, (128, 128), borderMode=cv2.BORDER_REFLECT_101)
        got = (a["images"][i].permute(1, 2, 0).numpy() * 255).astype(np.float64)
        corr = lambda u, v: np.corrcoef(u.reshape(-1), v.reshape(-1))[0, 1]  # noqa: E731 (colour jitter is affine)
        assert corr(got, expected) > 0.93 and corr(got, expected) > corr(got, face.image) + 0.1, i
    # Without geometric settings, augment is the colour jitter alone: labels untouched.
    colour_only = train_data.face_batch_to_tensors(table, 128, 40, 20, model.name, augment=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(colour_only["landmarks_3d"], plain["landmarks_3d"]) and not torch.equal(colour_only["images"], plain["images"])


def test_both_training_loops_get_the_configured_augmentation(synthetic_faces_dir):
    from facepgn.train.datasets import FaceCollate, mixed_batches

    cfg = TrainConfig.model_validate({"model": {"input_size": 64}, "data": {
        "labelled": [synthetic_faces_dir], "labelled_batch_size": 4, "pair_batch_size": 0, "aug_flip_prob": 1.0}})
    settings = train_data.augment_settings(cfg.data)
    assert settings == AugmentSettings(scale=(0.85, 1.15), rotate_deg=20.0, shift=0.06, flip_prob=1.0, border="reflect")
    assert train_data.augment_settings(cfg.data.model_copy(update={"geometric_augment": False})) is None
    assert train_data.augment_settings(cfg.data.model_copy(update={"augment": False})) is None
    faces = next(mixed_batches(cfg, "ict-face-area"))["faces"]
    assert faces["images"].shape == (4, 3, 64, 64) and not faces["has_coeffs"].any()  # all mirrored
    # The Ray trainer's collate function (what its prefetch threads run) augments the same way.
    from facepgn.config import DistributedTrainConfig

    table = train_data.read_records([synthetic_faces_dir], "face_record").slice(0, 3)
    numpy_batch = {name: np.array([np.asarray(v) if isinstance(v, list) else v for v in table.column(name).to_pylist()], dtype=object)
                   for name in table.column_names}
    dcfg = DistributedTrainConfig.model_validate({"model": {"input_size": 64}, "data": {"aug_flip_prob": 1.0}})
    collated = FaceCollate(dcfg, "ict-face-area", 0)(numpy_batch)
    assert not collated.tensors["has_coeffs"].any()
    dcfg.data.augment = False
    assert FaceCollate(dcfg, "ict-face-area", 0)(numpy_batch).tensors["has_coeffs"].all()
