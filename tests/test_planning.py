"""Planning over done markers on S3 (a real moto server): bulk listings, not one GET per item.

The requests are counted with botocore's own event hooks on the s3fs client that facepgn uses
(``before-send``: every HTTP request that goes out), so the bounds are what S3 would be sent.
"""

from __future__ import annotations

import collections
import contextlib
import json

import pytest

from facepgn import markers, storage

N_ITEMS = 300
N_DONE = 240  # of them with a done marker; every 10th of those was skipped (a bad video)


@contextlib.contextmanager
def count_s3_requests():
    """Counts of the S3 requests sent while inside, by operation (``ListObjectsV2``, ``GetObject``, ...)."""
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


def _marker(i: int) -> dict:
    """A preprocess done marker (VideoResult's fields) of item ``clip-<i>``."""
    skipped = i % 10 == 0
    return {"video_id": f"clip-{i:04d}", "path": f"raw/clip-{i:04d}.mp4", "subject_id": f"clip-{i:04d}",
            "status": "skipped" if skipped else "ok", "reason": "unreadable video" if skipped else "",
            "frames_sampled": 10, "faces_detected": 10, "tracks": 1, "pairs": 0 if skipped else 7, "shards": [],
            "rejections": {}, "timings": {"decode": 0.1}, "seconds": 0.5, "cpu_seconds": 0.4, "peak_rss_mb": 300.0,
            "width": 480, "height": 480, "fps": 25.0}


@pytest.fixture
def corpus(s3_bucket):
    """A manifest of N_ITEMS videos on S3 and N_DONE preprocess done markers (plus one of a video
    not in the manifest) under ``out/videos/``; the videos themselves are never opened by planning."""
    bucket = s3_bucket
    lines = [json.dumps({"path": f"{bucket}/raw/clip-{i:04d}.mp4"}) for i in range(N_ITEMS)]
    storage.atomic_write_text(f"{bucket}/manifest.jsonl", "\n".join(lines) + "\n")
    fs, _ = storage.get_fs(bucket)
    bodies = {f"{bucket[5:]}/out/videos/clip-{i:04d}.json": json.dumps(_marker(i)).encode() for i in range(N_DONE)}
    bodies[f"{bucket[5:]}/out/videos/gone-from-manifest.json"] = json.dumps({**_marker(9999), "video_id": "gone-from-manifest"}).encode()
    fs.pipe(bodies)  # concurrent PUTs
    return bucket


def _old_pending(bucket: str, retry_failed: bool) -> set[str]:
    """What planning chose before: every marker read on its own (one GET each), then the same rule."""
    found = {}
    for path in storage.list_files(f"{bucket}/out/videos", extensions=[".json"], recursive=False):
        data = json.loads(storage.read_text(path))
        found[data["video_id"]] = data
    ids = [f"clip-{i:04d}" for i in range(N_ITEMS)]
    return {i for i in ids if i not in found or (retry_failed and found[i]["status"] == "skipped")}


@pytest.mark.parametrize("retry_failed", [False, True])
def test_preprocess_planning_same_answer_in_a_bounded_number_of_requests(corpus, retry_failed):
    from facepgn.config import PreprocessConfig
    from facepgn.pipelines.preprocess import plan_videos

    cfg = PreprocessConfig(input=f"{corpus}/manifest.jsonl", output=f"{corpus}/out", retry_failed=retry_failed)
    expected = _old_pending(corpus, retry_failed)
    assert len(expected) == (N_ITEMS - N_DONE) + (N_DONE // 10 if retry_failed else 0)

    with count_s3_requests() as first:  # no compacted file yet: the markers are fetched in one batch
        plan = plan_videos(cfg)
    assert {it.video_id for it in plan.pending} == expected
    assert plan.already_done == N_ITEMS - len(expected)
    assert plan.loaded.read_one_by_one == N_DONE + 1 and first["GetObject"] >= N_DONE

    assert markers.compact_markers(plan.loaded.folder, plan.loaded.by_id) == N_DONE + 1
    with count_s3_requests() as second:  # the manifest, one listing, the compacted file
        plan = plan_videos(cfg)
    assert {it.video_id for it in plan.pending} == expected
    assert plan.loaded.from_compacted == N_DONE + 1 and plan.loaded.compacted_is_current
    assert second["ListObjectsV2"] <= 2 and second["GetObject"] <= 2 and sum(second.values()) <= 8, second


def test_markers_newer_than_the_compacted_file_are_read_again(corpus):
    folder = f"{corpus}/out/videos"
    markers.compact_markers(folder, markers.load_markers(folder, "video_id").by_id)
    storage.atomic_write_text(f"{folder}/clip-0010.json", json.dumps({**_marker(10), "status": "ok", "reason": "", "pairs": 9}))
    storage.remove(f"{folder}/clip-0011.json")
    storage.atomic_write_text(f"{folder}/clip-0299.json", json.dumps(_marker(299)))
    storage.atomic_write_text(f"{folder}/clip-0298.json", "{not json")  # unreadable: its item is redone
    with count_s3_requests() as counts:
        loaded = markers.load_markers(folder, "video_id")
    assert loaded.read_one_by_one == 3 and loaded.from_compacted == N_DONE + 1 - 2
    assert counts["GetObject"] <= 5, counts
    assert loaded.by_id["clip-0010"]["pairs"] == 9 and loaded.by_id["clip-0010"]["status"] == "ok"
    assert "clip-0011" not in loaded.by_id and "clip-0298" not in loaded.by_id and "clip-0299" in loaded.by_id
    old = {json.loads(storage.read_text(p))["video_id"]: json.loads(storage.read_text(p))
           for p in storage.list_files(folder, extensions=[".json"], recursive=False) if not p.endswith("clip-0298.json")}
    assert loaded.by_id == old


def test_infer_planning_lists_done_markers_without_reading_them(corpus):
    from facepgn.config import InferConfig
    from facepgn.pipelines.infer import plan_items

    out = f"{corpus}/recon"
    fs, _ = storage.get_fs(corpus)
    fs.pipe({f"{out[5:]}/done/clip-{i:04d}.json": b'{"rows": 1}' for i in range(0, N_ITEMS, 2)})
    cfg = InferConfig(input=f"{corpus}/manifest.jsonl", output=out)
    with count_s3_requests() as counts:
        todo, skipped = plan_items(cfg)
    assert {it.item_id for it in skipped} == {f"clip-{i:04d}" for i in range(0, N_ITEMS, 2)}
    assert {it.item_id for it in todo} == {f"clip-{i:04d}" for i in range(1, N_ITEMS, 2)}
    assert counts["GetObject"] == 1 and counts["ListObjectsV2"] <= 2 and sum(counts.values()) <= 6, counts


def test_local_markers_compacted_and_stamped_by_mtime(tmp_path):
    folder = tmp_path / "items"
    folder.mkdir()
    for i in range(20):
        (folder / f"a{i}.json").write_text(json.dumps({"item_id": f"a{i}", "status": "ok", "n": i}))
    first = markers.load_markers(str(folder), "item_id")
    assert first.read_one_by_one == 20 and not first.compacted_is_current
    markers.compact_markers(str(folder), first.by_id)
    storage.atomic_write_text(str(folder / "a3.json"), json.dumps({"item_id": "a3", "status": "skipped", "n": 33}))
    again = markers.load_markers(str(folder), "item_id")
    assert again.read_one_by_one == 1 and again.by_id["a3"]["n"] == 33 and again.by_id["a4"]["n"] == 4
    assert set(markers.list_markers(str(folder))) == {f"a{i}" for i in range(20)}  # the compacted file is no marker
