"""Listing and decoding videos: folders, globs, manifests, sampling, chunked decode, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepgn.errors import InputError
from facepgn.video import VideoReader, list_videos, sample_indices


def test_sample_indices_hits_the_target_rate_and_limit():
    idx = sample_indices(300, 30.0, 10.0)
    assert idx[:4] == [0, 3, 6, 9] and len(idx) == 100
    assert sample_indices(10, 25.0, None) == list(range(10))
    assert sample_indices(10, 25.0, 50.0) == list(range(10))  # never above the video's rate
    assert sample_indices(300, 30.0, 10.0, max_frames=5) == [0, 3, 6, 9, 12]
    assert sample_indices(0, 30.0, 10.0) == []


def test_list_videos_folder_glob_and_file(shared):
    folder = shared / "media" / "corpus"
    items = list_videos(str(folder))
    assert len(items) == 30
    assert len({i.video_id for i in items}) == 30 and all("/" not in i.video_id for i in items)
    assert all(i.subject_id == i.video_id for i in items)
    assert items == sorted(items, key=lambda i: i.path)
    assert any(i.video_id == "sadtalker__RD_Radio2_000" for i in items)
    globbed = list_videos(str(folder / "sadtalker" / "*.mp4"))
    assert globbed and "RD_Radio2_000" in {i.video_id for i in globbed}  # ids relative to the glob root
    single = list_videos(str(shared / "media" / "videos" / "d10.mp4"))
    assert [(i.video_id, i.subject_id) for i in single] == [("d10", "d10")]
    with pytest.raises(InputError, match="input not found"):
        list_videos(str(folder / "nope"))


def test_manifests_csv_and_jsonl_with_subject_ids(shared, tmp_path):
    videos = shared / "media" / "videos"
    (tmp_path / "m.csv").write_text(f"path,subject_id\n{videos / 'd10.mp4'},alice\n{videos / 'd3.mp4'},\n")
    items = list_videos(str(tmp_path / "m.csv"))
    assert [(i.video_id, i.subject_id) for i in items] == [("d10", "alice"), ("d3", "d3")]
    (tmp_path / "clip.mp4").symlink_to(videos / "d6.mp4")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "clip.mp4", "subject_id": "bob"}) + "\n")
    items = list_videos(str(tmp_path / "m.jsonl"))
    assert items[0].path == str(tmp_path / "clip.mp4") and items[0].subject_id == "bob"
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="line 1 is not valid JSON"):
        list_videos(str(tmp_path / "bad.jsonl"))


def test_chunked_decode_gives_rgb_frames_at_the_sampled_indices(shared):
    reader = VideoReader(str(shared / "media" / "videos" / "obama.mp4"), max_side=320)
    assert reader.source_size == (1280, 720) and (reader.info.width, reader.info.height) == (320, 180)
    assert reader.scale_to_source == 4.0
    idx = reader.sample_indices(5.0, max_frames=7)
    frames = list(reader.frames(idx, chunk_size=3))
    assert [f.index for f in frames] == idx
    assert all(f.rgb.shape == (180, 320, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert frames[1].time == pytest.approx(idx[1] / reader.info.fps)


def test_unreadable_files_raise_one_line_input_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello")
    for name, cause in [("empty.mp4", "empty file"), ("text.mp4", "cannot decode video"), ("missing.mp4", "not found")]:
        with pytest.raises(InputError, match=cause) as info:
            VideoReader(str(tmp_path / name))
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
