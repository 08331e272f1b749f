"""Labelled synthetic faces: one face record per index, written as Parquet shards by worker processes."""

from __future__ import annotations

import io
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from facepgn import records, render, storage
from facepgn.config import SyntheticFacesConfig
from facepgn.errors import ConfigError
from facepgn.facemodel import FaceModel, load_face_model, resolve_landmark_definition
from facepgn.geometry import euler_to_matrix
from facepgn.synthetic.camera import _camera_effects, camera_effects
from facepgn.synthetic.hair import _strand_texture, hair_mesh
from facepgn.synthetic.occluders import add_occluders
from facepgn.synthetic.scene import (
    FaceParams,
    FaceRender,
    _random_light,
    model_vertices,
    place_face,
    random_background,
    render_face,
    sample_expression,
    sample_identity,
    sample_pose,
)
from facepgn.synthetic.skin import face_skin, random_albedo
from facepgn.synthetic.threads import _init_worker, _one_thread, _pool_context, single_threaded


def face_model_for(settings: SyntheticFacesConfig) -> FaceModel:
    """The face model truncated to the settings' modes, with the settings' landmark definition
    applied after truncating (as ``FaceModel.with_landmarks`` asks); cached per process."""
    landmarks = settings.landmarks
    key = (settings.face_model, settings.num_id, settings.num_exp, landmarks)
    model = _TRUNCATED.get(key)
    if model is None:
        model = load_face_model(settings.face_model).truncated(settings.num_id, settings.num_exp)
        try:
            model = model.with_landmarks(landmarks)
        except ValueError as exc:
            raise ConfigError(f"landmarks={landmarks!r}: {exc}") from None
        _TRUNCATED[key] = model
    return model


_TRUNCATED: dict[tuple, FaceModel] = {}


_BANKS: dict[tuple, np.ndarray] = {}


def background_bank(settings: SyntheticFacesConfig) -> np.ndarray | None:
    """The real-background bank of the settings (None: procedural backgrounds); built and cached
    on disk by the first caller (:func:`generate_faces` does it before starting workers), then
    kept per process."""
    if not settings.backgrounds:
        return None
    key = (tuple(settings.backgrounds), settings.size, settings.background_bank_size, settings.background_cache)
    bank = _BANKS.get(key)
    if bank is None:
        from facepgn import backgrounds

        bank = backgrounds.load_background_bank(list(settings.backgrounds), settings.size, settings.background_bank_size,
                                                seed=0, cache_dir=settings.background_cache)
        _BANKS[key] = bank
    return bank


def _image_direction(R: np.ndarray, model_dir) -> np.ndarray:
    """A model-frame direction as an image-plane (dx, dy) direction."""
    return (np.diag([1.0, -1.0, 1.0]) @ R @ np.asarray(model_dir, np.float64))[:2]


@_one_thread
def synthesize_face(index: int, seed: int, settings: SyntheticFacesConfig, model: FaceModel | None = None) -> tuple[FaceRender, dict[str, Any]]:
    """Face ``index`` of the dataset with ``seed``: its rendering and its FACE_RECORD_SCHEMA row.

    The identity, pose, light and (procedural) background come from ``default_rng([seed, index])``;
    the head and hair, the occluders, the real background and the camera each from a stream of their
    own (``[seed, index, k]``), so switching one of them off leaves the rest of the face as it was."""
    model = model or face_model_for(settings)
    rng = np.random.default_rng([seed, index])
    s = settings.size
    params = FaceParams(
        id_coeffs=sample_identity(rng, model.num_id, settings.id_std),
        exp_coeffs=sample_expression(rng, model.num_exp, settings.expression_prob),
        pose=sample_pose(rng, settings.yaw_max_deg, settings.pitch_max_deg, settings.roll_max_deg),
        scale=0.0,
        translation=np.zeros(3),
    )
    box = rng.uniform(*settings.face_fill) * s
    centre = (s / 2 + rng.uniform(-1, 1) * settings.centre_jitter * s, s / 2 + rng.uniform(-1, 1) * settings.centre_jitter * s)
    params.scale, params.translation = place_face(model, params.id_coeffs, params.exp_coeffs, params.pose, box, centre)
    hair_rng = np.random.default_rng([seed, index, 5])
    has_hair = bool(hair_rng.random() < settings.hair_prob)
    long_hair = has_hair and bool(hair_rng.random() < settings.long_hair_prob)
    fringe = has_hair and bool(hair_rng.random() < settings.fringe_prob)
    colours: dict[str, np.ndarray] = {}
    skin = face_skin(model)
    albedo = random_albedo(skin, rng, hair=has_hair, colours=colours)
    light, ambient, diffuse = _random_light(rng)
    background = random_background(rng, s, s)
    bank = background_bank(settings)
    if bank is not None:
        from facepgn import backgrounds

        background = backgrounds.random_background(bank, np.random.default_rng([seed, index, 8]), s)
    verts_model = model_vertices(model, params.id_coeffs, params.exp_coeffs)
    head = hair_mesh(model, verts_model, hair_rng, colours, hair=has_hair, long_hair=long_hair, fringe=fringe)
    face = render_face(model, params, albedo, s, s, background, light, ambient, diffuse, extra=head)
    if has_hair:
        hair_pixels = face.rendering.raster.triangle_ids >= len(skin.triangles)
        down = _image_direction(euler_to_matrix(np.asarray(params.pose, np.float64)), [0.0, -1.0, 0.0])
        face.image = _strand_texture(face.image, hair_pixels, down, np.random.default_rng([seed, index, 9]))
    add_occluders(face, model, np.random.default_rng([seed, index, 6]), colours, settings.hand_prob,
                  settings.glasses_prob, settings.microphone_prob)
    if settings.camera_effects:
        face.image = camera_effects(face.image, np.random.default_rng([seed, index, 7]), settings.grayscale_prob,
                                    tuple(settings.jpeg_quality))
    else:
        face.image = _camera_effects(face.image, rng)
    row = face_record(face, index, seed, settings, model)
    return face, row


def face_record(face: FaceRender, index: int, seed: int, settings: SyntheticFacesConfig, model: FaceModel) -> dict[str, Any]:
    """The FACE_RECORD_SCHEMA row of a synthetic face (unmapped landmarks are stored as 0, hidden)."""
    s = settings.size
    lm = np.nan_to_num(face.landmarks_3d, nan=0.0)
    return {
        "record_id": f"synthetic-s{seed}/{index:08d}",
        "source": "synthetic",
        "subject_id": f"synthetic-s{seed}-{index:08d}",
        "image": records.encode_image(face.image, settings.image_format),
        "image_size": s,
        "landmarks_2d": lm[:, :2].astype(np.float32),
        "landmarks_3d": lm.astype(np.float32),
        "landmarks_visible": face.landmarks_visible.astype(bool),
        "pose": np.asarray(face.params.pose, np.float32),
        "scale": float(face.params.scale),
        "translation": np.asarray(face.params.translation, np.float32),
        "id_coeffs": np.asarray(face.params.id_coeffs, np.float32),
        "exp_coeffs": np.asarray(face.params.exp_coeffs, np.float32),
        "face_model": model.name,
        "crop_to_frame": records.crop_transform(0, 0, s, s).reshape(-1),
        "source_path": f"synthetic:seed={seed}",
        "landmark_definition": resolve_landmark_definition(model, settings.landmarks),
    }



def write_face_chunk(shard_path: str, start: int, stop: int, seed: int, settings: SyntheticFacesConfig) -> dict[str, Any]:
    """One chunk of a synthetic dataset: faces ``[start, stop)`` of ``seed`` written as one Parquet
    shard at ``shard_path`` (atomically). Each face depends only on its index and the seed, so a
    chunk gives the same bytes in whichever process or machine renders it. Returns its stats
    (:func:`face_chunk_stats`, ``rows``, ``seconds``, ``cpu_seconds``, ``written``)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = face_model_for(settings)
    rows = [synthesize_face(i, seed, settings, model)[1] for i in range(start, stop)]
    buf = io.BytesIO()
    _write_parquet(records.to_table(rows, "face_record"), buf)
    storage.atomic_write_bytes(shard_path, buf.getvalue())
    stats = face_chunk_stats([r["pose"] for r in rows], [r["landmarks_visible"] for r in rows])
    return {**stats, "rows": len(rows), "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            "written": [shard_path]}


def face_chunk_stats(poses: Sequence[Any], visible: Sequence[Any]) -> dict[str, Any]:
    """What a summary adds up over chunks: faces per |yaw| bucket ([0, 30], (30, 60], (60, 90])
    and the mean fraction of visible landmarks, from the records' ``pose`` and ``landmarks_visible``."""
    yaws = np.degrees(np.abs([np.asarray(p, np.float64).reshape(-1)[1] for p in poses]))
    return {
        "yaw_buckets": np.histogram(yaws, bins=[0, 30, 60, 90.0001])[0].tolist(),
        "visible_fraction": float(np.mean([np.mean(np.asarray(v, bool)) for v in visible])) if len(visible) else None,
    }


def _write_parquet(table, sink) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, sink, compression="zstd")


def _write_shard(task: tuple[int, int, int, int, SyntheticFacesConfig, str]) -> dict[str, Any]:
    """:func:`generate_faces`' task: shard ``shard`` of ``out_dir`` (:func:`write_face_chunk`)."""
    shard, start, stop, seed, settings, out_dir = task
    path = storage.join(out_dir, f"part-{shard:05d}.parquet")
    return {"shard": shard, "path": path, **write_face_chunk(path, start, stop, seed, settings)}


#: ``facepgn synth faces`` writes its shards into this subfolder of its output and summary.json and
#: contact_sheet.png beside it, so the folder holds only Parquet (``pandas.read_parquet(<output>/data)``)
DATA_DIR = "data"


def data_dir(output: str) -> str:
    """Where ``facepgn synth faces`` puts the shards of ``output``: ``<output>/data``, or ``output``
    itself when it already holds shards at its top level (a folder written before ``data/`` existed:
    a rerun resumes it in place rather than writing the faces a second time)."""
    if storage.list_files(output, [".parquet"], recursive=False):
        return output
    return storage.join(output, DATA_DIR)


def generate_faces(
    out_dir: str,
    n: int,
    seed: int = 0,
    settings: SyntheticFacesConfig | None = None,
    rows_per_shard: int = 256,
    workers: int = 1,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``n`` synthetic labelled faces as ``part-NNNNN.parquet`` shards under ``out_dir``, the
    only files written there (no markers, no summary): the library's plain path for tests,
    benchmarks and small sets. ``facepgn synth faces`` (:func:`facepgn.pipelines.synth.run_synth_faces`:
    Ray or local, done markers, summary.json, contact sheet) renders the same chunks.

    Shards (:func:`write_face_chunk`) are independent tasks run on ``workers`` processes; each is
    written atomically, and with ``resume`` a rerun skips shards already present. ``progress(rows)``
    is called as shards finish. Returns counts and timings.
    """
    settings = settings or SyntheticFacesConfig()
    storage.check_writable(out_dir)  # an output that cannot be written: one line before any work
    background_bank(settings)  # build (and cache) a real-background bank once, before any worker needs it
    tasks = []
    skipped = []
    for shard, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(n, start + rows_per_shard)
        path = storage.join(out_dir, f"part-{shard:05d}.parquet")
        if resume and storage.exists(path):
            skipped.append({"shard": shard, "path": path, "rows": stop - start})
            if progress:
                progress(stop - start)
            continue
        tasks.append((shard, start, stop, seed, settings, out_dir))
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    if workers <= 1 or len(tasks) <= 1:
        with single_threaded():
            for task in tasks:
                done.append(_write_shard(task))
                if progress:
                    progress(done[-1]["rows"])
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context(), initializer=_init_worker) as pool:
            for result in pool.map(_write_shard, tasks):
                done.append(result)
                if progress:
                    progress(result["rows"])
    elapsed = time.perf_counter() - t0
    rows = sum(d["rows"] for d in done)
    buckets = np.sum([d["yaw_buckets"] for d in done], 0).tolist() if done else [0, 0, 0]
    return {
        "faces": n,
        "written": rows,
        "skipped_existing": sum(s["rows"] for s in skipped),
        "shards": sorted([d["path"] for d in done] + [s["path"] for s in skipped]),
        "seconds": elapsed,
        "faces_per_second": rows / elapsed if elapsed > 0 and rows else None,
        "cpu_seconds": float(sum(d["cpu_seconds"] for d in done)),  # in the processes that rendered
        "yaw_buckets_deg": {"[0,30]": buckets[0], "(30,60]": buckets[1], "(60,90]": buckets[2]},
        "mean_visible_landmarks": float(np.mean([d["visible_fraction"] for d in done])) * 68 if done else None,
    }


def contact_sheet_from_records(paths: Iterable[str], limit: int = 64, columns: int = 8) -> np.ndarray:
    """A grid of the first ``limit`` faces of face-record shards with their 68 landmarks drawn
    (visible green, hidden red)."""
    import pyarrow.parquet as pq

    tiles = []
    for path in paths:
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        for row in table.slice(0, limit - len(tiles)).to_pylist():
            img = records.decode_image(row["image"])
            lm = np.asarray(row["landmarks_2d"], np.float32).reshape(-1, 2)
            vis = row["landmarks_visible"]
            tiles.append(render.draw_landmarks(img, lm, visible=vis))
        if len(tiles) >= limit:
            break
    return render.contact_sheet(tiles, columns=columns)


