"""AFLW2000-3D / 300W-LP readers against the shared samples and the standard 3DDFA arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io

from facepgn import labelled, records
from facepgn.cli import main
from facepgn.errors import InputError
from facepgn.evaluation import match_standard_rows


@pytest.fixture(scope="module")
def aflw_dir(shared) -> Path:
    return shared / "media" / "aflw2000-3d"


@pytest.fixture(scope="module")
def arrays_dir(shared) -> Path:
    return shared / "media" / "aflw2000-3d-arrays"


@pytest.fixture(scope="module")
def lp_image(shared) -> Path:
    return shared / "media" / "300w-lp" / "IBUG_image_008_1_0.jpg"


def _link_pair(src_jpg: Path, dest_dir: Path, name: str | None = None) -> Path:
    """Symlink a shared jpg + mat pair into ``dest_dir`` (never copies shared data into the repo)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = name or src_jpg.stem
    (dest_dir / f"{stem}.jpg").symlink_to(src_jpg)
    (dest_dir / f"{stem}.mat").symlink_to(src_jpg.with_suffix(".mat"))
    return dest_dir / f"{stem}.jpg"


def test_all_shared_mats_parse_and_map_to_standard_rows_in_filename_order(aflw_dir, arrays_dir):
    mats = sorted(aflw_dir.glob("*.mat"))
    assert len(mats) == 503
    landmarks = np.stack([labelled.landmarks_from_mat(labelled.read_mat(m), str(m)) for m in mats])
    assert landmarks.shape == (503, 68, 3)
    pts68 = np.load(arrays_dir / "AFLW2000-3D.pts68.npy")
    assert pts68.shape == (2000, 3, 68)
    rows = match_standard_rows(landmarks, pts68)
    assert rows is not None
    # each .mat equals its row (float32 rounding), rows follow the sorted filename order of the
    # full 2000-image list, and the README's anchor holds
    np.testing.assert_allclose(landmarks, pts68[rows].transpose(0, 2, 1), atol=1e-3)
    assert np.all(np.diff(rows) > 0)
    names = [m.stem for m in mats]
    assert rows[names.index("image00050")] == 28
    assert rows.min() >= 0 and rows.max() < 2000
    # the standard yaw array is Pose_Para's yaw in degrees, unwrapped
    yaw = np.load(arrays_dir / "AFLW2000-3D.pose.npy")
    for i in (0, names.index("image00050"), 502):
        pose_para = labelled.read_mat(mats[i])["Pose_Para"].reshape(-1)
        assert yaw[rows[i]] == pytest.approx(np.degrees(pose_para[1]), abs=1e-3)


def test_pt3d_68_is_image_pixels_with_z_towards_the_camera(aflw_dir):
    faces = labelled.read_faces([str(p) for p in sorted(aflw_dir.glob("*.jpg"))[:40]])
    inside = 0
    for f in faces:
        assert f.image.shape == (450, 450, 3) and f.has_3d
        xy = f.landmarks[:, :2]
        inside += bool(np.all((xy >= 0) & (xy < 450)))
        if abs(f.yaw_degrees) < 30:
            # nose tip (30) nearer the camera than the jaw contour (0..16)
            z = f.landmarks[:, 2]
            assert z[30] > z[:17].mean() + 0.1 * (xy[:, 0].max() - xy[:, 0].min())
    assert inside >= 30  # most faces lie fully inside the 450x450 image


def test_aflw_face_record_crop_and_landmarks(aflw_dir):
    face = labelled.read_face(str(aflw_dir / "image00050.jpg"))
    assert face.source == "aflw2000-3d" and face.subject_id == "aflw2000-3d/image00050"
    assert face.record_id == "aflw2000-3d/image00050"
    np.testing.assert_allclose(face.pose, [-0.0813944, 0.01638993, 0.09836138], atol=1e-6)
    row = labelled.face_record(face, image_size=96, margin=0.25)
    crop = records.decode_image(row["image"])
    assert crop.shape == (96, 96, 3)
    lm2 = np.asarray(row["landmarks_2d"]).reshape(68, 2)
    lm3 = np.asarray(row["landmarks_3d"]).reshape(68, 3)
    np.testing.assert_allclose(lm3[:, :2], lm2)
    assert abs(lm3[:, 2].mean()) < 1e-3
    # the landmarks span 1/1.5 of the crop, centred
    extent = lm2.max(0) - lm2.min(0)
    assert extent.max() == pytest.approx(96 / 1.5, rel=1e-4)
    np.testing.assert_allclose((lm2.max(0) + lm2.min(0)) / 2, [48, 48], atol=1e-3)
    # crop_to_frame maps back to the image; z is scaled like x, y
    back = records.apply_affine(row["crop_to_frame"], lm3)
    np.testing.assert_allclose(back[:, :2], face.landmarks[:, :2], atol=2e-3)
    z = face.landmarks[:, 2] - face.landmarks[:, 2].mean()
    np.testing.assert_allclose(back[:, 2], z, atol=2e-3)
    # the crop shows the face: the image sampled at a landmark through the affine matches the crop
    for k in (30, 36, 48):
        cx, cy = np.round(lm2[k]).astype(int)
        fx, fy = np.round(records.apply_affine(row["crop_to_frame"], np.array([[cx, cy]], float))[0]).astype(int)
        assert np.abs(crop[cy, cx].astype(int) - face.image[fy, fx].astype(int)).max() < 60
    np.testing.assert_allclose(row["pose"], face.pose, atol=1e-6)  # already canonical
    table = records.to_table([row], "face_record")
    records.check_table(table, "face_record")
    assert table.column("face_model")[0].as_py() == labelled.BFM_COEFFS_MODEL
    assert len(table.column("id_coeffs")[0].as_py()) == 199 and len(table.column("exp_coeffs")[0].as_py()) == 29


def test_record_pose_is_canonical_and_the_same_rotation(aflw_dir):
    from facepgn.geometry import euler_to_matrix

    face = labelled.read_face(str(aflw_dir / "image00150.jpg"))  # published yaw 119 deg, pitch -320 deg
    assert face.yaw_degrees == pytest.approx(118.9, abs=0.1)
    pose = labelled.face_record(face, image_size=32)["pose"]
    assert abs(pose[1]) <= np.pi / 2 and np.all(np.abs(pose) <= np.pi)
    np.testing.assert_allclose(euler_to_matrix(pose.astype(np.float64)), euler_to_matrix(face.pose.astype(np.float64)), atol=1e-6)


def test_300w_lp_reader_subject_and_2d_record(lp_image):
    face = labelled.read_face(str(lp_image))
    assert face.source == "300w-lp" and not face.has_3d
    assert face.subject_id == "300w-lp/IBUG_image_008_1"  # the _0 augmentation suffix dropped
    assert face.record_id == "300w-lp/300w-lp/IBUG_image_008_1_0"
    assert labelled.subject_of("AFW_1051618982_1_17", "300w-lp") == labelled.subject_of("AFW_1051618982_1_0", "300w-lp")
    row = labelled.face_record(face)
    assert row["landmarks_3d"] is None and row["pose"].shape == (3,)
    back = records.apply_affine(row["crop_to_frame"], np.asarray(row["landmarks_2d"]).reshape(68, 2))
    np.testing.assert_allclose(back, face.landmarks, atol=2e-3)
    records.check_table(records.to_table([row], "face_record"), "face_record")


def test_convert_folder_writes_shards_records_bad_items_and_resumes(tmp_path, aflw_dir, lp_image):
    data = tmp_path / "data"
    for jpg in sorted(aflw_dir.glob("*.jpg"))[:5]:
        _link_pair(jpg, data / "aflw")
    _link_pair(lp_image, data / "lp")
    bad = data / "aflw" / "image99999"
    (bad.with_suffix(".jpg")).symlink_to(aflw_dir / "image00050.jpg")
    scipy.io.savemat(bad.with_suffix(".mat"), {"Pose_Para": np.zeros((1, 7))})
    out = tmp_path / "out"
    summary = labelled.convert_folder(str(data), str(out), image_size=64, shard_size=4)
    assert summary["images"] == 7 and summary["records_written"] == 6
    assert len(summary["errors"]) == 1 and summary["errors"][0]["path"].endswith("image99999.mat")
    assert "pt3d_68" in summary["errors"][0]["reason"]
    assert summary["shards"] == ["part-00000.parquet", "part-00001.parquet"]
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("part-*.parquet"))])
    records.check_table(table, "face_record")
    assert table.num_rows == 6
    assert sorted(set(table.column("source").to_pylist())) == ["300w-lp", "aflw2000-3d"]
    assert set(table.column("image_size").to_pylist()) == {64}
    again = labelled.convert_folder(str(data), str(out), image_size=64, shard_size=4)
    assert again["shards_skipped_existing"] == 2 and again["records_written"] == 0
    assert not [p for p in os.listdir(out) + os.listdir(out / "data") if ".tmp-" in p]


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, aflw_dir):
    no_landmarks = tmp_path / "nolm" / "image00001"
    no_landmarks.parent.mkdir()
    (no_landmarks.with_suffix(".jpg")).symlink_to(aflw_dir / "image00050.jpg")
    # AFLW-style pt2d is 21 points: not usable as 68 landmarks
    scipy.io.savemat(no_landmarks.with_suffix(".mat"), {"pt2d": np.zeros((2, 21)), "Pose_Para": np.zeros((1, 7))})
    with pytest.raises(InputError) as err:
        labelled.read_face(str(no_landmarks.with_suffix(".jpg")))
    assert str(no_landmarks.with_suffix(".mat")) in str(err.value) and "\n" not in str(err.value)

    bad_image = tmp_path / "badimg" / "image00002"
    bad_image.parent.mkdir()
    bad_image.with_suffix(".jpg").write_bytes(b"not a jpeg at all")
    (bad_image.with_suffix(".mat")).symlink_to(aflw_dir / "image00050.mat")
    with pytest.raises(InputError, match="image00002.jpg: not a readable image"):
        labelled.read_face(str(bad_image.with_suffix(".jpg")))

    text = tmp_path / "text" / "image00003"
    text.parent.mkdir()
    (text.with_suffix(".jpg")).symlink_to(aflw_dir / "image00050.jpg")
    scipy.io.savemat(text.with_suffix(".mat"), {"pt3d_68": np.array(["x" * 68] * 3), "Pose_Para": np.zeros((1, 7))})
    with pytest.raises(InputError, match="image00003.mat: pt3d_68 is not numeric"):
        labelled.read_face(str(text.with_suffix(".jpg")))

    corrupt = tmp_path / "corrupt.mat"
    corrupt.write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(200))
    with pytest.raises(InputError, match="corrupt.mat: not a readable MATLAB"):
        labelled.read_mat(str(corrupt))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no labelled faces found"):
        labelled.list_labelled_images(str(empty))


def test_cli_convert_bad_input_exit_2_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["labelled", "convert", "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(empty) in err and err.startswith("facepgn: error:")
    assert main(["labelled", "convert", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_cli_convert_writes_records(tmp_path, aflw_dir, capsys):
    data = tmp_path / "data"
    for jpg in sorted(aflw_dir.glob("*.jpg"))[:3]:
        _link_pair(jpg, data)
    out = tmp_path / "out"
    assert main(["labelled", "convert", "--data", str(data), "--out", str(out), "--set", "image_size=64", "executor=local"]) == 0
    assert "3 records" in capsys.readouterr().out
    table = pq.read_table(out / "data" / "part-00000.parquet")
    assert table.num_rows == 3
    img = records.decode_image(table.column("image")[0].as_py())
    assert img.shape == (64, 64, 3)


def test_s3_folder_to_s3_shards_and_evaluation(s3_bucket, aflw_dir, lp_image):
    from facepgn import evaluation, storage

    for jpg in [aflw_dir / "image00002.jpg", aflw_dir / "image00050.jpg", lp_image]:
        for path in (jpg, jpg.with_suffix(".mat")):
            storage.atomic_write_bytes(f"{s3_bucket}/data/{jpg.parent.name}/{path.name}", path.read_bytes())
    summary = labelled.convert_folder(f"{s3_bucket}/data", f"{s3_bucket}/records", image_size=64)
    assert summary["records_written"] == 3 and not summary["errors"]
    shard = storage.read_bytes(f"{s3_bucket}/records/data/part-00000.parquet")
    table = pq.read_table(pa.BufferReader(shard))
    records.check_table(table, "face_record")
    assert sorted(table.column("subject_id").to_pylist()) == [
        "300w-lp/IBUG_image_008_1", "aflw2000-3d/image00002", "aflw2000-3d/image00050"]
    assert storage.exists(f"{s3_bucket}/records/summary.json")
    # the evaluation reads the same s3 folder (the 2D-only 300W-LP face is left out: aflw subfolder)
    plan = evaluation.plan_aflw2000(f"{s3_bucket}/data/aflw2000-3d", image_size=64)
    assert plan.standard_rows.tolist() == [0, 28]


def test_records_feed_the_training_batches(tmp_path, aflw_dir, lp_image):
    """The shards load with the trainer's reader; BFM coefficients are not mistaken for the ICT model's."""
    from facepgn.train import data as train_data

    src = tmp_path / "src"
    for jpg in [aflw_dir / "image00002.jpg", aflw_dir / "image00050.jpg", lp_image]:
        _link_pair(jpg, src)
    labelled.convert_folder(str(src), str(tmp_path / "rec"), image_size=64)
    table = train_data.read_records([str(tmp_path / "rec")], "face_record")
    batch = train_data.face_batch_to_tensors(table, 64, 40, 20, "ict-face-area")
    assert tuple(batch["images"].shape) == (3, 3, 64, 64)
    assert batch["has_3d"].tolist() == [0.0, 1.0, 1.0]  # sorted: 300W-LP sample first (2D only)
    assert batch["has_coeffs"].sum() == 0
    np.testing.assert_allclose(batch["landmarks_2d"][1].numpy(), np.asarray(table.column("landmarks_2d")[1].as_py()).reshape(68, 2), atol=1e-4)


def test_convert_with_the_evaluation_roi_crops(shared, tmp_path):
    """box=roi: validation records cut exactly as `facepgn evaluate aflw2000` crops (3DDFA roi boxes)."""
    from facepgn import evaluation
    from facepgn.train.data import read_records

    data = shared / "media" / "aflw2000-3d"
    labelled.convert_folder(str(data), str(tmp_path / "roi"), box="roi", limit=6)
    table = read_records([str(tmp_path / "roi")], "face_record")
    plan = evaluation.plan_aflw2000(str(data), image_size=128, box="roi", limit=6)
    assert table.num_rows == 6
    for i, row in enumerate(table.to_pylist()):
        affine = np.asarray(row["crop_to_frame"]).reshape(2, 3)
        np.testing.assert_allclose(affine, plan.crop_to_frame[i], rtol=1e-5, atol=1e-3)
        crop = records.decode_image(row["image"])
        expected = evaluation.crop_batch([labelled.read_image(plan.image_paths[i])], [plan.crop_to_frame[i]], 128)[0]
        assert np.abs(crop.astype(int) - expected.astype(int)).mean() < 3  # JPEG
        back = records.apply_affine(affine, np.asarray(row["landmarks_2d"]).reshape(68, 2))
        np.testing.assert_allclose(back, plan.gt[i][:, :2], atol=0.05)
