"""facepgn.summary: the one summary.json shape and its helpers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facepgn import storage
from facepgn.summary import STANDARD_KEYS, json_safe, versions, write_summary


def test_write_summary_shape_order_and_json(tmp_path):
    path = str(tmp_path / "out" / "summary.json")
    returned = write_summary(
        path, job="demo", counts={"items": np.int64(3)}, errors=[{"item": "a", "reason": "bad"}],
        timings={"wall_s": 1.5, "rate": float("nan")}, config={"x": 1}, extra={"output": Path("/o")},
        versions=versions("ray"),
    )
    saved = json.loads(Path(path).read_text())
    assert list(saved) == ["job", "counts", "errors", "timings", "output", "versions", "config"]
    assert saved["counts"] == {"items": 3} and saved["timings"]["rate"] is None and saved["output"] == "/o"
    assert saved["versions"]["facepgn"] and "python" in saved["versions"] and "ray" in saved["versions"]
    assert math.isnan(returned["timings"]["rate"])  # the caller's values, as given
    assert set(STANDARD_KEYS) <= set(saved)


def test_write_summary_to_s3(s3_bucket):
    write_summary(f"{s3_bucket}/job/summary.json", job="x", counts={}, errors=[], timings={"wall_s": 0.0}, config={})
    assert json.loads(storage.read_text(f"{s3_bucket}/job/summary.json"))["job"] == "x"


def test_extras_may_not_replace_standard_keys(tmp_path):
    with pytest.raises(ValueError, match="counts"):
        write_summary(str(tmp_path / "s.json"), job="x", counts={}, errors=[], timings={}, config={}, extra={"counts": 1})
    assert not (tmp_path / "s.json").exists()


def test_json_safe():
    value = {1: (np.float32(0.5), np.array([1, 2]), np.bool_(True)), "inf": float("inf"), "s": {3}, "p": Path("a")}
    assert json_safe(value) == {"1": [0.5, [1, 2], True], "inf": None, "s": [3], "p": "a"}
    json.dumps(json_safe(value), allow_nan=False)


def test_versions_leave_out_what_does_not_import():
    found = versions("cv2", "no_such_module_xyz")
    assert "opencv" in found and "no_such_module_xyz" not in found


def test_imports_without_ray_or_torch():
    code = "import sys, facepgn.summary; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
