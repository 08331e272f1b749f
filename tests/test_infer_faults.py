"""``facepgn infer`` killed mid-way (SIGKILL, after the first item's done marker) and run again
gives the rows of an uninterrupted run: the same (video, frame, track) keys, no duplicate, the
same values. Real videos, the Ray executor, the shipped model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facepgn.cli import main

VIDEOS = ("d3.mp4", "d6.mp4", "d10.mp4")
# one decode task at a time: the items finish one after another, so that the kill after the first
# marker lands while the next item is in flight
SETTINGS = ["decode.max_frames=16", "decode.tasks=1"]
KEYS = ["video_id", "frame_index", "track_id"]


@pytest.fixture(scope="module")
def videos(shared, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("fault_videos")
    for name in VIDEOS:
        (folder / name).symlink_to(shared / "media" / "videos" / name)
    return str(folder)


def infer_args(videos: str, out: Path) -> list[str]:
    return ["infer", "--input", videos, "--output", str(out), "--set", *SETTINGS]


def done_markers(out: Path) -> list[str]:
    folder = out / "done"
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".json") if folder.is_dir() else []


def read_rows(out: Path):
    import pandas as pd

    return pd.read_parquet(out / "rows").sort_values(KEYS).reset_index(drop=True)


def kill_after_first_marker(videos: str, out: Path) -> list[str]:
    """``facepgn infer`` in a subprocess (its own local Ray), SIGKILLed with its process group as
    soon as a done marker appears; returns the markers there were."""
    code = "import sys; from facepgn.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *infer_args(videos, out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a guard against a hung run, not a measurement
    try:
        while not done_markers(out):
            assert proc.poll() is None, f"infer exited ({proc.returncode}) before any marker: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no done marker within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return done_markers(out)


def test_infer_killed_mid_way_and_rerun_gives_the_rows_of_an_uninterrupted_run(ray_session, videos, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(infer_args(videos, whole)) == 0
    expected = read_rows(whole)
    assert set(expected["video_id"]) == {Path(v).stem for v in VIDEOS} and len(expected) > 0

    markers = kill_after_first_marker(videos, cut)
    assert 1 <= len(markers) < len(VIDEOS), markers  # killed mid-way: an item done, another not
    assert main(infer_args(videos, cut)) == 0
    assert done_markers(cut) == done_markers(whole)
    got = read_rows(cut)

    assert not got.duplicated(KEYS).any() and not expected.duplicated(KEYS).any()
    assert got[KEYS].equals(expected[KEYS])
    for column in ("box", "landmarks_2d", "landmarks_3d", "translation", "exp_coeffs"):
        np.testing.assert_allclose(np.stack(got[column]), np.stack(expected[column]), atol=1e-3, err_msg=column)
    np.testing.assert_allclose(got["yaw"], expected["yaw"], atol=1e-3)
