"""A real two-node Ray cluster on this machine: preprocess -> train (a worker on each node) -> infer,
all on S3 (the moto server), and local output paths refused there before any work.

The module fixture starts a head and a second node with ``ray start --block`` (the venv's ``ray``),
each with one CPU, its own ports, its own short ``--temp-dir`` and token authentication
(``RAY_AUTH_MODE=token``, a fresh token in ``RAY_AUTH_TOKEN``). Each node runs in a new process
session, so teardown kills exactly the processes it started (even when a test failed), never the
test session's embedded Ray. Both nodes get the moto endpoint and credentials (AWS_*) in their
environment, as cluster nodes get them from their instance role. The stages run as ``facepgn``
subprocesses pointed at the cluster with ``RAY_ADDRESS`` and the token.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray_processes import free_port, session_pids, stop_session

from facepgn import storage
from facepgn.cluster import worker_env
from facepgn.paths import shared_dir

pytestmark = pytest.mark.slow  # (still runs in CI: every test does)

VENV_BIN = Path(sys.executable).parent
VIDEOS = ("d0.mp4", "d3.mp4")  # short real videos: 78 and 448 frames, one face each
TINY_MODEL = ["model.input_size=64", "model.num_id=10", "model.num_exp=5", "model.pgn_width=0.25", "model.regressor_width=0.25"]
NODE_LINE = re.compile(r"facepgn train: worker (\d+)/(\d+) on node ([0-9a-f]+)")








def _node_ports() -> list[str]:
    """The ports one node listens on, all free ones (two nodes share this host), and its own worker-port range."""
    base = random.randrange(20000, 30000, 200)  # below the ephemeral range the free ports come from
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    args = [part for flag in flags for part in (flag, str(free_port()))]
    return args + ["--min-worker-port", str(base), "--max-worker-port", str(base + 150)]


@dataclass
class TwoNodeCluster:
    gcs_address: str
    env: dict[str, str]  # for drivers: RAY_ADDRESS, the token, AWS_*
    temp_dirs: list[str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)

    def log_tail(self, n: int = 2000) -> str:
        return "\n".join(Path(d, "ray-start.log").read_text()[-n:] for d in self.temp_dirs if Path(d, "ray-start.log").exists())

    def start_node(self, head: bool) -> None:
        temp_dir = self.temp_dirs[len(self.processes)]
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
               "--node-ip-address", "127.0.0.1", "--object-store-memory", str(300 * 2**20),
               "--temp-dir", temp_dir, "--disable-usage-stats", *_node_ports()]
        if head:
            port = self.gcs_address.rsplit(":", 1)[1]
            cmd += ["--head", "--port", port, "--ray-client-server-port", str(free_port()), "--include-dashboard", "false"]
        else:
            cmd += ["--address", self.gcs_address]
        env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        log = open(Path(temp_dir, "ray-start.log"), "w")
        self.processes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait_for_head(self, timeout_s: float = 60.0) -> None:
        """Until the head's GCS port accepts connections (a second node can join then)."""
        host, port = self.gcs_address.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.processes[0].poll() is not None:
                    raise RuntimeError(f"the Ray head did not come up:\n{self.log_tail()}") from None
                time.sleep(0.3)

    def alive_nodes(self, want: int, timeout_s: float = 90.0) -> list[str]:
        """The ids of the alive nodes once there are ``want`` of them (asked as a driver would)."""
        script = ("import json, time, ray\n"
                  "ray.init(configure_logging=False, log_to_driver=False)\n"
                  "while True:\n"
                  "    ids = sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])\n"
                  f"    if len(ids) >= {want}:\n"
                  "        print('NODES', json.dumps(ids)); break\n"
                  "    time.sleep(0.5)\n")
        deadline = time.monotonic() + timeout_s
        while True:  # a probe may fail while the nodes still start ("timed out during startup" on a busy machine): ask again
            asking = subprocess.Popen([sys.executable, "-c", script], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while asking.poll() is None:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):  # too slow, or a node died
                    asking.kill()
                    break
                time.sleep(0.5)
            out, err = asking.communicate()
            line = next((ln for ln in out.splitlines() if ln.startswith("NODES ")), None)
            if line is not None:
                return json.loads(line[len("NODES "):])
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"cluster did not come up with {want} nodes: {err[-2000:]}\n{self.log_tail()}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_session(process)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_server):
    """The two-node cluster (after the moto server: the nodes inherit AWS_* from the environment)."""
    token = secrets.token_hex(32)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_V2_ENABLED="1",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", RAY_DEDUP_LOGS="0", FACEPGN_SHARED=str(shared_dir()),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **worker_env(1),  # each node has 1 CPU
    )
    temp_dirs = [tempfile.mkdtemp(prefix=p, dir="/tmp") for p in ("fmh", "fmw")]  # short: unix socket paths are length-limited
    gcs = f"127.0.0.1:{free_port()}"
    env["RAY_ADDRESS"] = gcs
    c = TwoNodeCluster(gcs, env, temp_dirs)
    t0 = time.monotonic()
    try:
        c.start_node(head=True)
        c.wait_for_head()
        c.start_node(head=False)
        c.node_ids = c.alive_nodes(2)
        assert len(c.node_ids) == 2, c.log_tail()
        print(f"two-node cluster up in {time.monotonic() - t0:.1f} s")
        yield c
    finally:
        c.stop()
        assert not any(session_pids(p.pid) for p in c.processes), "processes of the test's Ray nodes survived"


@pytest.fixture(scope="module")
def bucket(s3_server, shared, synthetic_faces_dir) -> str:
    """A bucket with the inputs: the videos (``videos/``) and synthetic labelled faces (``faces/``)."""
    import boto3

    name = f"facepgn-multinode-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    fs, _ = storage.get_fs(f"s3://{name}")
    for video in VIDEOS:
        fs.put_file(str(shared / "media" / "videos" / video), f"{name}/videos/{video}")
    for shard in sorted(Path(synthetic_faces_dir).rglob("*.parquet")):
        fs.put_file(str(shard), f"{name}/faces/{shard.name}")
    return f"s3://{name}"


def facepgn(cluster: TwoNodeCluster, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    """A ``facepgn`` command run as a driver of the cluster."""
    t0 = time.monotonic()
    done = subprocess.run([str(VENV_BIN / "facepgn"), *args], env=cluster.env, capture_output=True, text=True, timeout=timeout_s)
    print(f"facepgn {args[0]}: {time.monotonic() - t0:.1f} s")
    return done


def ok(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{done.args[1:3]} exited {done.returncode}:\n{output[-4000:]}"
    return output


def read_json(path: str) -> dict:
    storage.get_fs(path)[0].invalidate_cache()  # written by other processes
    return json.loads(storage.read_text(path))


def test_preprocess_train_infer_across_two_nodes(cluster, bucket):
    from facepgn.outputs import read_rows

    pairs, train, recon = f"{bucket}/pairs", f"{bucket}/train", f"{bucket}/recon"
    ok(facepgn(cluster, "preprocess", "--input", f"{bucket}/videos", "--output", pairs, "--set",
               "decode.max_frames_per_video=10", "decode.target_fps=10", "crops.size=64", "pairs.max_gap=3"))
    summary = read_json(f"{pairs}/summary.json")
    assert summary["videos_read"] == 2 and summary["pairs_written"] > 0, summary["counts"]

    output = ok(facepgn(cluster, "train", "--set", *TINY_MODEL, f'data.labelled=["{bucket}/faces"]', f'data.pairs=["{pairs}"]',
                        "data.labelled_batch_size=4", "data.pair_batch_size=2", "steps=3", "checkpoint_every=0", "log_every=1",
                        "tensorboard=false", "validation.holdout_fraction=0", "optim.warmup_steps=1",
                        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "scaling.placement_strategy=SPREAD",
                        f"output_dir={train}", f"ray.storage_path={bucket}/ray", "ray.name=multinode"))
    workers = {int(rank): node for rank, world, node in NODE_LINE.findall(output) if world == "2"}
    assert set(workers) == {0, 1}, output[-3000:]
    assert workers[0] != workers[1] and set(workers.values()) == set(cluster.node_ids), (workers, cluster.node_ids)
    summary = read_json(f"{train}/summary.json")
    assert summary["counts"]["steps"] == 3 and summary["counts"]["workers"] == 2 and summary["counts"]["frame_pairs"] > 0
    assert storage.exists(f"{train}/model.pt") and storage.size(f"{train}/model.pt") > 0

    ok(facepgn(cluster, "infer", "--model", f"{train}/model.pt", "--input", f"{bucket}/videos", "--output", recon,
               "--set", "decode.max_frames=4"))
    summary = read_json(f"{recon}/summary.json")
    assert summary["counts"]["videos_done_this_run"] == 2 and summary["counts"]["items_failed"] == 0, summary["counts"]
    for video in VIDEOS:
        item_id = video.rsplit(".", 1)[0]
        assert read_rows(recon, item_id).num_rows > 0, item_id


def _refusal(done: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("facepgn: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_local_outputs_refused_on_two_nodes_unless_declared_shared(cluster, bucket, tmp_path):
    local = tmp_path / "pairs"
    line = _refusal(facepgn(cluster, "preprocess", "--input", f"{bucket}/videos", "--output", str(local)))
    assert line == (f"facepgn: error: output {local}: a local path, but this Ray cluster has 2 nodes and each would write "
                    f"to its own disk; use an s3:// path, or set shared_storage=true if every node mounts {local} (NFS, ...)")
    assert not local.exists(), "nothing may be written before the refusal"

    recon = tmp_path / "recon"
    line = _refusal(facepgn(cluster, "infer", "--input", f"{bucket}/videos", "--output", str(recon)))
    assert line.startswith(f"facepgn: error: output {recon}: a local path, but this Ray cluster has 2 nodes")
    assert not recon.exists() or not any(recon.iterdir()), "nothing may be written before the refusal"

    line = _refusal(facepgn(cluster, "train", "--set", *TINY_MODEL, f'data.labelled=["{bucket}/faces"]', "data.labelled_batch_size=4", "steps=1",
                            f"output_dir={tmp_path / 'train'}", f"ray.storage_path={bucket}/ray-refused"))
    assert line.startswith(f"facepgn: error: output_dir {tmp_path / 'train'}: a local path, but this Ray cluster has 2 nodes")

    declared = tmp_path / "declared"  # shared_storage=true: accepted (no video processed: max_videos=0)
    ok(facepgn(cluster, "preprocess", "--input", f"{bucket}/videos", "--output", str(declared), "--set", "shared_storage=true", "max_videos=0"))
    assert json.loads((declared / "summary.json").read_text())["counts"]["videos_found"] == 2
