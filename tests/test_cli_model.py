"""``facepgn model info|convert|download`` through ``facepgn.cli.main``; downloads from a real local
HTTP server (a thread on 127.0.0.1) serving a folder laid out like upstream."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from facepgn.cli import main

SAMPLE_FILES = ["generic_neutral_mesh.obj", "identity000.obj", "identity001.obj", "jawOpen.obj",
                "eyeBlink_L.obj", "vertex_indices.json"]


def test_info_ict(shared, capsys):
    assert main(["model", "info", str(shared / "facemodels" / "ict" / "ict_face_area.npz")]) == 0
    out = capsys.readouterr().out
    for line in ("vertices: 9409", "identity modes: 100", "expressions: 53", "triangles: 18460",
                 "landmarks: 68", "units: cm"):
        assert line in out, out


def test_info_sfm_and_default(shared, capsys):
    assert main(["model", "info", str(shared / "facemodels" / "sfm")]) == 0
    out = capsys.readouterr().out
    for line in ("vertices: 3448", "identity modes: 63", "expressions: 6", "triangles: 6736",
                 "landmarks: 50 of 68 mapped", "units: mm"):
        assert line in out, out
    assert main(["model", "info"]) == 0  # the configured default model
    assert "ict_face_area.npz" in capsys.readouterr().out


def test_info_ict_upstream_folder(shared, capsys):
    assert main(["model", "info", str(shared / "facemodels" / "ict" / "upstream-sample")]) == 0
    out = capsys.readouterr().out
    assert "vertices: 9409" in out and "identity modes: 2" in out and "expressions: 2" in out


def test_info_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["model", "info", str(tmp_path / "nope.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"facepgn: error: {tmp_path / 'nope.npz'}: face model file or folder not found"


def test_convert_sfm_truncated(shared, tmp_path, capsys):
    out = tmp_path / "sfm.npz"
    assert main(["model", "convert", str(shared / "facemodels" / "sfm"), "--out", str(out),
                 "--n-id", "10", "--n-exp", "3"]) == 0
    capsys.readouterr()
    assert main(["model", "info", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert '"identity_modes": 10' in text and '"expressions": 3' in text and '"units": "mm"' in text


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (as GitHub's raw server has), and quiet logs."""

    def log_message(self, *args):  # noqa: D401
        pass

    def do_GET(self):  # noqa: N802
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not header or not path.is_file():
            return super().do_GET()
        start = int(header.split("=", 1)[1].split("-", 1)[0])
        data = path.read_bytes()
        self.server.range_requests += 1
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def mirror(shared, tmp_path):
    """A local HTTP server for a folder laid out like upstream FaceXModel/ (the sample files)."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in SAMPLE_FILES:
        shutil.copyfile(shared / "facemodels" / "ict" / "upstream-sample" / name, root / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    server.range_requests = 0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/", server
    server.shutdown()
    server.server_close()


def _sample_table(tmp_path) -> Path:
    """The pinned table's rows for the sample files (this also checks the pinned checksums)."""
    from facepgn.download import read_sha_table

    rows = [r for r in read_sha_table() if r[2] in SAMPLE_FILES]
    assert len(rows) == len(SAMPLE_FILES)
    table = tmp_path / "table.txt"
    table.write_text("".join(f"{sha}  {size}  FaceXModel/{name}\n" for sha, size, name in rows))
    return table


def test_pinned_table_lists_all_upstream_files():
    from facepgn.download import ICT_BASE_URL, ict_files

    files = ict_files()
    # shared/README says 160; the table itself has 159 rows: 100 identities, 57 expression
    # meshes (the 53 of vertex_indices.json + cheekRaiser_L/R, PupilDilate_L/R), neutral, json.
    assert len(files) == 159 and sum(f.size for f in files) > 400e6
    assert files[0].url.startswith(ICT_BASE_URL) and ICT_BASE_URL.startswith("https://")
    assert {"generic_neutral_mesh.obj", "vertex_indices.json", "identity099.obj"} <= {f.name for f in files}


def test_download_ict_converts_and_resumes(mirror, shared, tmp_path, capsys, monkeypatch):
    root, url, server = mirror
    table = _sample_table(tmp_path)
    dest = tmp_path / "models"
    argv = ["model", "download", "ict", "--dest", str(dest), "--base-url", url, "--sha-table", str(table),
            "--allow-missing", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 downloaded, 0 already verified" in out
    from facepgn.facemodel import load_face_model

    model = load_face_model(dest / "ict_face_area.npz")
    with np.load(shared / "facemodels" / "ict" / "ict_face_area.npz") as ref:
        np.testing.assert_array_equal(model.mean, ref["mean"])
        np.testing.assert_array_equal(model.id_basis, ref["id_basis"][:2])
    assert model.exp_names == ["eyeBlink_L", "jawOpen"]
    # rerun (the mirror given by environment this time): everything verified, nothing fetched
    monkeypatch.setenv("FACEPGN_ICT_BASE_URL", url)
    assert main([a for a in argv if a not in ("--base-url", url)]) == 0
    assert "0 downloaded, 6 already verified" in capsys.readouterr().out
    # an interrupted download (a partial .part file) continues with a Range request
    raw = dest / "ict-facekit-FaceXModel"
    full = (raw / "jawOpen.obj").read_bytes()
    (raw / "jawOpen.obj").unlink()
    (raw / ".jawOpen.obj.part").write_bytes(full[:1000])
    assert main(argv) == 0
    assert "1 downloaded, 5 already verified" in capsys.readouterr().out
    assert server.range_requests == 1 and (raw / "jawOpen.obj").read_bytes() == full
    assert not list(raw.glob(".*.part"))


def test_download_corrupted_file_fails_with_checksum_error(mirror, tmp_path, capsys):
    root, url, _ = mirror
    table = _sample_table(tmp_path)
    data = bytearray((root / "jawOpen.obj").read_bytes())
    data[5000] ^= 0x01
    (root / "jawOpen.obj").write_bytes(bytes(data))
    dest = tmp_path / "models"
    rc = main(["model", "download", "ict", "--dest", str(dest), "--base-url", url, "--sha-table", str(table),
               "--allow-missing", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "jawOpen.obj" in err and "checksum mismatch" in err, err
    raw = dest / "ict-facekit-FaceXModel"
    assert not (raw / "jawOpen.obj").exists() and not list(raw.glob(".*.part"))
    assert not (dest / "ict_face_area.npz").exists()


def test_download_missing_file_is_one_line_error(mirror, tmp_path, capsys):
    root, url, _ = mirror
    table = _sample_table(tmp_path)
    (root / "identity001.obj").unlink()
    rc = main(["model", "download", "ict", "--dest", str(tmp_path / "d"), "--base-url", url,
               "--sha-table", str(table), "--allow-missing", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "identity001.obj: download failed (HTTP 404" in err and "\n" not in err


def test_download_detector_asset(shared, tmp_path, capsys, monkeypatch):
    root = tmp_path / "onnx-mirror"
    root.mkdir()
    shutil.copyfile(shared / "detectors" / "yunet_s_640_640.onnx", root / "yunet.onnx")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("FACEPGN_CACHE", str(tmp_path / "cache"))
        url = f"http://127.0.0.1:{server.server_address[1]}/yunet.onnx"
        assert main(["model", "download", "detector", "--url", url, "--quiet"]) == 0
        target = tmp_path / "cache" / "detectors" / "yunet_s_640_640.onnx"
        assert target.read_bytes() == (root / "yunet.onnx").read_bytes()
        assert "downloaded, sha256 checked" in capsys.readouterr().out
        assert main(["model", "download", "detector", "--url", url, "--quiet"]) == 0
        assert "already present and verified" in capsys.readouterr().out
        # the landmark model's pinned checksum does not match the detector's bytes
        assert main(["model", "download", "landmarks", "--url", url, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "peppa_slim_160_latest.onnx" in err and "checksum mismatch" in err
    finally:
        server.shutdown()
        server.server_close()


def test_download_mediapipe_extracts_the_pinned_file(shared, tmp_path):
    """A wheel-shaped zip holding the real face_landmark.tflite, served over HTTP, pinned by its own
    checksum: the tflite is extracted and verified, the canonical mesh fetched; a zip whose member
    does not match the pinned tflite is refused with a one-line error and leaves nothing behind."""
    import hashlib
    import zipfile

    from facepgn import download
    from facepgn.errors import InputError

    root = tmp_path / "mirror"
    root.mkdir()
    mp_dir = shared / "landmarks" / "mediapipe"
    with zipfile.ZipFile(root / "good.whl", "w") as zf:
        zf.write(mp_dir / "face_landmark.tflite", download.MEDIAPIPE_MEMBER)
    with zipfile.ZipFile(root / "bad.whl", "w") as zf:
        zf.writestr(download.MEDIAPIPE_MEMBER, b"not the model")
    shutil.copyfile(mp_dir / "canonical_face_model.obj", root / "canonical_face_model.obj")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def pinned(name):
        data = (root / name).read_bytes()
        return download.PinnedFile(name, f"{base}/{name}", hashlib.sha256(data).hexdigest(), len(data))

    try:
        dest = tmp_path / "out"
        result = download.download_mediapipe(dest, wheel=pinned("good.whl"), canonical_url=f"{base}/canonical_face_model.obj",
                                             show_progress=False)
        assert (dest / "face_landmark.tflite").read_bytes() == (mp_dir / "face_landmark.tflite").read_bytes()
        assert (dest / "canonical_face_model.obj").read_bytes() == (mp_dir / "canonical_face_model.obj").read_bytes()
        assert result["downloaded"] == 2 and not (dest / "good.whl").exists()
        again = download.download_mediapipe(dest, wheel=pinned("good.whl"), canonical_url=f"{base}/canonical_face_model.obj",
                                            show_progress=False)
        assert again["already_verified"] == 2
        with pytest.raises(InputError, match="checksum mismatch") as err:
            download.download_mediapipe(tmp_path / "bad", wheel=pinned("bad.whl"), show_progress=False)
        assert "\n" not in str(err.value) and not (tmp_path / "bad" / "face_landmark.tflite").exists()
    finally:
        server.shutdown()
