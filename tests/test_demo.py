"""``facepgn demo`` end to end with tiny sizes (the full-size run is too slow for CI).

It runs on the session's shared Ray (``run_demo`` uses an initialised Ray as it is), through the
real CLI entry, and checks that every stage either ran and wrote what it claims, or was skipped
only because its command is not part of this install.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facepgn.cli import main
from facepgn.config import DEMO_STAGES

TINY = [
    "synthetic_faces=16",
    "synthetic_videos=1",
    "synthetic_video_frames=10",
    "preprocess_frames=5",
    "train_steps=2",
    "train_workers=1",
    "infer_frames=4",
    "infer_stride=2",
    "eval_images=6",
    "overrides={synth_faces: [workers=1, contact_sheet=8], synth_videos: [workers=1], "
    "preprocess: [flow_preset=ultrafast], train: [data.labelled_batch_size=4, data.pair_batch_size=2, "
    "checkpoint_every=0, validation.holdout_fraction=0]}",
]

STAGE_COMMAND = {"synth_faces": "synth", "synth_videos": "synth", "preprocess": "preprocess", "train": "train",
                 "tune": "tune", "infer": "infer", "evaluate": "evaluate"}


@pytest.mark.slow
def test_demo_runs_every_available_stage(ray_session, shared, tmp_path, capsys):
    from facepgn.cli import command_names

    out = tmp_path / "demo"
    video = shared / "media" / "videos" / "d0.mp4"
    # The sweep is left out: a Ray Tune trial alone takes longer than this test's budget (the full
    # demo and tests/test_tune*.py cover it).
    stages = [s for s in DEMO_STAGES if s != "tune"]
    code = main(["demo", "--out", str(out), "--stages", *stages, "--set", f"videos={video}", *TINY])
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary["errors"]
    assert list(summary["stages"]) == stages
    assert set(STAGE_COMMAND.values()) <= command_names()  # every stage's command is registered
    for name, stage in summary["stages"].items():
        assert stage["status"] == "done", (name, stage)
        for what, path in stage["outputs"].items():
            assert Path(path).exists(), f"{name}: {what} missing at {path}"
            assert path in printed, f"the final summary should say where {what} went"
    for name in ("model", "synth_faces", "synth_videos", "preprocess", "train", "infer", "evaluate"):
        assert summary["stages"][name]["status"] == "done"
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    assert pairs["videos_read"] == 2 and pairs["pairs_written"] > 0  # the real video + the synthetic clip
    report = (out / "REPORT.md").read_text()
    assert "| preprocess | done |" in report and (out / "timings.png").stat().st_size > 0
    if summary["stages"]["infer"]["status"] == "done":
        assert "## Inference on the real videos" in report and "| d0 |" in report
    if summary["stages"]["evaluate"]["status"] == "done":
        assert "## AFLW2000-3D evaluation" in report and "nme_2d_68" in report


def test_demo_rejects_unknown_stage_in_one_line(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "d"), "--stages", "model", "trian"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown stage(s) ['trian']" in err[0] and err[0].startswith("facepgn: error:")
    assert not (tmp_path / "d").exists()
