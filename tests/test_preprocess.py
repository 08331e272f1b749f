"""The preprocess pipeline end to end on a real local Ray, real videos, real decoding and moto S3."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from facepgn import records, storage
from facepgn.cli import main as cli_main
from facepgn.config import PreprocessConfig
from facepgn.errors import FacepgnError
from facepgn.faces import FaceDetector, box_iou
from facepgn.flow import warp_by_flow
from facepgn.pipelines.preprocess import list_shards, read_frame_pairs, run_preprocess

SMALL = dict(image_size=64, max_frames_per_video=6, target_fps=10.0, max_gap=3, landmarks=False)


def _read_all(output: str) -> list[dict]:
    rows = []
    for path in list_shards(output):
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        records.check_table(table, "frame_pair", path)
        rows.extend(table.to_pylist())
    return sorted(rows, key=lambda r: r["pair_id"])


def _shard_names(output: str) -> list[str]:
    root = storage.join(output, "shards")
    return sorted(p[len(root):] for p in list_shards(output))


def _link_videos(folder: Path, shared: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(shared / "media" / "videos" / name)
    return folder


# ---- the shared fixture's shards ---------------------------------------------------------------


def test_shards_have_the_documented_schema_and_real_pairs(frame_pair_shards):
    shards = list_shards(frame_pair_shards)
    assert shards and all("/shards/" in s for s in shards)
    for path in shards:
        schema = pq.read_schema(path)
        assert schema.names == records.FRAME_PAIR_SCHEMA.names
        assert [f.type for f in schema] == [f.type for f in records.FRAME_PAIR_SCHEMA]
    rows = _read_all(frame_pair_shards)
    summary = json.loads(Path(frame_pair_shards, "summary.json").read_text())
    assert summary["pairs_written"] == len(rows) and summary["videos_read"] == 2
    assert summary["config"]["crops"]["size"] == 64 and set(summary["timings"]["stage_s"]) >= {"decode", "detect", "flow", "encode"}

    for r in rows:
        video_id, track, frames = r["pair_id"].split("/")
        assert video_id == r["video_id"] and int(track) == r["track_id"]
        assert frames == f"{r['frame_a']}-{r['frame_b']}" and r["frame_a"] < r["frame_b"]
        assert r["time_b"] > r["time_a"]
        # same face track: the two detector boxes overlap and have about the same size
        box_a, box_b = np.array(r["box_a"]), np.array(r["box_b"])
        assert box_iou(box_a, box_b) > 0.15, r["pair_id"]
        assert 0.67 < max(box_b[2:]) / max(box_a[2:]) < 1.5, r["pair_id"]
        assert r["image_size"] == 64
        flow = records.decode_flow(r["flow"], 64)
        assert flow.shape == (64, 64, 2) and np.isfinite(flow).all()
        assert len(r["flow"]) == 64 * 64 * 2 * 2  # float16
        assert abs(float(np.linalg.norm(flow, axis=-1).mean()) - r["flow_magnitude"]) < 0.05
        for side in "ab":
            crop = records.decode_image(r[f"image_{side}"])
            assert crop.shape == (64, 64, 3)
            # detector points map back into the detector box through crop_to_frame
            pts = records.apply_affine(np.array(r[f"crop_to_frame_{side}"]), np.array(r[f"det_landmarks_{side}"]).reshape(5, 2))
            x, y, w, h = r[f"box_{side}"]
            assert (pts[:, 0] > x - 0.2 * w).all() and (pts[:, 0] < x + 1.2 * w).all()
            assert (pts[:, 1] > y - 0.2 * h).all() and (pts[:, 1] < y + 1.2 * h).all()
            lm = np.array(r[f"landmarks_2d_{side}"]).reshape(68, 2)
            assert ((lm > -8) & (lm < 72)).mean() > 0.95  # pseudo-labels lie on the crop

    # both videos, one face track in d10, several in the multi-face clip, each with its own subject id
    by_video = {}
    for r in rows:
        by_video.setdefault(r["video_id"], set()).add((r["track_id"], r["subject_id"]))
    assert set(by_video) == {"d10", "short_hamilton_clip"}
    assert {s for _, s in by_video["d10"]} == {"d10"}
    hamilton = by_video["short_hamilton_clip"]
    assert len({t for t, _ in hamilton}) >= 2 and len({s for _, s in hamilton}) == len({t for t, _ in hamilton})


def test_crops_contain_a_face_and_flow_aligns_the_pair(frame_pair_shards):
    rows = _read_all(frame_pair_shards)
    detector = FaceDetector(score_threshold=0.5)
    checked = 0
    for r in rows[:: max(1, len(rows) // 8)]:
        a = records.decode_image(r["image_a"])
        b = records.decode_image(r["image_b"])
        faces = detector.detect(cv2.resize(a, (192, 192), interpolation=cv2.INTER_CUBIC))
        assert faces, f"no face re-detected in crop A of {r['pair_id']}"
        # the face fills a good part of the crop and sits near its centre
        cx, cy = faces[0].centre / 3.0
        assert 16 < cx < 48 and 12 < cy < 52, (r["pair_id"], cx, cy)
        # flow A->B: warping B back by the flow brings it closer to A than B itself is
        flow = records.decode_flow(r["flow"], 64)
        warped = warp_by_flow(b, flow)
        err_warped = np.abs(warped.astype(float) - a).mean()
        err_plain = np.abs(b.astype(float) - a).mean()
        assert err_warped <= err_plain + 0.5, (r["pair_id"], err_warped, err_plain)
        checked += 1
    assert checked >= 4


def test_read_frame_pairs_gives_a_ray_dataset(frame_pair_shards, tmp_path):
    ds = read_frame_pairs(frame_pair_shards)
    summary = json.loads(Path(frame_pair_shards, "summary.json").read_text())
    assert ds.count() == summary["pairs_written"]
    batch = next(iter(ds.iter_batches(batch_size=4, batch_format="numpy")))
    assert set(records.FRAME_PAIR_SCHEMA.names) <= set(batch)
    with pytest.raises(FacepgnError, match="no frame-pair shards") as info:
        read_frame_pairs(str(tmp_path))
    assert "\n" not in str(info.value)


# ---- S3 in and out ---------------------------------------------------------------------------


def test_s3_input_and_output(ray_session, s3_bucket, shared):
    fs, _ = storage.get_fs(s3_bucket)
    src = shared / "media" / "videos" / "d10.mp4"
    fs.put_file(str(src), f"{s3_bucket[5:]}/raw/talks/d10.mp4")
    out = f"{s3_bucket}/pairs"
    summary = run_preprocess(PreprocessConfig(input=f"{s3_bucket}/raw", output=out, **SMALL))
    assert summary["videos_read"] == 1 and summary["pairs_written"] > 0
    names = _shard_names(out)
    assert names == ["/talks__d10/part-00000.parquet"]
    assert storage.exists(f"{out}/summary.json") and storage.exists(f"{out}/errors.csv")
    rows = _read_all(out)
    assert len(rows) == summary["pairs_written"] and rows[0]["source_path"] == f"{s3_bucket}/raw/talks/d10.mp4"
    assert read_frame_pairs(out).count() == len(rows)
    # a rerun against S3 finds the markers and does nothing
    again = run_preprocess(PreprocessConfig(input=f"{s3_bucket}/raw", output=out, **SMALL))
    assert again["videos_processed_this_run"] == 0 and again["pairs_written"] == summary["pairs_written"]


# ---- bad input -----------------------------------------------------------------------------------


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    color = frames[0].ndim == 3
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h), color)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_bad_inputs_are_recorded_and_good_videos_still_processed(ray_session, shared, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = shared / "media" / "videos" / "d3.mp4"
    (videos / "good.mp4").symlink_to(good)
    (videos / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 3])  # index (moov) at the end: lost
    faststart = (shared / "media" / "corpus" / "tpsmm" / "driving.mp4").read_bytes()  # index first
    (videos / "truncated_faststart.mp4").write_bytes(faststart[: len(faststart) // 2])
    (videos / "notes.mp4").write_text("this is not a video\n")
    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (9, 9), 3) for _ in range(12)]
    _write_video(videos / "no_face.mp4", noise)
    # grayscale, odd-sized real face footage (cv2 reads d9, writes one channel)
    cap = cv2.VideoCapture(str(shared / "media" / "videos" / "d9.mp4"))
    gray = []
    for _ in range(12):
        ok, frame = cap.read()
        assert ok
        gray.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (241, 237)))
        for _ in range(2):
            cap.read()
    cap.release()
    _write_video(videos / "gray_odd.avi", gray)

    out = tmp_path / "out"
    rc = cli_main(["preprocess", "--input", str(videos), "--output", str(out), "--set", *[f"{k}={v}" for k, v in SMALL.items()]])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos_found"] == 7
    skipped = {s["video_id"]: s["reason"] for s in summary["videos_skipped"]}
    assert "empty file" in skipped["empty"]
    assert "cannot decode" in skipped["notes"]
    assert "no face found" in skipped["no_face"]
    assert "cannot decode" in skipped["truncated"]
    assert "truncated or corrupt" in skipped["truncated_faststart"]
    reasons = list(csv.DictReader((out / "errors.csv").open()))
    assert {r["video_id"] for r in reasons} >= {"empty", "notes", "no_face", "truncated", "truncated_faststart"}
    assert all(r["reason"] and "\n" not in r["reason"] for r in reasons)
    ok_ids = {r["video_id"] for r in _read_all(str(out))}
    assert {"good", "gray_odd"} <= ok_ids  # grayscale / odd-sized footage is still face footage


def test_nothing_readable_exits_2_with_one_line(ray_session, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"")
    (videos / "b.mkv").write_text("not a video")
    rc = cli_main(["preprocess", "--input", str(videos), "--output", str(tmp_path / "out"), "--set", "executor=local"])
    assert rc == 2
    # (Ray forwards worker logs to stderr asynchronously, so look at facepgn's own line)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("facepgn: error:")]
    assert len(err) == 1 and "none of the 2 videos could be read" in err[0] and "empty file" in err[0]
    assert (tmp_path / "out" / "summary.json").exists()


# ---- resume and determinism ---------------------------------------------------------------------


def test_resume_after_interruption_gives_the_same_shards(ray_session, shared, tmp_path):
    videos = _link_videos(tmp_path / "videos", shared, ["d10.mp4", "d3.mp4"])
    cfg = dict(input=str(videos), **SMALL)
    whole = str(tmp_path / "whole")
    first = run_preprocess(PreprocessConfig(output=whole, **cfg))
    assert first["videos_read"] == 2

    # interrupted after one video (test hook), then resumed
    part = str(tmp_path / "part")
    stopped = run_preprocess(PreprocessConfig(output=part, max_videos=1, **cfg))
    assert stopped["videos_processed_this_run"] == 1 and stopped["videos_pending"] == 1
    resumed = run_preprocess(PreprocessConfig(output=part, **cfg))
    assert resumed["videos_processed_this_run"] == 1 and resumed["videos_already_done"] == 1
    assert _shard_names(part) == _shard_names(whole)
    assert _read_all(part) == _read_all(whole)

    # a rerun processes nothing new
    rerun = run_preprocess(PreprocessConfig(output=part, **cfg))
    assert rerun["videos_processed_this_run"] == 0 and rerun["pairs_written"] == first["pairs_written"]

    # a crash mid-video: shards written, marker not yet, plus a stale shard -> redone exactly
    os.remove(os.path.join(part, "videos", "d3.json"))
    stale = os.path.join(part, "shards", "d3", "part-00042.parquet")
    shutil.copy(os.path.join(part, "shards", "d3", "part-00000.parquet"), stale)
    redo = run_preprocess(PreprocessConfig(output=part, **cfg))
    assert redo["videos_processed_this_run"] == 1 and not os.path.exists(stale)
    assert _read_all(part) == _read_all(whole)


def test_shipped_config_loads_and_rejects_unknown_keys():
    from facepgn.config import load_config
    from facepgn.errors import ConfigError
    from facepgn.paths import REPO_ROOT

    cfg = load_config(PreprocessConfig, REPO_ROOT / "configs" / "preprocess.yaml", ["quality.min_blur=3", "max_videos=2"])
    assert cfg.quality.min_blur == 3 and cfg.max_videos == 2 and cfg.executor == "ray"
    with pytest.raises(ConfigError, match="quality.min_blurr: unknown key"):
        load_config(PreprocessConfig, None, ["quality.min_blurr=3"])
