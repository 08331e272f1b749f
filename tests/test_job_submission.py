"""The stage entrypoints in ``jobs/`` run as real Ray jobs on a real cluster with token auth.

A module fixture starts its own Ray head with ``ray start --head --block`` (the venv's ``ray``, its
own ports and temp dir, ``RAY_AUTH_MODE=token`` with a fresh token in ``RAY_AUTH_TOKEN``), in a new
process session, so that stopping it kills exactly the processes it started and never the test
session's embedded Ray (the ``ray_session`` fixture, which lives under the default temp dir).
Jobs are submitted with ``JobSubmissionClient`` and the repo as ``working_dir``, as users do with
``ray job submit --working-dir .``; inputs and outputs are absolute paths (a job runs in a copy of
the working dir).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_processes import free_port, session_pids, stop_session

from facepgn.cluster import worker_env
from facepgn.paths import REPO_ROOT, shared_dir

VENV_BIN = Path(sys.executable).parent
# What a job's working_dir upload leaves out (Ray already skips .git and .venv by default).
WORKING_DIR_EXCLUDES = [".git", ".venv", "runs", "outputs", "**/__pycache__", ".pytest_cache", "*.egg-info"]






@dataclass
class LocalRayHead:
    """A Ray head started by this test module, with its Jobs API address and token."""

    process: subprocess.Popen
    address: str
    token: str
    temp_dir: str

    def client(self, token: str | None = None):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {token or self.token}"})

    def log_tail(self, n: int = 3000) -> str:
        try:
            return Path(self.temp_dir, "ray-start.log").read_text()[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_session(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_head(num_cpus: int = 2, timeout_s: float = 60.0) -> LocalRayHead:
    temp_dir = tempfile.mkdtemp(prefix="fpj", dir="/tmp")  # short: Ray's socket paths are length-limited
    token = secrets.token_hex(32)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the jobs' `python` is the venv's
        RAY_USAGE_STATS_ENABLED="0",
        **worker_env(num_cpus),
    )
    env.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        "--num-cpus", str(num_cpus), "--num-gpus", "0",
        "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-listen-port", str(free_port()),
        "--include-dashboard", "true",
        "--temp-dir", temp_dir, "--disable-usage-stats",
    ]
    log = open(Path(temp_dir, "ray-start.log"), "w")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = LocalRayHead(process, f"http://127.0.0.1:{dashboard_port}", token, temp_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = head.log_tail()
            head.stop()
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{tail}")
        try:
            head.client().list_jobs()
            return head
        except Exception:  # noqa: BLE001 - the cluster is still starting: retry until the deadline
            if time.monotonic() > deadline:
                tail = head.log_tail()
                head.stop()
                raise RuntimeError(f"Ray head did not come up in {timeout_s}s:\n{tail}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """The head starts after the moto S3 server: it and its jobs get S3 credentials and endpoint
    from the environment (AWS_*), as cluster nodes get them from their instance role / env."""
    head = start_local_head()
    yield head
    head.stop()
    assert not session_pids(head.process.pid), "processes of the test's Ray head survived"


def _submit(client, timeout_s: float = 30.0, **kwargs) -> str:
    """submit_job, retried while the head's job agent is still starting ("No available agent")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def run_job(head: LocalRayHead, entrypoint: str, timeout_s: float = 120.0) -> str:
    """Submit ``entrypoint`` with the repo as working_dir, wait for it, return its logs; fail with
    the log tail unless it SUCCEEDED."""
    from ray.job_submission import JobStatus

    client = head.client()
    job_id = _submit(
        client,
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": str(REPO_ROOT),
            "excludes": WORKING_DIR_EXCLUDES,
            # The uploaded copy has no ../shared beside it: name the data folder explicitly, as a
            # cluster user points FACEPGN_SHARED / FACEPGN_CACHE at their assets.
            "env_vars": {"FACEPGN_SHARED": str(shared_dir())},
        },
    )
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {entrypoint!r} still {status} after {timeout_s}s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {entrypoint!r} ended {status}:\n{logs[-4000:]}"
    return logs


def test_jobs_api_requires_the_token(ray_head):
    with pytest.raises(Exception, match="(?i)auth|401|token"):
        ray_head.client(token="0" * 64).list_jobs()


def test_job_imports_facepgn_from_the_working_dir(ray_head):
    logs = run_job(
        ray_head,
        "python -c \"import facepgn, os, sys; "
        "print('FACEPGN', facepgn.__file__, sys.executable, os.environ['RAY_ADDRESS'])\"",
        timeout_s=60,
    )
    line = next(ln for ln in logs.splitlines() if ln.startswith("FACEPGN"))
    _, module_file, python, address = line.split()
    # The job runs the uploaded copy of the repo (runtime_resources/working_dir_files), not the
    # checkout, with the cluster's python, and is pointed at this cluster.
    assert "working_dir_files" in module_file and Path(python).parent == VENV_BIN
    assert address and address != "auto"


# ---- the stages, chained: preprocess -> train -> infer -------------------------------------------

# Outputs of one stage that the next one reads (tests run in file order).
_outputs: dict[str, str] = {}


def test_preprocess_job(ray_head, shared, s3_bucket):
    """Real video in, frame-pair shards out to S3 (the next job reads them from there)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from facepgn import storage
    from facepgn.records import check_table

    video = shared / "media" / "videos" / "d0.mp4"
    out = f"{s3_bucket}/pairs"
    logs = run_job(
        ray_head,
        f"python jobs/preprocess.py --config configs/preprocess.yaml --input {video} --output {out} "
        "--set max_frames_per_video=12 flow_preset=ultrafast",
    )
    assert f"-> {out}" in logs, "the job should print where its outputs went"
    summary = json.loads(storage.read_text(f"{out}/summary.json"))
    assert summary["videos_read"] == 1 and summary["pairs_written"] > 0
    shards = storage.list_files(out, extensions=[".parquet"])
    assert shards and all(p.startswith("s3://") for p in shards)
    fs, _ = storage.pyarrow_filesystem(out)
    table = pa.concat_tables([pq.read_table(storage.pyarrow_filesystem(p)[1], filesystem=fs) for p in shards])
    check_table(table, "frame_pair", out)
    assert table.num_rows == summary["pairs_written"]
    _outputs["pairs"] = out


def _stage_available(stage: str) -> bool:
    return (REPO_ROOT / "jobs" / f"{stage}.py").exists() and (REPO_ROOT / "facepgn" / "commands" / f"{stage}.py").exists()


def test_train_job(ray_head, synthetic_faces_dir, tmp_path_factory):
    if not _stage_available("train"):
        pytest.skip("jobs/train.py / facepgn train not written yet")
    import json

    assert "pairs" in _outputs, "needs the preprocess job's output"
    out = tmp_path_factory.mktemp("job_train")
    config = ["--config", "configs/train.yaml"] if (REPO_ROOT / "configs" / "train.yaml").exists() else []
    logs = run_job(
        ray_head,
        " ".join(["python jobs/train.py", *config, "--set",
                  f"data.labelled=[{synthetic_faces_dir}]", f"data.pairs=[{_outputs['pairs']}]",
                  "steps=4", "data.labelled_batch_size=4", "data.pair_batch_size=2", "checkpoint_every=0",
                  # one worker keeps the test inside its budget; DDP itself is tested in tests/test_ray_train*.py
                  "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "validation.holdout_fraction=0",
                  "tensorboard=false",
                  f"output_dir={out}", f"ray.storage_path={out}/ray", "ray.name=job-test"]),
        timeout_s=150,
    )
    assert str(out) in logs, "the job should print where its outputs went"
    assert (out / "model.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["frame_pairs"] > 0 and summary["counts"]["labelled_records"] == 64, summary["counts"]
    assert summary["counts"]["steps"] == 4 and not summary["errors"]
    _outputs["model"] = str(out / "model.pt")


def test_infer_job(ray_head, shared, tmp_path_factory, request):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from facepgn.records import check_table

    # The model the train job wrote; without a train stage yet, the plain loop's (same file format).
    model = _outputs.get("model") or request.getfixturevalue("trained_model_file")
    video = shared / "media" / "videos" / "d0.mp4"
    out = tmp_path_factory.mktemp("job_infer")
    logs = run_job(
        ray_head,
        f"python jobs/infer.py --config configs/infer.yaml --set model={model} input={video} output={out} "
        "max_frames=8 overlay=true",
    )
    assert f"-> {out}" in logs, "the job should print where its outputs went"
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["videos_done_this_run"] == 1 and counts["videos_failed"] == 0
    assert counts["rows_this_run"] > 0
    rows = sorted(p for p in out.rglob("*.parquet"))
    assert rows
    table = pa.concat_tables([pq.read_table(p) for p in rows])
    check_table(table, "inference_row", str(out))
    assert table.num_rows == counts["rows_this_run"]
    assert sorted((out / "overlays").glob("*.mp4")), "overlay video missing"
