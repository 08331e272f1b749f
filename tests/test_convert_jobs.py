"""``labelled convert``, ``synth faces`` and ``synth videos`` as chunked jobs on the session's Ray
(facepgn.pipelines.chunks): the Ray executor writes what the local one writes, chunk for chunk;
a rerun redoes only the chunks whose output is gone; a corrupt image is recorded and skipped;
input and output on S3. Real AFLW2000-3D / 300W-LP files, real decoding, a real local Ray."""

from __future__ import annotations

import csv
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facepgn import storage
from facepgn.config import LabelledConfig, SyntheticFacesConfig, SyntheticVideosConfig
from facepgn.pipelines.labelled import run_convert
from facepgn.pipelines.synth import run_synth_faces, run_synth_videos

AFLW_IMAGES = 10
RAY = dict(executor="ray", num_cpus_per_task=0.5, max_tasks=2)
BARE = dict(camera_effects=False, hair_prob=0.0, hand_prob=0.0, glasses_prob=0.0, microphone_prob=0.0)


@pytest.fixture(scope="module")
def labelled_folder(shared, tmp_path_factory) -> Path:
    """10 AFLW2000-3D pairs, the 300W-LP sample and one corrupt image (half a JPEG, a good .mat), symlinked."""
    folder = tmp_path_factory.mktemp("labelled")
    aflw = shared / "media" / "aflw2000-3d"
    for jpg in sorted(aflw.glob("*.jpg"))[:AFLW_IMAGES]:
        for f in (jpg, jpg.with_suffix(".mat")):
            (folder / "aflw" / f.name).parent.mkdir(exist_ok=True)
            (folder / "aflw" / f.name).symlink_to(f)
    lp = shared / "media" / "300w-lp" / "IBUG_image_008_1_0.jpg"
    (folder / "lp").mkdir()
    for f in (lp, lp.with_suffix(".mat")):
        (folder / "lp" / f.name).symlink_to(f)
    good = aflw / "image00050.jpg"
    (folder / "aflw" / "image99998.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "aflw" / "image99998.mat").symlink_to(good.with_suffix(".mat"))
    return folder


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("part-*.parquet"))}


def _records(shards: dict[str, bytes]) -> list[dict]:
    rows = []
    for data in shards.values():
        rows += pq.read_table(io.BytesIO(data), columns=["record_id", "landmarks_2d", "landmarks_3d"]).to_pylist()
    return rows


def _same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["record_id"] for r in a] == [r["record_id"] for r in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x["landmarks_2d"]), np.asarray(y["landmarks_2d"]))
        assert (x["landmarks_3d"] is None) == (y["landmarks_3d"] is None)
        if x["landmarks_3d"] is not None:
            np.testing.assert_array_equal(np.asarray(x["landmarks_3d"]), np.asarray(y["landmarks_3d"]))


def test_labelled_convert_on_ray_equals_local_records_bad_image_and_resumes_one_chunk(ray_session, labelled_folder, tmp_path):
    common = dict(image_size=64, shard_size=4, contact_sheet=4)
    local = run_convert(LabelledConfig(executor="local", **common), str(labelled_folder), str(tmp_path / "local"))
    on_ray = run_convert(LabelledConfig(**RAY, **common), str(labelled_folder), str(tmp_path / "ray"))
    # 12 pairs in 3 chunks; the corrupt image left out with a one-line reason naming it
    for s in (local, on_ray):
        assert s["counts"]["chunks"] == 3 and s["counts"]["records"] == 11 and s["counts"]["images_skipped"] == 1
        assert [(e["path"].endswith("image99998.jpg"), e["reason"]) for e in s["errors"]] == [(True, "not a readable image")]
    with open(tmp_path / "ray" / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["path"].endswith("image99998.jpg") and rows[0]["reason"] == "not a readable image"
    # the same chunks, byte for byte, whichever executor wrote them
    shards = _shards(tmp_path / "ray")
    assert list(shards) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert shards == _shards(tmp_path / "local")
    _same_records(_records(shards), _records(_shards(tmp_path / "local")))
    assert (tmp_path / "ray" / "contact_sheet.png").stat().st_size > 0

    # a rerun after deleting one chunk's shard redoes that chunk only, and writes the same bytes
    kept = {name: (tmp_path / "ray" / "data" / name).stat().st_mtime_ns for name in shards if name != "part-00001.parquet"}
    (tmp_path / "ray" / "data" / "part-00001.parquet").unlink()
    again = run_convert(LabelledConfig(**RAY, **common), str(labelled_folder), str(tmp_path / "ray"))
    assert again["counts"]["chunks_processed_this_run"] == 1 and again["counts"]["chunks_already_done"] == 2
    assert again["records_written"] == 4 and again["counts"]["records"] == 11 and len(again["errors"]) == 1
    assert _shards(tmp_path / "ray") == shards
    assert kept == {name: (tmp_path / "ray" / "data" / name).stat().st_mtime_ns for name in kept}


def test_labelled_convert_with_input_and_output_on_s3(ray_session, labelled_folder, s3_bucket, tmp_path):
    src = f"{s3_bucket}/in"
    for path in sorted(labelled_folder.rglob("*")):
        if path.is_file() and path.name[:10] in ("image00002", "image00010", "image99998", "IBUG_image"):
            storage.atomic_write_bytes(f"{src}/{path.parent.name}/{path.name}", path.read_bytes())
    out = f"{s3_bucket}/records"
    cfg = LabelledConfig(image_size=64, shard_size=2, **RAY)
    summary = run_convert(cfg, src, out)
    assert summary["counts"]["records"] == 3 and summary["counts"]["chunks"] == 2
    assert len(summary["errors"]) == 1 and summary["errors"][0]["path"] == f"{src}/aflw/image99998.jpg"
    listed = [p[len(out) + 1:] for p in storage.list_files(out)]
    assert listed == ["contact_sheet.png", "data/part-00000.parquet", "data/part-00001.parquet", "errors.csv",
                      "items/00000.json", "items/00001.json", "items/_compacted.jsonl.gz", "summary.json"]
    on_s3 = _records({p: storage.read_bytes(f"{out}/{p}") for p in listed if p.startswith("data/")})
    local = run_convert(LabelledConfig(image_size=64, shard_size=2, executor="local"), src, str(tmp_path / "local"))
    _same_records(on_s3, _records(_shards(tmp_path / "local")))
    assert local["counts"]["records"] == 3
    again = run_convert(cfg, src, out)
    assert again["counts"]["chunks_processed_this_run"] == 0 and again["shards_skipped_existing"] == 2


def test_synth_faces_on_ray_equals_local_and_resumes_one_chunk(ray_session, tmp_path):
    def config(out: Path, **kw) -> SyntheticFacesConfig:
        return SyntheticFacesConfig(n=10, size=64, rows_per_shard=4, contact_sheet=4, output=str(out), **BARE, **kw)

    local = run_synth_faces(config(tmp_path / "local", executor="local", workers=2))  # a local process pool
    on_ray = run_synth_faces(config(tmp_path / "ray", **RAY))
    assert local["written"] == on_ray["written"] == 10 and on_ray["counts"]["chunks"] == 3 and local["workers"] == 2
    assert on_ray["yaw_buckets_deg"] == local["yaw_buckets_deg"] and sum(on_ray["yaw_buckets_deg"].values()) == 10
    shards = _shards(tmp_path / "ray")
    assert len(shards) == 3 and shards == _shards(tmp_path / "local")
    assert [r["record_id"] for r in _records(shards)] == [f"synthetic-s0/{i:08d}" for i in range(10)]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["contact_sheet.png", "data", "errors.csv", "items", "summary.json"]

    (tmp_path / "ray" / "data" / "part-00002.parquet").unlink()
    again = run_synth_faces(config(tmp_path / "ray", **RAY))
    assert again["counts"]["chunks_processed_this_run"] == 1 and again["written"] == 2 and again["skipped_existing"] == 8
    assert _shards(tmp_path / "ray") == shards
    # a changed n changes only the last chunk (its range), which is redone
    more = run_synth_faces(config(tmp_path / "ray", **RAY).model_copy(update={"n": 12}))
    assert more["counts"]["chunks_processed_this_run"] == 1 and more["written"] == 4 and more["skipped_existing"] == 8


def test_synth_faces_over_real_backgrounds_on_ray_equal_local(ray_session, shared, tmp_path):
    """The driver builds the background bank once and writes it beside the data; tasks read it
    there (not the source photos) and draw the same faces as the local loop."""
    photo = shared / "media" / "faces-wild" / "deepface" / "img1.jpg"
    common = dict(n=4, size=64, rows_per_shard=2, contact_sheet=0, backgrounds=[str(photo)], background_bank_size=4,
                  background_cache=str(tmp_path / "cache"), **BARE)
    local = run_synth_faces(SyntheticFacesConfig(output=str(tmp_path / "local"), executor="local", workers=1, **common))
    on_ray = run_synth_faces(SyntheticFacesConfig(output=str(tmp_path / "ray"), **RAY, **common))
    assert local["written"] == on_ray["written"] == 4
    assert _shards(tmp_path / "ray") == _shards(tmp_path / "local")
    with np.load(tmp_path / "ray" / "background_bank.npz") as bank:
        assert bank["patches"].shape == (4, 64, 64, 3)
    plain = run_synth_faces(SyntheticFacesConfig(output=str(tmp_path / "plain"), executor="local", workers=1,
                                                 **{**common, "backgrounds": []}))
    assert plain["written"] == 4 and _shards(tmp_path / "plain") != _shards(tmp_path / "local")


def test_synth_faces_to_s3_on_ray_through_the_job_entrypoint(ray_session, s3_bucket, monkeypatch, capsys):
    out = f"{s3_bucket}/synthetic/faces"
    argv = ["jobs/synth.py", "faces", "--n", "3", "--out", out, "--size", "64", "--set", "rows_per_shard=2",
            "num_cpus_per_task=0.5", "contact_sheet=2"] + [f"{k}={str(v).lower()}" for k, v in BARE.items()]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(Path(__file__).parents[1] / "jobs" / "synth.py"), run_name="__main__")
    assert exited.value.code == 0 and "3 written" in capsys.readouterr().out
    summary = json.loads(storage.read_text(f"{out}/summary.json"))
    assert summary["job"] == "synth faces" and summary["config"]["executor"] == "ray" and summary["counts"]["chunks"] == 2
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/data/part-00001.parquet")))
    assert table.column("record_id").to_pylist() == ["synthetic-s0/00000002"]


def test_synth_videos_on_ray_equal_local(ray_session, tmp_path):
    def config(out: Path, **kw) -> SyntheticVideosConfig:
        return SyntheticVideosConfig(n=2, frames=3, size=64, face_px=(30.0, 40.0), output=str(out), **kw)

    local = run_synth_videos(config(tmp_path / "local", executor="local", workers=1))
    on_ray = run_synth_videos(config(tmp_path / "ray", **RAY))
    assert local["written"] == on_ray["written"] == 2 and not on_ray["errors"]
    for name in ("synthetic-0000", "synthetic-0001"):
        a, b = np.load(tmp_path / "local" / f"{name}.gt.npz"), np.load(tmp_path / "ray" / f"{name}.gt.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    (tmp_path / "ray" / "synthetic-0001.mp4").unlink()
    again = run_synth_videos(config(tmp_path / "ray", **RAY))
    assert again["counts"]["chunks_processed_this_run"] == 1 and again["skipped_existing"] == 1
    assert (tmp_path / "ray" / "synthetic-0001.mp4").stat().st_size > 0
