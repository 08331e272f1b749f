"""Benchmark: planning a run over a big manifest on S3 whose items are mostly done.

For each size (10,000 and 100,000 videos by default) the bench starts nothing but a moto S3 server
(in this process, like the tests), writes a JSONL manifest and done markers for ``--done`` of the
items (preprocess markers, written into moto's store or, ``--setup http``, by concurrent PUTs; the setup
time is printed), then times, in
the same process:

* ``old``: what planning did before: list the markers, then one GET per marker, one after another
  (``read_markers_one_by_one`` below is that code). At the larger sizes it is timed on the first
  ``--old-sample`` markers and extrapolated (marked so; the GETs only: the old listing is
  quadratic in the number of markers, see ``read_markers_one_by_one``), unless ``--old-full``;
* ``new, first run``: :func:`facepgn.pipelines.preprocess.plan_videos` with no compacted file yet
  (one listing, the markers fetched concurrently in one batch; timed where the old way is timed in full);
* ``compact``: :func:`facepgn.markers.compact_markers` (what a run does at its end, from the bodies it knows);
* ``new``: ``plan_videos`` again (one listing plus one GET of the compacted file): the steady state;
* ``infer``: :func:`facepgn.pipelines.infer.plan_items` over the same manifest (listing only).

Every S3 request is counted with botocore's ``before-send`` hook, so the request counts printed
are what a real S3 would be sent; moto answers a request in about a millisecond here, real S3 in
tens of milliseconds, so on S3 the times of the request-bound rows grow by that factor.

Usage: ``.venv/bin/python bench/bench_planning.py [--sizes 10000 100000] [--done 0.9] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> object:
    """A moto S3 server on 127.0.0.1 and the AWS_* environment that points s3fs at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    return server


@contextlib.contextmanager
def count_requests():
    """S3 requests sent while inside, by operation."""
    from facepgn import storage

    fs = storage.s3_filesystem()
    fs.connect()
    counts: collections.Counter = collections.Counter()

    def hook(event_name: str, **_kwargs):
        counts[event_name.rsplit(".", 1)[-1]] += 1

    fs.s3.meta.events.register("before-send.s3", hook)
    try:
        yield counts
    finally:
        fs.s3.meta.events.unregister("before-send.s3", hook)


def read_markers_one_by_one(folder: str, key: str, limit: int | None = None) -> dict[str, dict]:
    """The planning of before: list the markers (``storage.list_files``), then read each (one GET
    each, in turn). ``limit``: read only the first ``limit``, listed with the linear listing of
    :func:`facepgn.markers.list_markers` instead: ``list_files`` on a flat S3 folder asks s3fs's
    cache for every file it listed, a scan of the whole listing each (quadratic: about as slow as
    the GETs at 10,000 markers, far slower at 100,000)."""
    from facepgn import markers, storage

    if limit is None:
        paths = storage.list_files(folder, extensions=[".json"], recursive=False)
    else:
        paths = [storage.join(folder, f"{item_id}.json") for item_id in list(markers.list_markers(folder))[:limit]]
    found = {}
    for path in paths:
        data = json.loads(storage.read_text(path))
        found[data[key]] = data
    return found


def marker(i: int) -> dict:
    """A preprocess done marker (VideoResult's fields), a few hundred bytes as real ones."""
    vid = f"clip-{i:06d}"
    return {"video_id": vid, "path": f"s3://corpus/raw/{vid}.mp4", "subject_id": vid, "status": "ok", "reason": "",
            "frames_sampled": 120, "faces_detected": 118, "tracks": 1, "pairs": 80, "shards": [f"shards/{vid}/part-00000.parquet"],
            "rejections": {"blur": 3, "flow_small": 5}, "timings": {"decode": 0.41, "detect": 0.9, "flow": 1.2, "write": 0.05},
            "seconds": 3.1, "cpu_seconds": 2.9, "peak_rss_mb": 410.5, "width": 1280, "height": 720, "fps": 25.0}


def setup(bucket: str, n: int, done: float, how: str) -> tuple[float, int]:
    """Write the manifest and the done markers; returns (seconds, markers written). ``how``:
    ``http``: concurrent PUTs through s3fs (what a job does; moto takes a few ms of CPU each),
    ``backend``: straight into the in-process moto server's store (the same objects, far faster)."""
    import boto3

    from facepgn import storage

    started = time.perf_counter()
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket[5:])
    lines = [json.dumps({"path": f"s3://corpus/raw/clip-{i:06d}.mp4"}) for i in range(n)]
    storage.atomic_write_text(f"{bucket}/manifest.jsonl", "\n".join(lines) + "\n")
    n_done = int(round(n * done))
    bodies = ((f"out/videos/clip-{i:06d}.json", json.dumps(marker(i), indent=1).encode()) for i in range(n_done))
    if how == "backend":
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, body in bodies:
            backend.put_object(bucket[5:], key, body)
    else:
        fs, _ = storage.get_fs(bucket)
        batch: dict[str, bytes] = {}
        for key, body in bodies:  # concurrent PUTs (s3fs sends a batch at once), in slices
            batch[f"{bucket[5:]}/{key}"] = body
            if len(batch) == 2000:
                fs.pipe(batch)
                batch = {}
        if batch:
            fs.pipe(batch)
    return time.perf_counter() - started, n_done


def timed(fn, what: str = ""):
    if what:
        print(f"  [{time.strftime('%H:%M:%S')}] {what} ...", file=sys.stderr, flush=True)
    with count_requests() as counts:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, dict(counts)


def bench_size(n: int, args) -> dict:
    from facepgn import markers
    from facepgn.config import InferConfig, PreprocessConfig
    from facepgn.pipelines.infer import plan_items
    from facepgn.pipelines.preprocess import plan_videos

    bucket = f"s3://bench-planning-{uuid.uuid4().hex[:8]}"
    print(f"  [{time.strftime('%H:%M:%S')}] setup: {n} entries ...", file=sys.stderr, flush=True)
    setup_s, n_done = setup(bucket, n, args.done, args.setup)
    folder = f"{bucket}/out/videos"
    cfg = PreprocessConfig(input=f"{bucket}/manifest.jsonl", output=f"{bucket}/out")
    row: dict = {"entries": n, "done": n_done, "setup_s": round(setup_s, 2)}

    limit = None if args.old_full or n_done <= args.old_sample else args.old_sample
    listed, list_s, list_req = timed(lambda: markers.list_markers(folder), "one listing of the markers")
    assert len(listed) == n_done
    row["listing"] = {"seconds": round(list_s, 2), "requests": sum(list_req.values())}
    old, old_s, old_req = timed(lambda: read_markers_one_by_one(folder, "video_id", limit), "old: one GET per marker")
    if limit:  # the listing once, the GETs scaled up to every marker
        scale = n_done / len(old)
        old_s = list_s + (old_s - list_s) * scale
        old_req = {"ListObjectsV2": row["listing"]["requests"], "GetObject": round((sum(old_req.values()) - row["listing"]["requests"]) * scale)}
    row["old"] = {"seconds": round(old_s, 2), "requests": sum(old_req.values()), "extrapolated_from": len(old) if limit else None}

    first_run = None
    if limit is None:  # no compacted file yet: the first run after the change fetches every marker (concurrently)
        first, first_s, first_req = timed(lambda: plan_videos(cfg), "new, first run")
        assert first.loaded.read_one_by_one == n_done
        first_run = {"seconds": round(first_s, 2), "requests": sum(first_req.values())}
    known = {f"clip-{i:06d}": marker(i) for i in range(n_done)}  # what the previous run wrote and read
    written, compact_s, compact_req = timed(lambda: markers.compact_markers(folder, known), "compact")
    plan, new_s, new_req = timed(lambda: plan_videos(cfg), "new")
    assert plan.already_done == n_done and len(plan.pending) == n - n_done and written == n_done, (plan.already_done, written)
    assert plan.loaded.from_compacted == n_done and plan.loaded.read_one_by_one == 0
    assert all(plan.loaded.by_id[k] == v for k, v in old.items())  # the same markers, the same bodies
    (todo, skipped), infer_s, infer_req = timed(lambda: plan_items(InferConfig(input=cfg.input, output=f"{bucket}/recon")), "infer plan")
    assert len(todo) == n
    row["new_first_run"] = first_run
    row["compact"] = {"seconds": round(compact_s, 2), "requests": sum(compact_req.values())}
    row["new"] = {"seconds": round(new_s, 2), "requests": sum(new_req.values()), "by_operation": new_req}
    row["infer_plan"] = {"seconds": round(infer_s, 2), "requests": sum(infer_req.values())}
    row["speedup_old_over_new"] = round(row["old"]["seconds"] / new_s, 1) if new_s > 0 else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--done", type=float, default=0.9, help="share of the items with a done marker")
    parser.add_argument("--old-sample", type=int, default=10_000, help="above this many markers, time the old way on this many and extrapolate")
    parser.add_argument("--old-full", action="store_true", help="time the old way on every marker")
    parser.add_argument("--setup", choices=["backend", "http"], default="backend",
                        help="how the markers are written: into moto's store (fast) or by concurrent PUTs")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = start_moto()
    rows = []
    try:
        for n in args.sizes:
            row = bench_size(n, args)
            rows.append(row)
            old = row["old"]
            note = f" (extrapolated from {old['extrapolated_from']})" if old["extrapolated_from"] else ""
            first = row["new_first_run"]
            first_text = f"{first['seconds']:.2f} s / {first['requests']}" if first else "not timed"
            print(f"{n:>7} entries, {row['done']} done (setup {row['setup_s']:.1f} s, {args.setup}): "
                  f"old {old['seconds']:.2f} s / {old['requests']} requests{note}; "
                  f"new first run {first_text}, listing alone {row['listing']['seconds']:.2f} s / {row['listing']['requests']}, "
                  f"compact {row['compact']['seconds']:.2f} s, "
                  f"new {row['new']['seconds']:.2f} s / {row['new']['requests']} requests ({row['speedup_old_over_new']}x); "
                  f"infer plan {row['infer_plan']['seconds']:.2f} s / {row['infer_plan']['requests']}", flush=True)
    finally:
        server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
