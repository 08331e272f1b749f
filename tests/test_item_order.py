"""The order the per-item Ray jobs start their items in: the largest first (facepgn.pipelines.runner),
sized from listings (local stat, one S3 listing: no request per file), on real videos and photos of
the shared media; the jobs start them in that order and write what the plain loop writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_planning import count_s3_requests

from facepgn import outputs, storage
from facepgn.pipelines.runner import largest_first, listed_sizes
from facepgn.video import list_media, list_videos

SMALL = dict(image_size=64, max_frames_per_video=6, target_fps=10.0, max_gap=3, landmarks=False)
PHOTO = "faces-wild/deepface/img1.jpg"  # 2.3 MB: larger than every video below, still one frame


def _link(folder: Path, shared: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / Path(name).name).symlink_to(shared / "media" / name)
    return folder


def _sizes(items, key: str = "path") -> list[int]:
    return [os.path.getsize(it[key]) for it in items]


def test_local_videos_largest_first_then_photos(shared, tmp_path):
    videos = [it.to_dict() for it in list_videos(str(shared / "media" / "videos"))]
    ordered = largest_first(videos)
    sizes = _sizes(ordered)
    assert len(ordered) == 7 and sorted(it["path"] for it in ordered) == sorted(it["path"] for it in videos)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert ordered[0]["video_id"] == "d0" and ordered[-1]["video_id"] == "short_hamilton_clip"
    assert listed_sizes([it["path"] for it in videos]) == {it["path"]: os.path.getsize(it["path"]) for it in videos}

    # a photo comes after the videos, however large; a file that is gone (no size) after those of known size
    folder = _link(tmp_path / "in", shared, ["videos/d10.mp4", "videos/short_hamilton_clip.mp4", PHOTO, "faces-wild/deepface/img54.jpg"])
    mixed = [it.to_dict() for it in list_media(str(folder))]
    gone = {"path": str(tmp_path / "gone.mp4"), "item_id": "gone", "kind": "video"}
    assert [it["item_id"] for it in largest_first([gone, *mixed])] == ["d10", "short_hamilton_clip", "gone", "img1", "img54"]


def test_s3_sizes_from_one_listing_no_request_per_file(shared, s3_bucket):
    fs, _ = storage.get_fs(s3_bucket)
    names = ["d3.mp4", "d10.mp4", "obama.mp4", "short_hamilton_clip.mp4", "d6.mp4"]
    for i, name in enumerate(names):  # two folders, as a corpus laid out by source
        fs.put_file(str(shared / "media" / "videos" / name), f"{s3_bucket[5:]}/raw/{'ab'[i % 2]}/{name}")
    items = [it.to_dict() for it in list_videos(f"{s3_bucket}/raw")]
    gone = {"path": f"{s3_bucket}/raw/a/gone.mp4", "video_id": "gone", "subject_id": "gone"}
    with count_s3_requests() as requests:
        ordered = largest_first([gone, *items])
    assert dict(requests) == {"ListObjectsV2": 1}  # one listing of raw/ (one page), no HEAD or GET per video
    local = {name[:-4]: os.path.getsize(shared / "media" / "videos" / name) for name in names}
    assert [Path(it["path"]).stem for it in ordered] == [*sorted(local, key=local.__getitem__, reverse=True), "gone"]
    assert listed_sizes([it["path"] for it in items]) == {it["path"]: local[Path(it["path"]).stem] for it in items}


def test_s3_bucket_that_cannot_be_listed_keeps_the_listing_order(s3_server):
    items = [{"path": f"s3://no-such-bucket-facepgn/raw/{n}.mp4"} for n in ("b", "a")]
    assert largest_first(items) == items and listed_sizes([it["path"] for it in items]) == {}


def _write_order(folder: Path) -> list[str]:
    """The ids of the markers in ``folder`` in the order they were written."""
    markers = [p for p in folder.glob("*.json") if not p.name.startswith(".")]
    return [p.stem for p in sorted(markers, key=lambda p: p.stat().st_mtime_ns)]


def test_preprocess_starts_the_largest_video_first_and_writes_what_the_loop_writes(ray_session, shared, tmp_path):
    """One task at a time, so the order the markers are written in is the order the tasks started in."""
    from test_preprocess import _read_all, _shard_names

    from facepgn.config import PreprocessConfig
    from facepgn.pipelines.preprocess import run_preprocess

    videos = _link(tmp_path / "videos", shared, ["videos/short_hamilton_clip.mp4", "videos/d10.mp4", "videos/d3.mp4"])
    ray_out, loop_out = str(tmp_path / "ray"), str(tmp_path / "loop")
    summary = run_preprocess(PreprocessConfig(input=str(videos), output=ray_out, tasks={"max_concurrent": 1}, **SMALL), progress=False)
    assert summary["videos_read"] == 3 and summary["pairs_written"] > 0
    assert _write_order(Path(ray_out) / "videos") == ["d3", "d10", "short_hamilton_clip"]  # by path: d10, d3, short_...
    run_preprocess(PreprocessConfig(input=str(videos), output=loop_out, executor="local", **SMALL), progress=False)
    assert _write_order(Path(loop_out) / "videos") == ["d10", "d3", "short_hamilton_clip"]
    assert _shard_names(ray_out) == _shard_names(loop_out)
    assert _read_all(ray_out) == _read_all(loop_out)


def test_infer_starts_the_largest_videos_first_then_photos(ray_session, shared, tmp_path):
    """One decode task and one finalize thread: the done markers are written in the order the items started."""
    from facepgn.config import InferConfig
    from facepgn.pipelines.infer import run_inference

    folder = _link(tmp_path / "in", shared, ["videos/short_hamilton_clip.mp4", PHOTO, "videos/d10.mp4", "videos/d3.mp4"])
    cfg = InferConfig(input=str(folder), output=str(tmp_path / "out"), decode={"max_frames": 6, "tasks": 1},
                      outputs={"finalize_threads": 1})
    summary = run_inference(cfg, progress=None)
    assert summary["counts"]["items_done_this_run"] == 4 and not summary["errors"]
    assert _write_order(Path(cfg.output) / "done") == ["d3", "d10", "short_hamilton_clip", "img1"]
    local = run_inference(cfg.model_copy(update={"output": str(tmp_path / "loop"), "executor": "local"}), progress=None)
    assert local["counts"]["rows_this_run"] == summary["counts"]["rows_this_run"]
    for item in ("d3", "img1"):
        a, b = outputs.read_rows(cfg.output, item).to_pydict(), outputs.read_rows(str(tmp_path / "loop"), item).to_pydict()
        assert a["frame_index"] == b["frame_index"]
        np.testing.assert_allclose(np.asarray(a["landmarks_2d"]), np.asarray(b["landmarks_2d"]), atol=1e-3)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
