"""Shared test fixtures: the shared data folder, one moto S3 server and one local Ray per session.

The moto server starts before Ray so that Ray's workers inherit ``AWS_ENDPOINT_URL`` and the fake
credentials from the environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from facepgn.paths import shared_dir

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``FACEPGN_SHARED``, default ``../shared``). Tests need it."""
    path = shared_dir()
    if not (path / "README.md").exists():
        pytest.fail(f"shared data folder not found at {path}; set FACEPGN_SHARED")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real moto S3 server on 127.0.0.1; sets the AWS_* environment for s3fs and boto3."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the moto server; returns ``s3://<bucket>``."""
    import boto3

    name = f"facepgn-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole test session (each ray.init costs ~5 s)."""
    import ray

    from facepgn.cluster import connect

    connect(num_cpus=2, include_dashboard=False)  # as the jobs start a local Ray (a no-op when one runs)
    yield ray
    ray.shutdown()


# == H4 preprocess: frame-pair shards from real videos ==

FRAME_PAIR_FIXTURE_VIDEOS = ("d10.mp4", "short_hamilton_clip.mp4")


@pytest.fixture(scope="session")
def frame_pair_shards(ray_session, shared, tmp_path_factory) -> str:
    """A tiny preprocess output (via the Ray pipeline) from 2 real videos: d10.mp4 (one face) and
    short_hamilton_clip.mp4 (2-3 faces, several tracks); 10 sampled frames each at 10 fps, 64 px
    crops, 2D landmark pseudo-labels. Returns the output folder (``shards/``, ``summary.json``);
    read it with ``facepgn.pipelines.preprocess.read_frame_pairs(path)`` or pyarrow."""
    from facepgn.config import PreprocessConfig
    from facepgn.pipelines.preprocess import run_preprocess

    inputs = tmp_path_factory.mktemp("frame_pair_videos")
    for name in FRAME_PAIR_FIXTURE_VIDEOS:
        (inputs / name).symlink_to(shared / "media" / "videos" / name)
    output = tmp_path_factory.mktemp("frame_pair_shards")
    cfg = PreprocessConfig(
        input=str(inputs), output=str(output), image_size=64, max_frames_per_video=10, target_fps=10.0, max_gap=3
    )
    summary = run_preprocess(cfg, progress=False)
    assert summary["pairs_written"] > 0, summary
    return str(output)


@pytest.fixture(scope="session")
def synthetic_faces_dir(tmp_path_factory) -> str:
    """64 synthetic labelled faces (128 px, seed 0) as two face-record Parquet shards (facepgn.synthetic)."""
    from facepgn.synthetic import FaceSettings, generate_faces

    out = tmp_path_factory.mktemp("synthetic_faces")
    summary = generate_faces(str(out), 64, seed=0, settings=FaceSettings(size=128), rows_per_shard=32, workers=1)
    assert summary["written"] == 64, summary
    return str(out)


# == H5 method: synthetic frame pairs and a briefly trained model file ==


@pytest.fixture(scope="session")
def synthetic_pairs_dir(tmp_path_factory) -> str:
    """8 synthetic frame pairs (128 px) with exact flow, as one frame-pair Parquet shard (no 2D
    pseudo-labels: the pairs are unlabelled, as real video pairs without the landmark model)."""
    import pyarrow.parquet as pq

    from facepgn import records
    from facepgn.synthetic import synthetic_pair_rows

    rows, _ = synthetic_pair_rows(8, seed=5, size=128)
    for row in rows:
        row["landmarks_2d_a"] = row["landmarks_2d_b"] = None
    out = tmp_path_factory.mktemp("synthetic_pairs")
    pq.write_table(records.to_table(rows, "frame_pair"), str(out / "part-00000.parquet"))
    return str(out)


@pytest.fixture(scope="session")
def trained_model_file(synthetic_faces_dir, synthetic_pairs_dir, tmp_path_factory) -> str:
    """A model file (128 px input, PGN pose, default losses) trained for 30 steps on the synthetic
    faces and pairs (~10 s on 2 cores): real weights for inference/export tests, not an accurate
    model. Its training folder (``summary.json``, ``checkpoint.pt``) is the file's parent."""
    from facepgn.config import TrainConfig
    from facepgn.train.loop import train

    out = tmp_path_factory.mktemp("trained_model")
    cfg = TrainConfig.model_validate(
        {
            "data": {"labelled": [synthetic_faces_dir], "pairs": [synthetic_pairs_dir], "labelled_batch_size": 8, "pair_batch_size": 4},
            "optim": {"lr": 3e-3, "warmup_steps": 5},
            "steps": 30,
            "log_every": 10,
            "checkpoint_every": 0,
            "tensorboard": False,
            "output_dir": str(out),
            "threads": 1,  # small convs: one thread is as fast on an idle CPU and far faster on a busy one
        }
    )
    summary = train(cfg)
    return summary["model_file"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    their nets are small, so one thread is as fast on an idle CPU and much faster on a busy one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
