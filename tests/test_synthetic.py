"""Synthetic labelled faces, videos and exact-flow frame pairs: schema, determinism, ground truth."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from facepgn import records, synthetic
from facepgn.cli import main
from facepgn.facemodel import resolve_landmark_definition
from facepgn.flow import warp_by_flow
from facepgn.geometry import euler_to_matrix, fit_pose, project, rotation_angle_between


def _read_rows(folder: str) -> list[dict]:
    rows = []
    for path in sorted(Path(folder).glob("part-*.parquet")):
        table = pq.read_table(path)
        records.check_table(table, "face_record", str(path))
        assert table.schema.equals(records.FACE_RECORD_SCHEMA, check_metadata=False)
        rows += table.to_pylist()
    return rows


def test_face_records_validate_and_cover_yaw_buckets(synthetic_faces_dir):
    rows = _read_rows(synthetic_faces_dir)
    assert len(rows) == 64 and len({r["record_id"] for r in rows}) == 64
    yaw = np.degrees(np.abs([r["pose"][1] for r in rows]))
    buckets = np.histogram(yaw, bins=[0, 30, 60, 90.001])[0]
    assert (buckets >= 12).all(), buckets
    model = synthetic.face_model_for(synthetic.FaceSettings())
    for r in rows[:16]:
        img = records.decode_image(r["image"])
        assert img.shape == (128, 128, 3) and r["image_size"] == 128
        lm3 = np.asarray(r["landmarks_3d"]).reshape(68, 3)
        vis = np.asarray(r["landmarks_visible"])
        assert abs(lm3[:, 2].mean()) < 1e-3  # z centred
        np.testing.assert_allclose(np.asarray(r["landmarks_2d"]).reshape(68, 2), lm3[:, :2])
        assert ((lm3[:, :2] > -5) & (lm3[:, :2] < 133)).all()
        assert vis.sum() >= 20  # even a profile shows about half (occluders hide a few more)
        assert len(r["id_coeffs"]) == 40 and len(r["exp_coeffs"]) == 20 and r["face_model"] == model.name
        assert r["landmark_definition"] == resolve_landmark_definition(model, "auto")
        assert 0.62 * 128 - 1 <= np.ptp(lm3[:, :2], axis=0).max() <= 0.80 * 128 + 1  # the evaluation crops' fill
        # Labels are the face model posed by the stored parameters...
        R = euler_to_matrix(np.asarray(r["pose"], np.float64))
        lm_model = model.landmarks(np.asarray(r["id_coeffs"]), np.asarray(r["exp_coeffs"])).astype(np.float64)
        np.testing.assert_allclose(project(lm_model, r["scale"], R, np.asarray(r["translation"], np.float64)), lm3, atol=1e-2)
        # ... so the closed-form pose fit on them recovers the pose.
        s, R_fit, _ = fit_pose(lm_model, lm3.astype(np.float64))
        assert np.degrees(rotation_angle_between(R_fit, R)) < 0.1 and abs(s - r["scale"]) < 1e-3 * r["scale"]


def test_faces_deterministic_by_seed_whatever_the_workers(synthetic_faces_dir, tmp_path):
    rows = _read_rows(synthetic_faces_dir)
    settings = synthetic.FaceSettings(size=128)
    _, again = synthetic.synthesize_face(5, 0, settings)
    assert again["image"] == rows[5]["image"]
    _, other = synthetic.synthesize_face(5, 1, settings)
    assert other["image"] != rows[5]["image"]
    # Two processes, other shard sizes: the same faces.
    summary = synthetic.generate_faces(str(tmp_path), 6, seed=0, settings=settings, rows_per_shard=3, workers=2)
    assert summary["written"] == 6
    parallel = _read_rows(str(tmp_path))
    assert [r["image"] for r in parallel] == [r["image"] for r in rows[:6]]
    # A rerun resumes: nothing left to write.
    rerun = synthetic.generate_faces(str(tmp_path), 6, seed=0, settings=settings, rows_per_shard=3, workers=2)
    assert rerun["written"] == 0 and rerun["skipped_existing"] == 6


def test_exact_flow_pair_warps_b_back_onto_a():
    for seed in (0, 1):
        pair = synthetic.render_pair(seed, size=128)
        mask_a = pair.face_a.rendering.mask
        assert pair.valid.sum() > 0.7 * mask_a.sum()
        assert not pair.valid[~mask_a].any()
        moved = np.linalg.norm(pair.flow[pair.valid], axis=-1).mean()
        assert moved > 1.0  # the pair really moves
        warped = warp_by_flow(pair.image_b, pair.flow).astype(np.float32)
        err = np.abs(warped - pair.image_a)[pair.valid].mean()
        unwarped = np.abs(pair.image_b.astype(np.float32) - pair.image_a)[pair.valid].mean()
        assert err < 3.0 and err < 0.35 * unwarped, (err, unwarped)
        # The flow at landmark pixels moves them onto their positions in B.
        lm_a, lm_b = pair.face_a.landmarks_3d, pair.face_b.landmarks_3d
        ok = pair.face_a.landmarks_visible & pair.face_b.landmarks_visible
        px = np.round(lm_a[ok, :2]).astype(int)
        moved_to = px + pair.flow[px[:, 1], px[:, 0]]
        assert np.median(np.linalg.norm(moved_to - lm_b[ok, :2], axis=1)) < 1.0


def test_synthetic_pair_rows_fit_the_frame_pair_schema():
    rows, gt = synthetic.synthetic_pair_rows(2, seed=3, size=64)
    table = records.to_table(rows, "frame_pair")
    records.check_table(table, "frame_pair")
    row = table.to_pylist()[1]
    np.testing.assert_allclose(records.decode_flow(row["flow"], 64), gt["flow"][1], atol=0.02)
    assert records.decode_image(row["image_a"]).shape == (64, 64, 3)
    assert gt["valid"].shape == (2, 64, 64) and gt["landmarks_3d_b"].shape == (2, 68, 3)


def test_video_decodes_and_ground_truth_aligns(tmp_path):
    import decord

    settings = synthetic.VideoSettings(frames=12, size=160, face_px=(60.0, 70.0))
    summary = synthetic.generate_videos(str(tmp_path), 1, seed=0, settings=settings)
    video = tmp_path / "synthetic-0000.mp4"
    assert summary["files"] == [str(video)]
    reader = decord.VideoReader(str(video))
    assert len(reader) == 12 and abs(reader.get_avg_fps() - 25) < 0.5
    decoded = reader.get_batch(list(range(12))).asnumpy()
    with np.load(tmp_path / "synthetic-0000.gt.npz") as npz:
        gt = {k: npz[k] for k in npz.files}
    assert gt["landmarks_2d"].shape == (12, 68, 2) and gt["pose"].shape == (12, 3) and gt["exp_coeffs"].shape[0] == 12
    frames, _ = synthetic.synthesize_video(0, 0, settings)
    psnr = [cv2.PSNR(d, f) for d, f in zip(decoded, frames)]
    assert min(psnr) > 24, psnr  # frame i of the file is frame i of the ground truth
    # A real face detector finds the synthetic face where the ground truth says it is.
    from facepgn.paths import resolve_asset

    detector = cv2.FaceDetectorYN.create(str(resolve_asset("detector")), "", (160, 160), 0.6, 0.3, 100)
    for i in (0, 6, 11):
        _, faces = detector.detect(cv2.cvtColor(decoded[i], cv2.COLOR_RGB2BGR))
        assert faces is not None, f"no face found in frame {i}"
        cx, cy = faces[0][0] + faces[0][2] / 2, faces[0][1] + faces[0][3] / 2
        lm = gt["landmarks_2d"][i]
        assert lm[:, 0].min() < cx < lm[:, 0].max() and lm[:, 1].min() < cy < lm[:, 1].max()


def test_cli_synth_faces_writes_shards_sheet_and_summary(tmp_path):
    out = tmp_path / "faces"
    assert main(["synth", "faces", "--n", "6", "--out", str(out), "--size", "64", "--workers", "1",
                 "--set", "rows_per_shard=4", "executor=local"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 6 and len(summary["shards"]) == 2 and summary["config"]["size"] == 64
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 64
    assert len(_read_rows(str(out / "data"))) == 6
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "data", "errors.csv", "items", "summary.json"]
    assert sorted(p.name for p in (out / "items").iterdir()) == ["00000.json", "00001.json", "_compacted.jsonl.gz"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_synth_faces_data_folder_reads_with_pandas_and_pyarrow(tmp_path):
    """The data folder holds only Parquet: pandas and pyarrow's dataset discovery read it whole;
    the trainers' readers take the output folder itself as well."""
    import pandas as pd
    import pyarrow.dataset as ds

    from facepgn.train.data import read_records
    from facepgn.train.plan import parquet_files

    out = tmp_path / "faces"
    assert main(["synth", "faces", "--n", "5", "--out", str(out), "--size", "64", "--workers", "1",
                 "--set", "rows_per_shard=2", "executor=local"]) == 0
    frame = pd.read_parquet(out / "data")
    assert len(frame) == 5 and sorted(frame["record_id"]) == [f"synthetic-s0/{i:08d}" for i in range(5)]
    assert ds.dataset(str(out / "data")).count_rows() == 5
    assert read_records([str(out)], "face_record").num_rows == 5
    assert len(parquet_files([str(out)], "face-record")) == 3


def test_synth_faces_resumes_a_folder_written_before_data(tmp_path):
    """A folder of the earlier layout (shards beside summary.json and contact_sheet.png) is resumed
    in place, not written a second time under data/, and the readers still read it."""
    from facepgn.train.data import read_records

    out = tmp_path / "faces"
    settings = synthetic.FaceSettings(size=64, **_BARE)
    synthetic.generate_faces(str(out), 2, seed=0, settings=settings, rows_per_shard=2)  # part-00000 at the top
    (out / "summary.json").write_text("{}")
    (out / "contact_sheet.png").write_bytes(b"png")
    assert synthetic.data_dir(str(out)) == str(out)
    assert main(["synth", "faces", "--n", "4", "--out", str(out), "--size", "64", "--workers", "1",
                 "--set", "rows_per_shard=2", "executor=local"] + [f"--set={k}={v}" for k, v in _BARE.items()]) == 0
    assert not (out / "data").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 2 and summary["skipped_existing"] == 2
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_records([str(out)], "face_record").num_rows == 4
    assert synthetic.data_dir(str(tmp_path / "new")) == str(tmp_path / "new" / "data")


def test_cli_reports_a_missing_face_model_in_one_line(tmp_path, capsys):
    code = main(["synth", "faces", "--n", "2", "--out", str(tmp_path), "--set", "face_model=/nonexistent/model.npz"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "/nonexistent/model.npz" in err and len(err.splitlines()) == 1


def test_cli_synth_faces_to_s3(s3_bucket):
    from facepgn import storage

    out = f"{s3_bucket}/synthetic/faces"
    assert main(["synth", "faces", "--n", "3", "--out", out, "--size", "64", "--workers", "1", "--set", "executor=local"]) == 0
    files = [p[len(out) + 1:] for p in storage.list_files(out)]
    assert files == ["contact_sheet.png", "data/part-00000.parquet", "errors.csv", "items/00000.json",
                     "items/_compacted.jsonl.gz", "summary.json"]
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/data/part-00000.parquet")))
    records.check_table(table, "face_record")
    assert table.num_rows == 3


# ---- realism: occluders, hair, landmark definitions, real backgrounds, camera ----------------

_BARE = dict(camera_effects=False, hair_prob=0.0, hand_prob=0.0, glasses_prob=0.0, microphone_prob=0.0)


def _landmark_pixels(row: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    px = np.round(np.asarray(row["landmarks_2d"]).reshape(68, 2)).astype(int)
    inside = ((px >= 0) & (px < size)).all(1)
    return np.clip(px, 0, size - 1), inside


def _occlusion_check(plain: synthetic.FaceSettings, occluded: synthetic.FaceSettings, indices) -> int:
    """Render the same faces without and with occluders; where the images differ something was
    drawn. Landmarks well inside that region must be hidden, those away from it keep their
    visibility. Returns how many landmarks the occluders hid."""
    model = synthetic.face_model_for(plain)
    hidden = 0
    for i in indices:
        f0, r0 = synthetic.synthesize_face(i, 3, plain, model)
        f1, r1 = synthetic.synthesize_face(i, 3, occluded, model)
        np.testing.assert_array_equal(r0["landmarks_3d"], r1["landmarks_3d"])  # the same face
        drawn = (np.abs(f1.image.astype(int) - f0.image.astype(int)).max(-1) > 20).astype(np.uint8)
        under = cv2.erode(drawn, np.ones((3, 3), np.uint8)).astype(bool)
        near = cv2.dilate(drawn, np.ones((5, 5), np.uint8)).astype(bool)
        px, inside = _landmark_pixels(r0, plain.size)
        v0, v1 = np.asarray(r0["landmarks_visible"]), np.asarray(r1["landmarks_visible"])
        covered = inside & under[px[:, 1], px[:, 0]]
        away = inside & ~near[px[:, 1], px[:, 0]]
        assert not v1[covered].any(), (i, np.flatnonzero(covered & v1))
        np.testing.assert_array_equal(v1[away], v0[away])
        assert not (v1 & ~v0).any()  # nothing becomes visible
        hidden += int((v0 & ~v1).sum())
    return hidden


def test_hands_glasses_and_microphones_hide_the_landmarks_they_cover():
    plain = synthetic.FaceSettings(size=128, **_BARE)
    occluded = synthetic.FaceSettings(size=128, **{**_BARE, "hand_prob": 1.0, "glasses_prob": 1.0, "microphone_prob": 1.0})
    assert _occlusion_check(plain, occluded, range(4)) >= 8


def test_a_fringe_hides_the_brows_it_covers():
    hair = {**_BARE, "hair_prob": 1.0, "long_hair_prob": 0.0}
    plain = synthetic.FaceSettings(size=128, **hair)
    fringe = synthetic.FaceSettings(size=128, **{**hair, "fringe_prob": 1.0})
    assert _occlusion_check(plain, fringe, range(6)) >= 3


def test_landmark_definition_setting_is_applied_and_recorded():
    from facepgn.facemodel import ICT_JAW_LEFT_IDS, ICT_JAW_RIGHT_IDS

    settings = synthetic.FaceSettings(size=64, landmarks="jaw-substitutes", **_BARE)
    model = synthetic.face_model_for(settings)
    upstream = synthetic.face_model_for(synthetic.FaceSettings(size=64, landmarks="upstream"))
    assert model.num_exp == 20 and model.exp_names == upstream.exp_names  # truncated first, then relabelled
    np.testing.assert_array_equal(model.landmark_ids[0:8], ICT_JAW_RIGHT_IDS)
    np.testing.assert_array_equal(model.landmark_ids[9:17], ICT_JAW_LEFT_IDS)
    face, row = synthetic.synthesize_face(2, 0, settings, model)
    assert row["landmark_definition"] == "jaw-substitutes"
    R = euler_to_matrix(np.asarray(row["pose"], np.float64))
    X = model.landmarks(np.asarray(row["id_coeffs"]), np.asarray(row["exp_coeffs"])).astype(np.float64)
    np.testing.assert_allclose(project(X, row["scale"], R, np.asarray(row["translation"], np.float64)),
                               np.asarray(row["landmarks_3d"]).reshape(68, 3), atol=1e-2)
    _, up_row = synthetic.synthesize_face(2, 0, synthetic.FaceSettings(size=64, landmarks="upstream", **_BARE))
    jaw = list(range(0, 8)) + list(range(9, 17))
    moved = np.linalg.norm(np.asarray(up_row["landmarks_2d"]).reshape(68, 2)[jaw] - np.asarray(row["landmarks_2d"]).reshape(68, 2)[jaw], axis=1)
    assert moved.mean() > 1.0  # the jaw labels really are other vertices
    from facepgn.errors import ConfigError

    with pytest.raises(ConfigError, match="landmarks='bogus'"):  # a name that got past the config's check
        synthetic.face_model_for(synthetic.FaceSettings.model_construct(**{**dict(synthetic.FaceSettings()), "landmarks": "bogus"}))
    from facepgn.config import SyntheticFacesConfig, build_config

    with pytest.raises(ConfigError, match="landmarks"):  # the settings are the job config: checked when built
        build_config(SyntheticFacesConfig, {"landmarks": "bogus"})


def test_faces_over_real_background_patches(shared, tmp_path):
    from facepgn import backgrounds

    wild = shared / "media" / "faces-wild" / "deepface"
    bank = backgrounds.build_background_bank([str(wild / "img1.jpg")], 96, 4, seed=0)
    path = tmp_path / "bank.npz"
    np.savez(path, patches=bank)
    settings = synthetic.FaceSettings(size=96, backgrounds=(str(path),), **_BARE)
    for i in range(2):
        face, _ = synthetic.synthesize_face(i, 0, settings)
        expected = backgrounds.random_background(bank, np.random.default_rng([0, i, 8]), 96).astype(float)
        off_face = ~cv2.dilate(face.rendering.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        err = np.abs(face.image.astype(float) - expected)[off_face].mean()
        other = np.abs(face.image.astype(float) - np.roll(expected, 20, axis=0))[off_face].mean()
        assert off_face.mean() > 0.1 and err < 6 and err < 0.5 * other, (err, other)


def test_camera_effects_degrade_without_moving_the_face():
    blob = np.zeros((96, 96, 3), np.float32)
    cv2.circle(blob, (40, 55), 9, (255, 230, 200), -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 2.0).astype(np.uint8)
    ys, xs = np.mgrid[:96, :96]

    def centroid(img):
        w = np.clip(img.astype(np.float64).mean(-1) - 30.0, 0, None)  # the blob, not the noise around it
        return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()

    changed = 0
    for k in range(12):
        out = synthetic.camera_effects(blob, np.random.default_rng(k), grayscale_prob=0.5)
        assert out.shape == blob.shape and out.dtype == np.uint8
        assert np.linalg.norm(centroid(out) - centroid(blob)) < 0.35, k
        changed += float(np.abs(out.astype(float) - blob).mean()) > 1.0
    assert changed >= 10
    grey = synthetic.camera_effects(blob, np.random.default_rng(0), grayscale_prob=1.0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
