"""The benchmark protocol: NME by hand, the standard arrays, pose/shape errors, reports, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from facepgn import evaluation as ev
from facepgn import labelled
from facepgn.cli import main
from facepgn.errors import FacepgnError, InputError


@pytest.fixture(scope="module")
def arrays(shared) -> dict[str, np.ndarray]:
    d = shared / "media" / "aflw2000-3d-arrays"
    return {
        "pts68": np.load(d / "AFLW2000-3D.pts68.npy"),
        "pose": np.load(d / "AFLW2000-3D.pose.npy"),
        "roi": np.load(d / "AFLW2000-3D_crop.roi_box.npy"),
        "dir": d,
    }


@pytest.fixture(scope="module")
def aflw_dir(shared) -> Path:
    return shared / "media" / "aflw2000-3d"


def _hand_nme(pred: np.ndarray, gt: np.ndarray, dims: int, points=range(68)) -> float:
    """One image, (3, 68) layout, plain loops: the 3DDFA formula."""
    w = gt[0].max() - gt[0].min()
    h = gt[1].max() - gt[1].min()
    p, g = pred[:dims].astype(np.float64).copy(), gt[:dims].astype(np.float64).copy()
    if dims == 3:
        p[2] -= p[2].mean()
        g[2] -= g[2].mean()
    total = 0.0
    for k in points:
        total += np.sqrt(sum((p[d, k] - g[d, k]) ** 2 for d in range(dims)))
    return total / len(points) / np.sqrt(w * h)


def test_standard_arrays_perfect_prediction_and_bucket_counts(arrays):
    pts, pose = arrays["pts68"], arrays["pose"]
    assert pts.shape == (2000, 3, 68) and pose.shape == (2000,) and arrays["roi"].shape == (2000, 4)
    result = ev.evaluate_arrays(pts, pts, pose)
    assert result.metrics["bucket_counts"] == {"[0,30]": 1312, "(30,60]": 383, "(60,90]": 305}
    for entry in result.metrics["landmarks"]["landmarks"].values():
        assert entry["mean"] == 0.0 and entry["all"] == 0.0
    # yaw is unwrapped degrees; 7 images lie beyond +-90 and go to the last bucket, as published
    assert int((np.abs(pose) > 90).sum()) == 7
    assert ev.yaw_bucket_index(pose[np.abs(pose) > 90]).tolist() == [2] * 7


def test_nme_equals_hand_computation(arrays):
    rng = np.random.default_rng(0)
    idx = [0, 28, 1999]
    gt = arrays["pts68"][idx].astype(np.float64)
    pred = gt + rng.normal(0, 3.0, gt.shape)
    pred[1, :2, 30] += [30.0, -40.0]  # one big error on the nose tip of image00050
    pred[:, 2] += 100.0  # a z offset is not an error (z origin is arbitrary)
    for dims in (2, 3):
        got = ev.nme(pred, gt, dims)
        want = [_hand_nme(pred[i], gt[i], dims) for i in range(3)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
        got51 = ev.nme(pred, gt, dims, ev.JAWLESS_POINTS)
        np.testing.assert_allclose(got51, [_hand_nme(pred[i], gt[i], dims, range(17, 68)) for i in range(3)], rtol=1e-12)
    # bucket means by hand
    yaw = np.array([10.0, -45.0, 75.0])
    values = ev.nme(pred, gt, 2)
    means = ev.bucket_means(values, yaw)
    assert means["(30,60]"] == pytest.approx(values[1])
    assert means["mean"] == pytest.approx(values.mean())
    # layouts (N, 68, D) and (N, D, 68) agree
    np.testing.assert_allclose(ev.nme(pred.transpose(0, 2, 1), gt, 2), values)


def test_bucket_edges_and_pose_wrapping():
    assert ev.yaw_bucket_index(np.array([0, 30, 30.0001, -60, 60.5, -351.2, 187.8])).tolist() == [0, 0, 1, 1, 2, 2, 2]
    counts = ev.bucket_counts(np.array([5.0, 95.0]))
    assert counts == {"[0,30]": 1, "(30,60]": 0, "(60,90]": 1}
    mae = ev.pose_mae(np.array([[179.0, -170.0, 10.0]]), np.array([[-179.0, 170.0, 350.0]]))
    assert mae["pitch"] == pytest.approx(2.0) and mae["yaw"] == pytest.approx(20.0) and mae["roll"] == pytest.approx(20.0)
    assert mae["mean"] == pytest.approx(14.0)
    with pytest.raises(FacepgnError):
        ev.as_landmarks(np.zeros((4, 5, 68, 1)))


def _rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    from facepgn.geometry import euler_to_matrix

    return np.asarray(euler_to_matrix(np.radians([deg_x, deg_y, deg_z]).astype(np.float64)))


@pytest.fixture(scope="module")
def face_mesh(shared) -> tuple[np.ndarray, int]:
    """The ICT neutral face (cm): a real face surface, and its nose-tip vertex."""
    data = np.load(shared / "facemodels" / "ict" / "ict_face_area.npz")
    return data["mean"].astype(np.float64), int(data["lm68"][30])


def test_shape_error_known_correspondence(face_mesh):
    gt, nose = face_mesh
    R = _rotation(10, -25, 5)
    moved = 1.7 * gt @ R.T + [3.0, -2.0, 40.0]
    err = ev.shape_error(moved, gt)
    assert err.rmse < 1e-6 and err.scale == pytest.approx(1 / 1.7, rel=1e-6)
    noise = np.random.default_rng(1).normal(0, 0.05, gt.shape)
    err = ev.shape_error(1.7 * (gt + noise) @ R.T + 5.0, gt)
    rms_noise = np.sqrt((noise**2).sum(1).mean())
    assert err.rmse == pytest.approx(rms_noise, rel=0.05)
    assert err.rmse <= rms_noise
    # nose-tip crop keeps fewer points, and a rigid fit cannot undo the scale
    cropped = ev.shape_error(moved, gt, crop_radius=5.0, gt_nose_tip=nose)
    assert 100 < cropped.num_points < gt.shape[0] and cropped.rmse < 1e-6
    assert ev.shape_error(moved, gt, allow_scale=False).rmse > 0.1


def test_shape_error_nearest_neighbour_different_topology(face_mesh):
    mesh, nose = face_mesh
    gt = mesh[::4]
    nose_point = mesh[nose]
    R = _rotation(5, 12, -4)
    order = np.random.default_rng(3).permutation(gt.shape[0])
    # the same surface with its vertices in another order: no known correspondence, exact answer 0
    same = ev.shape_error(0.8 * gt[order] @ R.T + [1.0, 2.0, -3.0], gt, correspondence="nearest")
    assert same.rmse < 1e-3 and same.scale == pytest.approx(1 / 0.8, rel=1e-4) and same.iterations > 1
    # another sampling of the same surface: only the sampling gap remains
    resampled = ev.shape_error(0.8 * mesh[2::4] @ R.T, gt, correspondence="nearest")
    spacing = np.median(np.linalg.norm(gt[1:] - gt[:-1], axis=1))
    assert resampled.rmse < spacing and resampled.scale == pytest.approx(1 / 0.8, rel=0.02)
    # a differently shaped face (deeper by 30%) gives a clearly larger error, within the nose crop too
    deeper = gt * [1.0, 1.0, 1.3]
    worse = ev.shape_error(deeper[order] @ R.T, gt, correspondence="nearest", crop_radius=8.0, gt_nose_tip=nose_point)
    assert worse.num_points < gt.shape[0] and worse.rmse > 0.2 and worse.rmse > 100 * same.rmse


def test_report_written_and_readable(tmp_path, arrays):
    rng = np.random.default_rng(2)
    pts = arrays["pts68"]
    pred = pts + rng.normal(0, 2.0, pts.shape).astype(np.float32)
    pred[arrays["pose"] > 60] += rng.normal(0, 4.0, pred[arrays["pose"] > 60].shape).astype(np.float32)
    result = ev.evaluate_arrays(pred, pts, arrays["pose"], out_dir=str(tmp_path))
    assert set(result.report_paths) == {"report.md", "ced.png", "metrics.json", "per_image.csv"}
    text = (tmp_path / "report.md").read_text()
    assert "| landmarks | nme_2d_68 |" in text and "1312" in text and "**" in text and "](ced.png)" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["landmarks"]["landmarks"]["nme_2d_68"]["mean"] == pytest.approx(
        np.mean([ev.nme(pred, pts)[ev.yaw_bucket_index(arrays["pose"]) == b].mean() for b in range(3)])
    )
    png = cv2.imread(str(tmp_path / "ced.png"))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 400
    assert png.std() > 10  # not blank
    lines = (tmp_path / "per_image.csv").read_text().splitlines()
    assert len(lines) == 2001 and lines[0].startswith("name,yaw_deg,landmarks.nme_2d_68")


def _perfect_predictor(plan: ev.Aflw2000Plan):
    """Ground truth moved into each crop, served in the order evaluate_aflw2000 asks for it."""
    crop_gt = np.stack([labelled.to_crop(g, m) for g, m in zip(plan.gt, plan.crop_to_frame)])
    state = {"next": 0}

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        i = state["next"]
        state["next"] += len(crops)
        return {"gt": crop_gt[i:i + len(crops)], "pose": np.radians(plan.pose_degrees[i:i + len(crops)])}

    return predict


@pytest.mark.parametrize("box", ["auto", "landmarks"])
def test_evaluate_aflw2000_perfect_predictor(tmp_path, aflw_dir, box):
    plan = ev.plan_aflw2000(str(aflw_dir), image_size=64, box=box, limit=10)
    if box == "auto":
        assert plan.standard_rows is not None and plan.standard_rows[7] == 28  # image00050
        assert "roi" in plan.box
    else:
        assert plan.standard_rows is None
    result = ev.evaluate_aflw2000(_perfect_predictor(plan), plan, str(tmp_path), image_size=64, batch_size=4,
                                  detector_boxes=False)  # the predictor serves roi crops only (see the detector test)
    assert "detector_boxes" not in result.metrics
    for entry in result.metrics["landmarks"]["gt"].values():
        assert entry["all"] < 1e-6
    assert result.metrics["pose_mae_deg"]["mean"] < 1e-9
    assert (tmp_path / "report.md").exists() and (tmp_path / "ced.png").exists()


def test_evaluate_aflw2000_real_landmark_network_on_real_images(aflw_dir):
    """The crops hold the faces the coordinates say they hold: a real 2D landmark network, run on
    the crops and mapped back, lands within a few percent of pt3d_68 (image pixels)."""
    result = ev.evaluate_aflw2000(ev.peer_landmark_predictor(), str(aflw_dir), image_size=128, limit=16)
    nme = result.metrics["landmarks"]["landmarks"]["nme_2d_68"]
    assert result.metrics["bucket_counts"]["[0,30]"] >= 8
    assert nme["[0,30]"] < 0.06  # measured 3.2% on 41 frontal shared images
    # a wrong crop transform would be far off: shift the predictions by a quarter of the crop
    shifted = ev.evaluate_aflw2000(lambda c: ev.peer_landmark_predictor()(c) + 32.0, str(aflw_dir), limit=4)
    assert shifted.metrics["landmarks"]["landmarks"]["nme_2d_68"]["all"] > 0.15


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    """An untrained, small model file (the CLI path, not accuracy)."""
    from facepgn.config import ModelConfig
    from facepgn.model import build_model, save_model_file

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model_file(build_model(ModelConfig(input_size=64, num_id=8, num_exp=4, pgn_width=0.5, regressor_width=0.5)), path)
    return path


def _link_pairs(src: Path, dest: Path, names: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dest / f"{n}.jpg").symlink_to(src / f"{n}.jpg")
        (dest / f"{n}.mat").symlink_to(src / f"{n}.mat")


def _blanked_copy(aflw_dir: Path, name: str, dest: Path, new_name: str) -> None:
    """A copy of a dev image with the face region (the landmark box grown by 60%) filled with the
    image's mean colour, and its ground truth: an image where YuNet finds no face."""
    image = cv2.imread(str(aflw_dir / f"{name}.jpg"))
    gt = labelled.landmarks_from_mat(labelled.read_mat(str(aflw_dir / f"{name}.mat")), name)[:, :2]
    lo, hi = gt.min(axis=0), gt.max(axis=0)
    half = 0.8 * (hi - lo).max()
    (x0, y0), (x1, y1) = np.maximum(0, (lo + hi) / 2 - half).astype(int), ((lo + hi) / 2 + half).astype(int)
    image[y0:y1, x0:x1] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    cv2.imwrite(str(dest / f"{new_name}.jpg"), image)
    (dest / f"{new_name}.mat").symlink_to(aflw_dir / f"{name}.mat")


def _png_ok(path: Path, min_side: int = 100) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) >= min_side and image.std() > 10, path
    return image


def test_cli_evaluate_aflw2000_with_model_file(tmp_path, aflw_dir, tiny_model_file, capsys):
    data = tmp_path / "data"
    _link_pairs(aflw_dir, data, ["image00002", "image00010", "image00050"])
    _blanked_copy(aflw_dir, "image00050", data, "image09050")
    out = tmp_path / "out"
    code = main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
                 "--set", "batch_size=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "landmarks_3d:" in printed and "pose MAE" in printed
    assert "detector boxes (as facepgn infer crops): face detected in 3 of 4 images, missed 1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["landmarks"]) == {"landmarks_3d", "mesh_landmarks"}
    assert metrics["num_images"] == 4 and metrics["standard_rows_matched"] is True
    assert metrics["landmarks"]["mesh_landmarks"]["nme_2d_68"]["mean"] > 0  # the roi results stay where readers look
    # the detector-box pass: the blanked image is counted as missed, not dropped; NME over the other 3
    det = metrics["detector_boxes"]
    assert (det["num_images"], det["num_detected"], det["num_missed"]) == (4, 3, 1)
    assert det["missed"] == [{"name": "image09050", "yaw_deg": pytest.approx(metrics_yaw(aflw_dir, "image00050")),
                              "reason": "no face detected"}]
    assert sum(det["bucket_counts"].values()) == 3 and sum(det["missed_bucket_counts"].values()) == 1
    assert set(det["landmarks"]) == {"landmarks_3d", "mesh_landmarks"} and "pose_mae_deg" in det
    assert det["landmarks"]["mesh_landmarks"]["nme_2d_68"]["mean"] > 0 and "square_crop" in det["box"]
    # infer crops a detector box like the training crops (InferConfig.crop_margin): both about 1.41x the face
    assert 1.2 < metrics["crop_side_over_face"] < 1.6 and 1.2 < det["crop_side_over_face"] < 1.7
    rows = (out / "per_image.csv").read_text().splitlines()
    header = rows[0].split(",")
    detected = [r.split(",")[header.index("detector_boxes.detected")] for r in rows[1:]]
    assert detected == ["1", "1", "1", "0"]  # image00002, 00010, 00050, 09050
    assert rows[4].split(",")[header.index("detector_boxes.mesh_landmarks.nme_2d_68")] == "nan"
    # the report: one table per convention, the count of missed faces, the CED plot and the pictures
    report = (out / "report.md").read_text()
    assert "## 3DDFA roi boxes" in report and "## Detector boxes" in report
    assert report.count("| mesh_landmarks | nme_2d_68 |") == 2 and report.count("| yaw | pitch | roll | mean |") == 2
    assert "detected in 3 of 4 images" in report and "over the 3 detected images only" in report
    assert "- image09050 (yaw" in report and "no face detected" in report
    for name in ("ced.png", "grid.png", "grid_detector.png", "best_worst.png"):
        assert f"]({name})" in report, name
        _png_ok(out / name)
    # grid: one row per yaw bucket present (3 images at [0,30], image00010 at (60,90]), 160 px tiles, 3 px gaps;
    # best/worst: the 4 best and 4 worst (roi), the 3 worst with detector boxes
    grid = _png_ok(out / "grid.png")
    assert grid.shape[:2] == (2 * 163 + 3, 3 * 163 + 3)
    best_worst = _png_ok(out / "best_worst.png")
    assert best_worst.shape[:2] == (3 * 163 + 3, 4 * 163 + 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["batch_size"] == 2 and summary["num_images"] == 4
    assert summary["config"]["detector_boxes"] is True
    # the one summary shape (facepgn.summary): job, counts, errors, timings, extras, versions, config
    assert list(summary)[:4] == ["job", "counts", "errors", "timings"] and list(summary)[-2:] == ["versions", "config"]
    assert summary["job"] == "evaluate aflw2000" and summary["errors"] == [] and summary["timings"]["wall_s"] > 0
    assert summary["counts"] == {"images": 4, "images_skipped": 0, "detector_detected": 3, "detector_missed": 1}
    assert summary["arguments"]["model"] == str(tiny_model_file) and summary["metrics"] == "metrics.json"

    # the switch: no detector pass, no pictures (small runs)
    quick = tmp_path / "quick"
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(data), "--out", str(quick),
                 "--set", "detector_boxes=false", "grid_per_bucket=0", "best_worst=0"]) == 0
    assert "detector boxes" not in capsys.readouterr().out
    assert "detector_boxes" not in json.loads((quick / "metrics.json").read_text())
    assert not (quick / "grid.png").exists() and "grid" not in (quick / "report.md").read_text()
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(data), "--out", str(quick),
                 "--set", "grid_columns=0"]) == 2
    assert "grid_columns" in capsys.readouterr().err

    # bad inputs: one line on stderr naming the file, exit 2
    bad = tmp_path / "bad"
    _link_pairs(aflw_dir, bad, ["image00002"])
    scipy.io.savemat(bad / "image00003.mat", {"Pose_Para": np.zeros((1, 7)), "roi": np.zeros((1, 4))})
    (bad / "image00003.jpg").symlink_to(aflw_dir / "image00010.jpg")
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("image00003.mat: no 68-point landmarks (needs pt3d_68 (3x68) or pt2d (2x68); no pt2d)")
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "image00004.jpg").write_bytes(b"\xff\xd8 truncated")
    (unreadable / "image00004.mat").symlink_to(aflw_dir / "image00050.mat")
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(unreadable), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "image00004.jpg: not a readable image" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(empty) in err
    assert main(["evaluate", "aflw2000", "--model", str(tmp_path / "nope.pt"), "--data", str(data), "--out", str(out)]) == 2
    assert "nope.pt: model file not found" in capsys.readouterr().err


def test_skip_bad_records_and_continues(tmp_path, aflw_dir):
    data = tmp_path / "data"
    _link_pairs(aflw_dir, data, ["image00002", "image00010"])
    (data / "image00011.jpg").write_bytes(b"junk")
    (data / "image00011.mat").symlink_to(aflw_dir / "image00050.mat")
    plan = ev.plan_aflw2000(str(data), image_size=64, box="landmarks", skip_bad=True)
    result = ev.evaluate_aflw2000(lambda c: np.zeros((len(c), 68, 2)), plan, image_size=64, skip_bad=True)
    assert result.metrics["num_images"] == 2
    assert [e["path"].endswith("image00011.jpg") for e in result.metrics["errors"]] == [True]
    with pytest.raises(InputError, match="image00011.jpg"):
        ev.evaluate_aflw2000(lambda c: np.zeros((len(c), 68, 2)), str(data), image_size=64)


def test_cli_evaluate_arrays(tmp_path, arrays, capsys):
    pts = arrays["pts68"]
    # predictions in 3DDFA's 120 px crop space, mapped back with the roi boxes
    roi = arrays["roi"].astype(np.float64)
    crop = pts.astype(np.float64).copy()
    sx = (roi[:, 2] - roi[:, 0]) / 120.0
    sy = (roi[:, 3] - roi[:, 1]) / 120.0
    crop[:, 0] = (crop[:, 0] - roi[:, None, 0]) / sx[:, None]
    crop[:, 1] = (crop[:, 1] - roi[:, None, 1]) / sy[:, None]
    crop[:, 2] /= np.sqrt(sx * sy)[:, None]
    np.save(tmp_path / "pred.npy", crop.astype(np.float32))
    out = tmp_path / "out"
    code = main(["evaluate", "arrays", "--pred", str(tmp_path / "pred.npy"), "--gt", str(arrays["dir"] / "AFLW2000-3D.pts68.npy"),
                 "--pose", str(arrays["dir"] / "AFLW2000-3D.pose.npy"), "--roi", str(arrays["dir"] / "AFLW2000-3D_crop.roi_box.npy"),
                 "--crop-size", "120", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["landmarks"]["landmarks"]["nme_2d_68"]["mean"] < 1e-6
    assert metrics["bucket_counts"] == {"[0,30]": 1312, "(30,60]": 383, "(60,90]": 305}
    assert "nme_2d_68 0.00%" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job"] == "evaluate arrays" and summary["counts"] == {"images": 2000, "images_skipped": 0}
    assert summary["config"] == {} and summary["arguments"]["crop_size"] == 120 and summary["num_images"] == 2000
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    assert main(["evaluate", "arrays", "--pred", str(tmp_path / "bad.npy"), "--gt", str(tmp_path / "pred.npy"),
                 "--pose", str(arrays["dir"] / "AFLW2000-3D.pose.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.npy: not a readable .npy pred array" in err


def metrics_yaw(aflw_dir: Path, name: str) -> float:
    return float(np.degrees(labelled.mat_vector(labelled.read_mat(str(aflw_dir / f"{name}.mat")), "Pose_Para", 7, name)[1]))


def test_detector_pass_crops_like_infer_hold_the_face_and_map_back(aflw_dir):
    """The detector-box crops are exactly what facepgn infer feeds the model for the photo (its
    photo stage, inference.iter_photo_batches), hold the labelled face, and predictions map back
    through them: ground truth served in those crops scores ~0 NME in that pass."""
    from facepgn import faces, inference
    from facepgn.config import InferConfig

    size = 64
    plan = ev.plan_aflw2000(str(aflw_dir), image_size=size, limit=8)
    calls: list[np.ndarray] = []

    def record(crops: np.ndarray) -> np.ndarray:
        calls.append(crops.copy())
        return np.zeros((len(crops), 68, 2))

    first = ev.evaluate_aflw2000(record, plan, image_size=size, batch_size=8)
    det = first.detector
    assert len(calls) == 2 and len(calls[1]) == det.detected.sum() == first.metrics["detector_boxes"]["num_detected"]
    assert det.detected.sum() >= 7  # YuNet finds every one of these dev faces (498 of the 503)
    margin = InferConfig().crop_margin
    for j, i in enumerate(np.flatnonzero(det.detected)):
        image = labelled.read_image(plan.image_paths[i])
        crop, crop_to_frame = faces.square_crop(image, det.boxes[i].astype(np.float32), margin, size)
        np.testing.assert_array_equal(calls[1][j], crop)
        np.testing.assert_allclose(det.crop_to_frame[i], crop_to_frame)
        inside = faces.frame_to_crop(plan.gt[i, :, :2], crop_to_frame)
        assert ((inside >= 0) & (inside < size)).all(axis=1).mean() >= 0.9, plan.names[i]
        extent = np.ptp(plan.gt[i, :, :2], axis=0).max()
        assert 1.3 < crop_to_frame[0, 0] * size / extent < 3.0  # a face-sized crop, not the whole image
        if j < 3:  # facepgn infer's own photo stage cuts the same crop for this face
            batch = next(inference.iter_photo_batches(plan.image_paths[i], "x", InferConfig(), size))
            row = int(np.argmin(np.abs(batch["box"] - det.boxes[i]).sum(axis=1)))
            np.testing.assert_array_equal(batch["crop"][row], calls[1][j])
    assert "detector_boxes.detected" in first.per_image

    roi_gt = np.stack([labelled.to_crop(g, m) for g, m in zip(plan.gt, plan.crop_to_frame)])
    found = np.flatnonzero(det.detected)
    det_gt = np.stack([faces.frame_to_crop(plan.gt[i], det.crop_to_frame[i]) for i in found])
    served = iter([roi_gt, det_gt])
    perfect = ev.evaluate_aflw2000(lambda crops: {"gt": next(served)}, plan, image_size=size, batch_size=8)
    assert perfect.metrics["landmarks"]["gt"]["nme_2d_68"]["all"] < 1e-6
    assert perfect.metrics["detector_boxes"]["landmarks"]["gt"]["nme_2d_68"]["all"] < 1e-4  # float32 crop affine


def test_match_detection_nearest_to_the_labelled_face():
    from facepgn.faces import Detection

    gt = np.stack(np.meshgrid(np.linspace(100, 200, 17), np.linspace(120, 220, 4)), -1).reshape(-1, 2)[:68]
    near = Detection(np.array([95, 110, 110, 120], np.float32), np.zeros((5, 2), np.float32), 0.7)
    other = Detection(np.array([300, 100, 110, 120], np.float32), np.zeros((5, 2), np.float32), 0.95)
    assert ev.match_detection([other, near], gt) == (near, "")
    assert ev.match_detection([], gt) == (None, "no face detected")
    assert ev.match_detection([other], gt) == (None, "only other faces detected (1)")


def test_report_pictures_without_images_and_grid_sample():
    rows = ev.grid_sample(np.arange(10.0)[::-1], np.array([0, 0, 0, 0, 0, 0, 45, 45, 70, 10.0]), 3)
    assert rows == [[5, 3, 1], [7, 6], [8]]  # NME quantiles 1/6, 1/2, 5/6 of each bucket, lowest first
    bare = ev.EvaluationResult({"num_images": 1}, {"yaw_deg": np.zeros(1)})
    assert ev.report_figures(bare) == []


def test_the_shipped_model_is_the_default_and_works_on_real_faces(aflw_dir, tmp_path, capsys):
    """Without --model, evaluate uses the pretrained model shipped in facepgn/data (sha256-checked),
    and it works on real faces: on 12 frontal dev images (roi crops) its NME is far below the
    synthetic-only models' (~20%) (MODEL_CARD.md: 4.33% at [0,30] on all 317)."""
    from facepgn.model import load_model_file, pretrained_model_file

    shipped = pretrained_model_file()
    model = load_model_file(shipped)
    assert model.cfg.landmarks == "auto" and model.input_size == 128
    names = [f"image{n:05d}" for n in (2, 10, 20, 26, 36, 42, 50, 58, 66, 74, 82, 92)]
    data = tmp_path / "data"
    _link_pairs(aflw_dir, data, [n for n in names if (aflw_dir / f"{n}.jpg").exists()])
    out = tmp_path / "out"
    assert main(["evaluate", "aflw2000", "--data", str(data), "--out", str(out), "--set", "detector_boxes=false",
                 "grid_per_bucket=0", "best_worst=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    frontal = metrics["landmarks"]["mesh_landmarks"]["nme_2d_68"]["[0,30]"]
    assert frontal < 0.08, frontal
    assert "the pretrained model" in (out / "report.md").read_text().splitlines()[0]


# ---- peers and compared models in one run (issue #12) -------------------------------------------


def test_mediapipe_68_is_the_labellers_mapping_and_the_bench_uses_it():
    """teachers.MediaPipe68 maps the 468 points with the labeller's own mapping (FaceLabeller.map68,
    the one bench/teachers.py scores), not a copy of it."""
    from facepgn.pseudolabel import FaceLabeller
    from facepgn.teachers import MediaPipe68

    labeller = FaceLabeller()
    mp = MediaPipe68()
    assert mp.map68.shape == (68,) and np.array_equal(mp.map68, labeller.map68)
    assert len(set(mp.map68.tolist())) > 60  # 68 distinct-ish mesh points, not a constant
    bench = (Path(__file__).parents[1] / "bench" / "teachers.py").read_text()
    assert "MediaPipe68(" in bench and ".points[everything.map68" not in bench


def test_frame_peers_get_each_faces_model_crop_in_both_conventions(aflw_dir):
    """A frame peer is called once per face and convention with that face's model crop (roi box,
    then detector crop) and answers in image pixels: serving the ground truth scores 0 in both
    tables."""
    plan = ev.plan_aflw2000(str(aflw_dir), image_size=64, limit=6)
    images = [labelled.read_image(p) for p in plan.image_paths]
    seen: list[tuple[int, np.ndarray, int]] = []

    def peer(image: np.ndarray, crop_to_frame: np.ndarray, size: int) -> np.ndarray:
        i = next(k for k, im in enumerate(images) if im.shape == image.shape and np.array_equal(im, image))  # the whole image
        seen.append((i, crop_to_frame.copy(), size))
        return plan.gt[i, :, :2]

    result = ev.evaluate_aflw2000(lambda c: np.zeros((len(c), 68, 2)), plan, image_size=64, batch_size=4,
                                  frame_peers={"peer_x": peer})
    detected = np.flatnonzero(result.detector.detected)
    assert len(detected) >= 5 and len(seen) == len(plan.gt) + len(detected) and all(s[2] == 64 for s in seen)
    roi_calls = [c for c in seen if np.allclose(c[1], plan.crop_to_frame[c[0]])]
    det_calls = [c for c in seen if np.allclose(c[1], result.detector.crop_to_frame[c[0]], atol=1e-4)]
    assert sorted(c[0] for c in roi_calls) == list(range(6))  # every face once with its roi crop
    assert sorted(c[0] for c in det_calls) == detected.tolist()  # every detected face once with its detector crop
    assert len(roi_calls) + len(det_calls) == len(seen)
    assert result.metrics["landmarks"]["peer_x"]["nme_2d_68"]["all"] < 1e-9
    assert result.metrics["landmarks"]["landmarks"]["nme_2d_68"]["all"] > 0.5  # the zero predictor is far off
    assert result.metrics["detector_boxes"]["landmarks"]["peer_x"]["nme_2d_68"]["all"] < 1e-9
    assert "peer_x" in result.metrics["legend"] and result.metrics["peer_ms_per_face"]["peer_x"] >= 0


def test_mediapipe_peer_sees_the_model_crop_and_lands_on_real_faces(aflw_dir, monkeypatch):
    """MediaPipe's first pass covers exactly the model crop's region; on real dev faces it lands
    within a few percent in both conventions; the report names it and says how it is cropped."""
    from facepgn import teachers

    single = ev.mediapipe_peer(passes=1)
    runs: list[np.ndarray] = []
    original = teachers.MediaPipeMesh._run

    def spy(self, rgb, crop_to_frame):
        runs.append(np.asarray(crop_to_frame, np.float64).copy())
        return original(self, rgb, crop_to_frame)

    monkeypatch.setattr(teachers.MediaPipeMesh, "_run", spy)
    plan = ev.plan_aflw2000(str(aflw_dir), image_size=128, limit=1)
    image = labelled.read_image(plan.image_paths[0])
    single(image, plan.crop_to_frame[0], 128)
    corners = np.array([[0, 0, 1], [192, 192, 1]], np.float64) @ runs[0].T
    model_corners = np.array([[0, 0, 1], [128, 128, 1]], np.float64) @ plan.crop_to_frame[0].T
    np.testing.assert_allclose(corners.mean(0), model_corners.mean(0), atol=0.5)  # same centre
    assert abs(np.ptp(corners[:, 0]) - np.ptp(model_corners[:, 0])) < 1.0  # same side
    monkeypatch.undo()

    peer = ev.mediapipe_peer()  # two passes, as the labeller runs the teacher
    assert "own" in peer.crop_note and "same square region as the model's crop" in peer.crop_note
    plan = ev.plan_aflw2000(str(aflw_dir), image_size=128, limit=10)
    result = ev.evaluate_aflw2000(lambda c: np.zeros((len(c), 68, 2)), plan, image_size=128, batch_size=10,
                                  frame_peers={"peer_mediapipe": peer})
    roi = result.metrics["landmarks"]["peer_mediapipe"]["nme_2d_68"]
    det = result.metrics["detector_boxes"]["landmarks"]["peer_mediapipe"]["nme_2d_68"]
    assert result.metrics["bucket_counts"]["[0,30]"] >= 6
    assert roi["[0,30]"] < 0.06 and det["[0,30]"] < 0.06, (roi, det)  # 3.3% on these in development
    assert result.metrics["crop_notes"]["peer_mediapipe"] == peer.crop_note
    text = ev.report_markdown(result, "t")
    assert "- `peer_mediapipe`: peer, not a facepgn model: MediaPipe's face mesh" in text
    assert text.count("`peer_mediapipe`: MediaPipe cuts its own") == 2  # the crop note in both conventions


def test_compared_model_names():
    names = ev.compared_model_names(["/root/runs/old-recipe/model.pt", "runs/a/v2.pt", "old=/x/y/best.pt",
                                     "s3://bucket/exp/v2.pt", "/z/peer_2d.pt"], taken=["peer_2d"])
    assert names == [("old-recipe", "/root/runs/old-recipe/model.pt"), ("v2", "runs/a/v2.pt"), ("old", "/x/y/best.pt"),
                     ("v2-2", "s3://bucket/exp/v2.pt"), ("peer_2d-2", "/z/peer_2d.pt")]
    with pytest.raises(FacepgnError):
        ev.with_compared_models(lambda c: np.zeros((len(c), 68, 2)), {"a/b": lambda c: c})


def test_model_predictor_resizes_crops_of_another_size(tiny_model_file):
    from facepgn.model import load_model_file

    model = load_model_file(tiny_model_file)
    assert model.input_size == 64
    predict = ev.model_predictor(model)
    crops = np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3), dtype=np.uint8)
    small = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops])
    big, own = predict(crops), predict(small)
    np.testing.assert_allclose(big["mesh_landmarks"], 2.0 * own["mesh_landmarks"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(big["pose"], own["pose"], atol=1e-6)


def test_cli_compare_models_and_peers_in_one_run(tmp_path, aflw_dir, tiny_model_file, capsys):
    """compare_models scores other model files as their own row sets in both conventions, with a
    pose MAE each: the same file compared with itself gives the same numbers; a differently seeded
    model gives other ones; the report names every row set in plain words."""
    import shutil

    import torch

    from facepgn.config import ModelConfig
    from facepgn.model import build_model, save_model_file

    data = tmp_path / "data"
    _link_pairs(aflw_dir, data, ["image00002", "image00010"])
    same = tmp_path / "old-recipe" / "model.pt"
    same.parent.mkdir()
    shutil.copy(tiny_model_file, same)
    torch.manual_seed(7)
    other = tmp_path / "other.pt"
    save_model_file(build_model(ModelConfig(input_size=96, num_id=8, num_exp=4, pgn_width=0.5, regressor_width=0.5)), other)
    out = tmp_path / "out"
    code = main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
                 "--set", "batch_size=2", "peer_landmarks=true", "grid_per_bucket=0", "best_worst=0",
                 f"compare_models=[\"{same}\", \"{other}\"]"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "old-recipe/mesh_landmarks:" in printed and "pose MAE of other:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    sets = {"mesh_landmarks", "landmarks_3d", "old-recipe/mesh_landmarks", "old-recipe/landmarks_3d",
            "other/mesh_landmarks", "other/landmarks_3d", "peer_2d"}
    assert set(metrics["landmarks"]) == sets and set(metrics["detector_boxes"]["landmarks"]) == sets
    for table in (metrics, metrics["detector_boxes"]):
        lm = table["landmarks"]
        assert lm["old-recipe/mesh_landmarks"] == lm["mesh_landmarks"]  # the same model, the same crops
        assert lm["other/mesh_landmarks"]["nme_2d_68"]["mean"] != lm["mesh_landmarks"]["nme_2d_68"]["mean"]
        assert table["pose_mae_deg_compared"]["old-recipe"] == table["pose_mae_deg"]
        assert table["pose_mae_deg_compared"]["other"] != table["pose_mae_deg"]
    assert set(metrics["legend"]) == sets and "(compared)" in metrics["legend"]["other/landmarks_3d"]
    assert str(other) in metrics["legend"]["other/landmarks_3d"] and "Peppa" in metrics["legend"]["peer_2d"]
    assert metrics["crop_notes"] == {"peer_2d": ev.PEER_2D_CROP_NOTE}
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert "old-recipe/pose_error.yaw" in header and "detector_boxes.other/mesh_landmarks.nme_2d_68" in header
    report = (out / "report.md").read_text()
    assert "Row sets:" in report and "- `old-recipe/mesh_landmarks`: `old-recipe` (" in report
    assert "| other/mesh_landmarks | nme_2d_68 |" in report and report.count("| model | yaw | pitch | roll | mean |") == 2
    assert "| old-recipe (compared) |" in report and "Summary, 2D NME over 68 points" in report
    _png_ok(out / "ced.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["compare_models"] == [str(same), str(other)] and summary["config"]["peer_mediapipe"] is False
    # a missing compared model is a one-line error naming it
    assert main(["evaluate", "aflw2000", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
                 "--set", f"compare_models=[\"{tmp_path / 'nope.pt'}\"]"]) == 2
    assert "nope.pt: model file not found" in capsys.readouterr().err
    assert main(["evaluate", "aflw2000", "--peer-only", "--data", str(data), "--out", str(out),
                 "--set", f"compare_models=[\"{same}\"]"]) == 2
    assert "compare_models needs a model" in capsys.readouterr().err
