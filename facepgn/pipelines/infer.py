"""Batch inference over videos and photos on Ray Data (``facepgn infer``), and the same work as a
plain loop.

Inputs: videos and photos together (``facepgn.video.list_media``, the listing the label job uses:
a folder, glob, ``s3://`` prefix or manifest; each item is a video or a photo by its extension).

Graph (streaming; each arrow is a stream of small column batches), sized by :func:`stage_pools`
from the cluster's resources::

    items not done yet (from_items, one block per video or photo)
      -> map_batches(decode_detect_crop)   tasks, fractional CPUs: facepgn.inference.iter_item_batches
                                           (a video: chunked decode, YuNet, tracker, crops; a photo:
                                           decode, YuNet on a downscaled copy, full-resolution crops)
      -> map_batches(run_model)            tasks: the model, loaded once per worker process, GPU if any
      -> driver: groups rows by item; when an item's footer and all its rows have arrived
         (the footer says how many), it is finalised (driver threads, or Ray tasks with
         ``finalize_on: tasks``): smoothing (videos), rows Parquet, meshes, overlay, done marker
         (facepgn.inference.finalize_video).

When the model runs on CPU (``actors.stage: auto``), the first two stages are one
(``decode_detect_infer``: facepgn.inference.iter_item_outputs, the plain loop's own body): each
task does whole items, so every core decodes, detects and runs the model, no crops cross
processes, and no stage waits for another.

Memory stays bounded: a decode task holds one chunk of one video, or one photo; the driver holds
only the (small, crop-free) rows of items in flight. Items already done are skipped; a bad video or
photo is recorded in ``errors/`` and ``summary.json`` with a one-line reason and the others complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from facepgn import inference, outputs, storage
from facepgn.config import InferConfig
from facepgn.errors import FacepgnError
from facepgn.model import load
from facepgn.pipelines import common
from facepgn.pipelines.runner import per_process
from facepgn.predictor import Predictor
from facepgn.summary import versions, write_summary

# ---- stage callables (Ray Data UDFs) ---------------------------------------------------------


def decode_detect_crop(batch: dict[str, np.ndarray], cfg_json: str, image_size: int, counter=None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data generator UDF: one batch of items (path, video_id, kind) -> face-crop batches + footers.
    An item whose worker died on each of ``common.MAX_ATTEMPTS`` attempts yields only a footer
    saying so (the item is recorded as failed; the others go on)."""
    cfg = InferConfig.model_validate_json(cfg_json)
    for path, video_id, kind in zip(batch["path"], batch["video_id"], batch["kind"]):
        if not common.attempt_allowed(counter, str(video_id)):
            reason = f"{path}: given up after {common.MAX_ATTEMPTS} attempts (the worker decoding it died each time)"
            yield inference.footer_batch(str(path), str(video_id), image_size, reason, {"kind": str(kind)})
            continue
        yield from inference.iter_item_batches(str(path), str(video_id), str(kind), cfg, image_size)


def decode_detect_infer(batch: dict[str, np.ndarray], cfg_json: str, image_size: int, model_path: str, runtime: str, threads: int,
                        device: str, counter=None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data generator UDF of the fused stage (``actors.stage``: the model on CPU): one batch of
    items -> the model's output batches + footers (``inference.iter_item_outputs``), the model
    loaded once per worker process."""
    cfg = InferConfig.model_validate_json(cfg_json)
    runner = _predictor(model_path, runtime, threads, device)
    for path, video_id, kind in zip(batch["path"], batch["video_id"], batch["kind"]):
        if not common.attempt_allowed(counter, str(video_id)):
            reason = f"{path}: given up after {common.MAX_ATTEMPTS} attempts (the worker decoding it died each time)"
            yield inference.infer_batch(runner, inference.footer_batch(str(path), str(video_id), image_size, reason, {"kind": str(kind)}))
            continue
        yield from inference.iter_item_outputs(str(path), str(video_id), str(kind), cfg, image_size, runner)


def _load_predictor(model_path: str, runtime: str, threads: int, device: str) -> Predictor:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    return Predictor(model_path, runtime=runtime, threads=threads, device=device)


def _predictor(model_path: str, runtime: str, threads: int, device: str) -> Predictor:
    """The model, loaded once per worker process (and settings)."""
    return per_process(_load_predictor, model_path, runtime, threads, device)


def run_model(batch: dict[str, np.ndarray], model_path: str, runtime: str, threads: int, device: str) -> dict[str, np.ndarray]:
    """Ray Data task UDF: the model (:func:`_predictor`, once per worker process) on a batch of
    crops (``inference.infer_batch``). Tasks, not an actor pool: Ray Data hands its actors their
    setup as object-store arguments with restarts on, and Ray logs an error line for that at every
    actor start (ray-project/ray#57733); a task pool of the same size does the same work."""
    return inference.infer_batch(_predictor(model_path, runtime, threads, device), batch)


# ---- driving ---------------------------------------------------------------------------------


class _VideoAssembler:
    """Collects stage-2 batches per video; says when a video is complete (footer + all its rows)."""

    def __init__(self):
        self.batches: dict[str, list[dict[str, np.ndarray]]] = {}
        self.count: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
        ids = np.asarray(batch["video_id"]).astype(str)
        complete = []
        for vid in np.unique(ids):
            sel = np.nonzero(ids == vid)[0]
            part = {k: np.asarray(v)[sel] for k, v in batch.items()}
            self.batches.setdefault(vid, []).append(part)
            self.count[vid] = self.count.get(vid, 0) + sel.size
            totals = part["total_rows"][part["total_rows"] >= 0]
            if totals.size:
                self.total[vid] = int(totals[0])
            if self.total.get(vid) is not None and self.count[vid] >= self.total[vid]:
                complete.append((vid, self.batches.pop(vid)))
                self.count.pop(vid)
                self.total.pop(vid)
        return complete

    def pending(self) -> list[str]:
        return sorted(self.batches)


class _Finalizer:
    """Runs ``inference.finalize_video`` for complete videos: in driver threads (``finalize_on:
    driver``; no worker processes to start, everything already imported) or as Ray tasks spread
    over the cluster (``finalize_on: tasks``; for big jobs with overlays)."""

    def __init__(self, cfg: InferConfig, face_model, face_model_name: str):
        self.cfg = cfg
        self.face_model = face_model
        self.face_model_name = face_model_name
        self.pending: dict[Any, str] = {}
        if cfg.finalize_on == "tasks":
            import ray

            self._remote = ray.remote(num_cpus=cfg.finalize_num_cpus)(inference.finalize_video)
            self._face_ref = ray.put(face_model)
            self._pool = None
        else:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=max(1, cfg.finalize_threads), thread_name_prefix="facepgn-finalize")

    def submit(self, video_id: str, parts: list[dict[str, np.ndarray]]) -> None:
        if self._pool is None:
            handle = self._remote.remote(video_id, parts, self.cfg, self._face_ref, self.face_model_name)
        else:
            handle = self._pool.submit(inference.finalize_video, video_id, parts, self.cfg, self.face_model, self.face_model_name)
        self.pending[handle] = video_id

    def completed(self, block: bool) -> Iterator[dict]:
        """Stats of finished videos (all of them, waiting, when ``block``)."""
        while self.pending:
            handle = self._next_done(block)
            if handle is None:
                return
            vid = self.pending.pop(handle)
            try:
                stats = handle.result() if self._pool is not None else _ray_get(handle)
            except Exception as exc:  # noqa: BLE001 - a failed finalisation fails that video only
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                stats = {"video_id": vid, "error": f"{vid}: writing outputs failed ({exc.__class__.__name__}: {reason})"}
                storage.atomic_write_text(outputs.OutputLayout(self.cfg.output).error(vid), json.dumps(stats))
            yield stats
        if block and self._pool is not None:
            self._pool.shutdown(wait=True)

    def _next_done(self, block: bool):
        if self._pool is None:
            import ray

            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=None if block else 0)
            return ready[0] if ready else None
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(self.pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        return next(iter(done)) if done else None


def _ray_get(ref):
    import ray

    return ray.get(ref)


def _resolve(cfg: InferConfig) -> InferConfig:
    """Required paths set; no model means the pretrained one shipped with facepgn."""
    from facepgn.model import resolve_model_file

    for name in ("input", "output"):
        if not getattr(cfg, name):
            raise FacepgnError(f"inference config: {name} is not set (--{name} or --set {name}=...)")
    return cfg.model_copy(update={"model": resolve_model_file(cfg.model)})


def plan_items(cfg: InferConfig) -> tuple[list[Any], list[Any]]:
    """(items to process, items skipped because their done marker exists): ``facepgn.video.MediaItem``
    (path, item_id, subject_id, kind) of the input's videos and photos. The input is one listing
    or one manifest read, the done ids one listing of ``done/`` (no marker is read)."""
    from facepgn import video
    from facepgn.cluster import require_shared_storage

    if cfg.executor == "ray":  # a local output on a multi-node cluster: refused before any work
        require_shared_storage({"output": cfg.output}, cfg.shared_storage)
    items = video.list_media(cfg.input, cfg.video_extensions, cfg.image_extensions)
    if not any(it.kind in ("video", "photo") for it in items):
        from facepgn.errors import InputError

        raise InputError(cfg.input, f"no videos or photos found ({', '.join(cfg.video_extensions + cfg.image_extensions)})")
    layout = outputs.OutputLayout(cfg.output)
    done = layout.done_ids() if cfg.resume else set()
    todo = [it for it in items if it.item_id not in done]
    skipped = [it for it in items if it.item_id in done]
    if cfg.max_videos is not None:
        todo = todo[: cfg.max_videos]
    return todo, skipped


def run_inference(cfg: InferConfig, progress: Callable[[str], None] | None = print) -> dict:
    """Run batch inference as configured (Ray Data, or a plain loop with ``executor: local``).

    Writes ``cfg.output``: rows/, overlays/, meshes/, done/, errors/, summary.json. Returns the summary.
    """
    cfg = _resolve(cfg)
    started = time.time()
    log = progress or (lambda _msg: None)
    storage.check_writable(cfg.output)  # an output that cannot be written: one line before any work
    todo, skipped = plan_items(cfg)  # refuses a local output on a multi-node cluster before anything is written
    photos = sum(it.kind == "photo" for it in todo)
    log(f"facepgn infer: {len(todo)} items to process ({len(todo) - photos} videos, {photos} photos), {len(skipped)} already done ({cfg.output})")
    model = load(cfg.model)
    face_model = model.face_model()
    image_size = int(model.input_size)
    face_model_name = str(getattr(model, "face_model_name", ""))
    del model
    results: list[dict] = []
    if todo:
        if cfg.executor == "local":
            results = list(_run_local(cfg, todo, face_model, face_model_name, image_size, log))
        else:
            results = list(_run_ray(cfg, todo, face_model, face_model_name, image_size, log))
    summary = _write_summary(cfg, results, skipped, time.time() - started, {it.item_id: it.kind for it in todo})
    log(
        f"facepgn infer: {summary['counts']['items_done_this_run']} done, {summary['counts']['items_failed']} failed, "
        f"{summary['counts']['rows_this_run']} rows in {summary['timings']['wall_s']:.1f} s"
    )
    return summary


def _run_local(cfg: InferConfig, todo, face_model, face_model_name: str, image_size: int, log) -> Iterable[dict]:
    """The plain loop over the same functions, in this process (debugging and the bench baseline)."""
    runner = Predictor(cfg.model, runtime=cfg.runtime, threads=cfg.torch_threads)
    for n, item in enumerate(todo, 1):
        outs = list(inference.iter_item_outputs(item.path, item.item_id, item.kind, cfg, image_size, runner))
        stats = inference.finalize_video(item.item_id, outs, cfg, face_model, face_model_name)
        log(_video_line(stats, n, len(todo)))
        yield stats


def _video_line(stats: dict, n: int, total: int) -> str:
    if stats.get("error"):
        return f"  [{n}/{total}] {stats['video_id']}: FAILED {stats['error']}"
    if stats.get("kind") == "photo":
        return f"  [{n}/{total}] {stats['video_id']}: photo, {stats['rows']} faces"
    return f"  [{n}/{total}] {stats['video_id']}: {stats['rows']} rows, {stats['tracks']} tracks"


@dataclass(frozen=True)
class StagePools:
    """How the stages run: fused (decode, detect and the model in one task) or separate, how many
    tasks of each at once, and what a model task reserves."""

    fused: bool
    decode_tasks: int
    model_tasks: int  # separate stages only
    device: str  # "cuda" or "cpu"
    model_resources: dict[str, float]


def stage_pools(cfg: InferConfig, cpus: float, gpus: float, items: int) -> StagePools:
    """Size the stages from the cluster's resources, so that every given core is kept busy.

    Fused (``actors.stage: auto`` on CPU): as many decode+detect+model tasks as the CPUs hold at
    ``decode.num_cpus`` each. Separate on CPU: decode and model tasks draw on the same CPUs; decode
    may take all but ``actors.min`` model slots (it cannot starve the model), and the model may take
    every slot (when decoding is done, the crops still queued get all the cores). Separate on GPU:
    each model task holds ``actors.num_gpus``, decode gets all the CPUs. ``decode.tasks`` and
    ``actors.max`` cap them when set."""
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if gpus > 0 else 0.0)
    fused = cfg.actors.stage == "fused" or (cfg.actors.stage == "auto" and num_gpus <= 0)
    cpu_slots = max(1, int(cpus / max(cfg.decode_num_cpus, 1e-3) + 1e-6))
    if fused:
        model_slots, decode_slots = 0, cpu_slots
        resources: dict[str, float] = {"num_cpus": cfg.decode_num_cpus}
        num_gpus = 0.0
    elif num_gpus > 0:
        model_slots, decode_slots = max(1, int(gpus / num_gpus + 1e-6)), cpu_slots
        resources = {"num_gpus": num_gpus}
    else:
        model_slots = max(1, int(cpus / max(cfg.actor_num_cpus, 1e-3) + 1e-6))
        left = cpus - min(cfg.min_actors, model_slots) * cfg.actor_num_cpus
        decode_slots = max(1, int(left / max(cfg.decode_num_cpus, 1e-3) + 1e-6))
        resources = {"num_cpus": cfg.actor_num_cpus}
    if cfg.decode_tasks is not None:
        decode_slots = cfg.decode_tasks
    if cfg.max_actors is not None and not fused:
        model_slots = min(model_slots, cfg.max_actors)
    return StagePools(fused, max(1, min(decode_slots, items)), model_slots, "cuda" if num_gpus > 0 else "cpu", resources)


def _run_ray(cfg: InferConfig, todo, face_model, face_model_name: str, image_size: int, log) -> Iterable[dict]:
    from facepgn.cluster import connect

    connect()
    # Ray Data's default reservations leave room for one decode task beside the model workers on a
    # small cluster, and without them decode tasks take every CPU and starve the model. So: no
    # reservations, and an explicit cap on concurrent decode tasks (stage_pools: decode never takes
    # the actors.min model slots, the model may take all). A decode task's output becomes a block
    # once this many bytes of crops have piled up: small blocks stream chunks to the model while the
    # video is still being decoded (and bound memory).
    # Fused, every task does whole items and passes on small rows: only the pool cap holds tasks back.
    import ray

    resources = ray.cluster_resources()
    pools = stage_pools(cfg, float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)), len(todo))
    with common.ray_data_context(op_resource_reservation_enabled=False, target_max_block_size=int(cfg.block_mb * 1024 * 1024),
                                 whole_item_tasks=pools.fused):
        yield from _run_ray_pipeline(cfg, todo, pools, face_model, face_model_name, image_size, log)


def _run_ray_pipeline(cfg: InferConfig, todo, pools: StagePools, face_model, face_model_name: str, image_size: int, log
                      ) -> Iterable[dict]:
    import ray

    items = [{"path": it.path, "video_id": it.item_id, "kind": it.kind} for it in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    model_kwargs = {"model_path": cfg.model, "runtime": cfg.runtime, "threads": cfg.torch_threads, "device": pools.device}
    if pools.fused:
        log(f"facepgn infer: up to {pools.decode_tasks} tasks at once, each decoding, detecting and running the model (CPU)")
        ds = ds.map_batches(
            decode_detect_infer,
            batch_size=1,
            fn_kwargs={"cfg_json": cfg.model_dump_json(), "image_size": image_size, "counter": common.attempt_counter(), **model_kwargs},
            num_cpus=cfg.decode_num_cpus,
            compute=ray.data.TaskPoolStrategy(size=pools.decode_tasks),
        )
    else:
        log(f"facepgn infer: up to {pools.decode_tasks} decode+detect tasks and {pools.model_tasks} model tasks "
            f"({'GPU' if pools.device == 'cuda' else 'CPU'}) at once")
        ds = ds.map_batches(
            decode_detect_crop,
            batch_size=1,
            fn_kwargs={"cfg_json": cfg.model_dump_json(), "image_size": image_size, "counter": common.attempt_counter()},
            num_cpus=cfg.decode_num_cpus,
            compute=ray.data.TaskPoolStrategy(size=pools.decode_tasks),
        )
        # The model: pools.model_tasks tasks at a time, each worker process loading it once (max_calls=0:
        # processes are kept, GPU ones too). Its remote args differ from decode's (max_calls), so Ray
        # Data never fuses the two stages: decode+detect runs in its own tasks, in parallel with the model.
        ds = ds.map_batches(
            run_model,
            fn_kwargs=model_kwargs,
            batch_size=cfg.batch_size,
            compute=ray.data.TaskPoolStrategy(size=pools.model_tasks),
            max_calls=0,
            **pools.model_resources,
        )
    finalizer = _Finalizer(cfg, face_model, face_model_name)
    assembler = _VideoAssembler()
    finished = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for vid, parts in assembler.add(batch):
            finalizer.submit(vid, parts)
        for stats in finalizer.completed(block=False):
            finished += 1
            log(_video_line(stats, finished, len(todo)))
            yield stats
    for stats in finalizer.completed(block=True):
        finished += 1
        log(_video_line(stats, finished, len(todo)))
        yield stats
    for vid in assembler.pending():  # never completes unless a stage lost rows: record it
        stats = {"video_id": vid, "error": f"{vid}: incomplete output stream (rows lost between stages)"}
        storage.atomic_write_text(outputs.OutputLayout(cfg.output).error(vid), json.dumps(stats))
        yield stats


def _write_summary(cfg: InferConfig, results: list[dict], skipped: list[Any], wall_s: float,
                   kinds: dict[str, str] | None = None) -> dict:
    """summary.json (:mod:`facepgn.summary`'s shape): counts (all items, and videos and photos
    apart), errors with reasons, stage timings, per item its counts, versions, the resolved config. ``skipped``: the items (``MediaItem``) skipped as
    already done; ``kinds``: item id -> kind of this run's items (for results that lack one)."""
    layout = outputs.OutputLayout(cfg.output)
    kinds = dict(kinds or {})
    for r in results:
        r.setdefault("kind", kinds.get(r["video_id"], "video"))
    ok = [r for r in results if not r.get("error")]
    failed = [r for r in results if r.get("error")]
    stage_totals: dict[str, float] = {}
    for r in ok:
        for k, v in (r.get("timings") or {}).items():
            stage_totals[k] = stage_totals.get(k, 0.0) + float(v or 0.0)
    frames = sum(int((r.get("info") or {}).get("sampled_frames", 0)) for r in ok)
    done = layout.done_ids()
    listed = {**{it.item_id: it.kind for it in skipped}, **{r["video_id"]: r["kind"] for r in results}}
    counts: dict[str, int] = {
        "items_done_this_run": len(ok),
        "items_skipped_already_done": len(skipped),
        "items_failed": len(failed),
        "items_done_total": len(done),  # done markers in the output (also of items not in this input)
    }
    for kind, name in (("video", "videos"), ("photo", "photos")):
        counts[f"{name}_done_this_run"] = sum(r["kind"] == kind for r in ok)
        counts[f"{name}_skipped_already_done"] = sum(it.kind == kind for it in skipped)
        counts[f"{name}_failed"] = sum(r["kind"] == kind for r in failed)
        counts[f"{name}_done_total"] = sum(listed.get(i) == kind for i in done)  # of this input's items
    counts.update({
        "rows_this_run": sum(int(r.get("rows", 0)) for r in ok),
        "sampled_frames_this_run": frames,  # a photo counts as one frame
        "tracks_this_run": sum(int(r.get("tracks", 0)) for r in ok),
        "meshes_this_run": sum(int(r.get("meshes", 0)) for r in ok),
    })
    return write_summary(
        layout.summary, job="infer", counts=counts,
        errors=[{"video_id": r["video_id"], "kind": r["kind"], "path": r.get("source_path", ""), "reason": r["error"]} for r in failed],
        timings={
            "wall_s": wall_s,
            "frames_per_s": frames / wall_s if wall_s > 0 else None,
            "stage_s": stage_totals,  # wall seconds per stage, summed over items (includes waiting for a core)
            "cpu_s": sum(stage_totals.get(k, 0.0) for k in ("decode_cpu_s", "model_cpu_s", "finalize_cpu_s")),  # CPU seconds of the stages
        },
        extra={
            "items": {r["video_id"]: {k: r.get(k) for k in ("kind", "rows", "tracks", "frames_with_faces", "meshes", "overlay", "overlay_frames")} for r in ok},
            "schema": "inference_row/1",
        },
        config=cfg.model_dump(mode="json"),
        versions=versions("ray", "torch", "onnxruntime", "cv2", "pyarrow", "decord"),
    )
