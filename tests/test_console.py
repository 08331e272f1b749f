"""What a person watching a run sees: a short pipeline, run as a user runs it (fresh ``facepgn``
processes, each starting its own local Ray), prints no deprecation warning raised from facepgn's
own code and no error-level log line (Python ``ERROR`` records, Ray's C++ ``E`` lines such as
``core_worker.cc ... has constructor arguments in the object store``, tracebacks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # (still runs in CI: every test does)

VENV_BIN = Path(sys.executable).parent
TINY_MODEL = ["model.input_size=64", "model.num_id=10", "model.num_exp=5", "model.pgn_width=0.25", "model.regressor_width=0.25"]
# Ray's C++ log lines: "[2026-12-02 04:45:08,080 E 13840 13875] core_worker.cc:2465: ..."
RAY_ERROR = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ E \d+ \d+\]")
PY_ERROR = re.compile(r"(^|\s)(ERROR|CRITICAL)(\s|:)|Traceback \(most recent call last\)")
DEPRECATION = re.compile(r"(\S+\.py):\d+: \w*DeprecationWarning")


def _facepgn(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a fresh local Ray, as on a laptop
    env["PYTHONWARNINGS"] = "default"  # show every warning once, DeprecationWarnings included
    done = subprocess.run([str(VENV_BIN / "facepgn"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _problems(output: str) -> list[str]:
    bad = []
    for line in output.splitlines():
        if RAY_ERROR.search(line) or PY_ERROR.search(line):
            bad.append(line)
        match = DEPRECATION.search(line)
        if match and "/facepgn/" in match.group(1).replace("\\", "/") and "site-packages" not in match.group(1):
            bad.append(line)
    return bad


def test_a_short_pipeline_prints_no_error_line_and_no_deprecation_of_ours(tmp_path, shared):
    faces = tmp_path / "faces"
    outputs = [
        _facepgn("synth", "faces", "--n", "24", "--out", str(faces), "--set", "size=64", "rows_per_shard=12", cwd=tmp_path),
        _facepgn("train", "--set", *TINY_MODEL, f'data.labelled=["{faces}"]', "data.labelled_batch_size=4", "steps=3",
                 "checkpoint_every=0", "log_every=1", "tensorboard=false", "validation.holdout_fraction=0", "optim.warmup_steps=1",
                 "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", f"output_dir={tmp_path / 'train'}",
                 f"ray.storage_path={tmp_path / 'ray'}", "ray.name=console", cwd=tmp_path),
        _facepgn("infer", "--model", str(tmp_path / "train" / "model.pt"), "--input", str(shared / "media" / "videos" / "d0.mp4"),
                 "--output", str(tmp_path / "recon"), "--set", "decode.max_frames=4", cwd=tmp_path),
    ]
    assert (tmp_path / "train" / "model.pt").exists() and (tmp_path / "recon" / "summary.json").exists()
    for name, output in zip(("synth faces", "train", "infer"), outputs):
        assert not _problems(output), f"facepgn {name} printed:\n" + "\n".join(_problems(output))
