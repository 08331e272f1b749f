"""Synthetic labelled faces, videos and exact-flow frame pairs: schema, determinism, ground truth."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from facepgn import records, synthetic
from facepgn.cli import main
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
        assert vis.sum() >= 25  # even a profile shows about half
        assert len(r["id_coeffs"]) == 40 and len(r["exp_coeffs"]) == 20 and r["face_model"] == model.name
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
        warped = synthetic.warp_back(pair.image_b, pair.flow).astype(np.float32)
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
                 "--set", "rows_per_shard=4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 6 and len(summary["shards"]) == 2 and summary["config"]["size"] == 64
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 64
    assert len(_read_rows(str(out))) == 6


def test_cli_reports_a_missing_face_model_in_one_line(tmp_path, capsys):
    code = main(["synth", "faces", "--n", "2", "--out", str(tmp_path), "--set", "face_model=/nonexistent/model.npz"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "/nonexistent/model.npz" in err and len(err.splitlines()) == 1


def test_cli_synth_faces_to_s3(s3_bucket):
    from facepgn import storage

    out = f"{s3_bucket}/synthetic/faces"
    assert main(["synth", "faces", "--n", "3", "--out", out, "--size", "64", "--workers", "1"]) == 0
    files = [storage.basename(p) for p in storage.list_files(out)]
    assert files == ["contact_sheet.png", "part-00000.parquet", "summary.json"]
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/part-00000.parquet")))
    records.check_table(table, "face_record")
    assert table.num_rows == 3
