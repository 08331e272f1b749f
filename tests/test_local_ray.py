"""The local Ray a job starts (``facepgn.cluster.connect``) keeps a worker process for every
fractional task slot: between two waves of tasks no worker is killed and replaced (a new worker
would import torch and load the models again). Run in a fresh process: its own Ray, 1 CPU, tasks
of 0.25 CPU (4 slots), the second wave after the workers sat idle longer than Ray's idle-kill
threshold (1 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from facepgn.cluster import WORKER_SOFT_LIMIT_ENV

SCRIPT = """
import json, os, time
import ray
from facepgn.cluster import connect

connect(num_cpus=1, include_dashboard=False)

@ray.remote(num_cpus=0.25)
def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()

waves = []
for _ in range(3):
    waves.append(sorted(set(ray.get([pid_after.remote(1.0) for _ in range(4)]))))
    time.sleep(4.0)  # idle: Ray kills idle workers above its soft limit after 1 s
print(json.dumps(waves))
"""


def waves(env_extra: dict[str, str]) -> list[list[int]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", WORKER_SOFT_LIMIT_ENV)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, **env_extra}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_local_ray_keeps_a_worker_per_fractional_slot():
    first, second, third = waves({})
    assert len(set(first) | set(second)) >= 3  # several tasks at once on 1 CPU: several workers
    assert set(third) <= set(first) | set(second), (first, second, third)  # the third wave: the same processes


def test_with_one_worker_per_cpu_the_idle_workers_are_replaced():
    """What the setting prevents (Ray's default, one worker per CPU): the check above can fail."""
    first, second, third = waves({WORKER_SOFT_LIMIT_ENV: "1"})
    assert not set(third) <= set(first) | set(second), (first, second, third)


def test_whole_item_jobs_keep_only_the_pool_cap_as_backpressure():
    """Per-item jobs (``whole_item_tasks``) run with Ray Data's task-pool cap as their only
    backpressure, and the process's own setting comes back afterwards."""
    import ray.data
    from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES, ConcurrencyCapBackpressurePolicy

    from facepgn.pipelines.runner import BACKPRESSURE_POLICIES_KEY, ray_data_context

    ctx = ray.data.DataContext.get_current()
    assert ctx.get_config(BACKPRESSURE_POLICIES_KEY, ENABLED_BACKPRESSURE_POLICIES) == ENABLED_BACKPRESSURE_POLICIES
    with ray_data_context(whole_item_tasks=True):
        assert ctx.get_config(BACKPRESSURE_POLICIES_KEY) == [ConcurrencyCapBackpressurePolicy]
    assert ctx.get_config(BACKPRESSURE_POLICIES_KEY, ENABLED_BACKPRESSURE_POLICIES) == ENABLED_BACKPRESSURE_POLICIES
    with ray_data_context():
        assert ctx.get_config(BACKPRESSURE_POLICIES_KEY, ENABLED_BACKPRESSURE_POLICIES) == ENABLED_BACKPRESSURE_POLICIES
