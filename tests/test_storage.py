"""Local and s3:// storage through one API, on a real moto S3 server."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from facepgn import storage


def test_local_atomic_write_and_listing(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.atomic_write_bytes(str(target), b"hello")
    assert target.read_bytes() == b"hello"
    storage.atomic_write_text(str(tmp_path / "a" / "c.txt"), "x")
    # no temporary files are left behind
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin", "c.txt"]
    assert storage.list_files(str(tmp_path), [".bin"]) == [str(target)]
    assert storage.list_files(str(tmp_path / "a" / "*.txt")) == [str(tmp_path / "a" / "c.txt")]


def test_failed_local_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    try:
        storage.atomic_write_bytes(str(target), object())  # type: ignore[arg-type]
    except TypeError:
        pass
    assert os.listdir(tmp_path) == []


def test_s3_roundtrip_and_pyarrow(s3_bucket):
    path = storage.join(s3_bucket, "dir", "x.txt")
    storage.atomic_write_text(path, "hi")
    assert storage.exists(path)
    assert storage.read_text(path) == "hi"
    assert storage.list_files(s3_bucket, [".txt"]) == [path]

    fs, root = storage.pyarrow_filesystem(storage.join(s3_bucket, "tables"))
    table = pa.table({"a": [1, 2, 3]})
    pq.write_table(table, f"{root}/t.parquet", filesystem=fs)
    assert pq.read_table(f"{root}/t.parquet", filesystem=fs).equals(table)


def test_s3_client_fails_fast_and_follows_the_environment(s3_server, monkeypatch):
    """One client per AWS environment: the same while it is unchanged, a new one when the
    credentials change (a cached client would keep the old ones); short timeouts, few retries."""
    first = storage.s3_filesystem()
    assert storage.s3_filesystem() is first
    assert first.retries == storage.S3_RETRIES and first.config_kwargs["connect_timeout"] == storage.S3_CONNECT_TIMEOUT_S
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    assert storage.s3_filesystem() is not first


def test_pyarrow_filesystem_pickles_with_its_fault_translation(s3_bucket):
    """Ray ships the filesystem to its tasks: it must pickle and still translate faults there."""
    import pickle

    from facepgn.errors import StorageError

    fs, root = storage.pyarrow_filesystem("s3://facepgn-no-such-bucket-x/t.parquet")
    again = pickle.loads(pickle.dumps(fs))
    try:
        again.open_output_stream(root).close()
    except StorageError as exc:
        assert str(exc) == "s3://facepgn-no-such-bucket-x/t.parquet: bucket does not exist"
    else:
        raise AssertionError("writing into a missing bucket succeeded")
