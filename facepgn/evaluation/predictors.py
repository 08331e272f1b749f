"""What an evaluation runs on each crop (a ``predict_fn``, :data:`PredictFn`) or each image (a frame
peer, :data:`FramePeerFn`): a facepgn model (:func:`model_predictor`), compared models beside it
(``<name>/<set>`` sets), the peers that are not facepgn models (the 68-point 2D network, MediaPipe's
face mesh), the plain words the report gives each set (:func:`set_legend`), and the parsing of a
``predict_fn``'s answer (:func:`split_prediction`)."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facepgn import storage
from facepgn.errors import FacepgnError
from facepgn.evaluation.metrics import NUM_LANDMARKS

# predict_fn: RGB uint8 crops (B, S, S, 3) -> (B, 68, 2|3) crop-pixel landmarks, or a mapping of
# named landmark sets (B, 68, 2|3) plus an optional "pose" (B, 3): pitch, yaw, roll radians.
PredictFn = Callable[[np.ndarray], "np.ndarray | Mapping[str, np.ndarray]"]
# A compared model's sets are named "<name>/<set>" and its pose "<name>/pose" (see with_compared_models).
# frame_peer_fn: (RGB image, the model crop's crop->frame affine (2, 3), crop side px) -> (68, 2|3)
# landmarks in image pixels: a peer that crops the image itself (see mediapipe_peer).
FramePeerFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
POSE_KEY = "pose"


def _pose_owner(key: str) -> str | None:
    """"" for the model's ``pose``, the model name for a compared model's ``<name>/pose``, else None."""
    if key == POSE_KEY:
        return ""
    if key.endswith("/" + POSE_KEY):
        return key[: -len(POSE_KEY) - 1]
    return None


def as_sets(out: Any) -> dict[str, Any]:
    """A ``predict_fn``'s answer as named sets: a bare (B, 68, 2|3) array is the set ``landmarks``."""
    return dict(out) if isinstance(out, Mapping) else {"landmarks": out}


def split_prediction(out: Any, batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(landmark sets, poses by model: "" the model's, else a compared model's name) of one
    ``predict_fn`` answer for ``batch`` crops, shapes checked."""
    poses: dict[str, np.ndarray] = {}
    sets: dict[str, np.ndarray] = {}
    for k, v in as_sets(out).items():
        owner = _pose_owner(k)
        if owner is None:
            sets[k] = np.asarray(v, dtype=np.float64)
        else:
            poses[owner] = np.asarray(v, dtype=np.float64).reshape(batch, 3)
    for k, v in sets.items():
        if v.shape[0] != batch or v.shape[1:2] != (NUM_LANDMARKS,) or v.shape[2] not in (2, 3):
            raise FacepgnError(f"predictor returned {k} of shape {v.shape}, expected ({batch}, 68, 2|3)")
    return sets, poses


def model_predictor(model: Any, device: str = "cpu") -> PredictFn:
    """A ``predict_fn`` for a ``facepgn.model.FaceReconstructor``: crops (B, S, S, 3) uint8 ->
    ``landmarks_3d`` (the PGN's) and ``mesh_landmarks`` (the fitted mesh's) in crop pixels, and the
    pose (pitch, yaw, roll radians) of the fitted rotation. Crops of another size than the model's
    input are resized to it (the same region) and the landmarks scaled back."""
    import cv2

    from facepgn.predictor import Predictor

    predictor = Predictor(model=model, device=device, threads=0)  # what facepgn infer runs
    has_pgn = getattr(model, "pgn", None) is not None
    own = predictor.input_size

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        size = crops.shape[1]
        scale = 1.0
        if own and size != own:
            interp = cv2.INTER_AREA if size > own else cv2.INTER_LINEAR
            crops = np.stack([cv2.resize(c, (own, own), interpolation=interp) for c in crops])
            scale = size / own
        out = predictor(crops)
        result = {"mesh_landmarks": out["mesh_landmarks"] * scale, "pose": out["pose"]}
        if has_pgn:
            result["landmarks_3d"] = out["landmarks_3d"] * scale
        return result

    return predict


def with_compared_models(predict_fn: PredictFn, models: Mapping[str, PredictFn]) -> PredictFn:
    """``predict_fn`` plus every compared model's sets as ``<name>/<set>`` and its pose as
    ``<name>/pose`` (scored as their own rows, and pose MAE per model)."""
    models = dict(models)
    for name in models:
        if not name or "/" in name or name == POSE_KEY:
            raise FacepgnError(f"compared model name {name!r}: give a non-empty name without '/'")

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        out = as_sets(predict_fn(crops))
        for name, other in models.items():
            for key, value in as_sets(other(crops)).items():
                out[f"{name}/{key}"] = value
        return out

    return predict


GENERIC_MODEL_STEMS = frozenset({"model", "best", "last", "final", "checkpoint"})


def compared_model_names(entries: Sequence[str], taken: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(name, path)`` of each ``compare_models`` entry: ``NAME=PATH``, or a path named after its
    file stem (``runs/x/old.pt`` -> ``old``); a generic stem (``model``, ``best``, ...) takes the
    folder's name instead (``/root/runs/old-recipe/model.pt`` -> ``old-recipe``). Clashing names
    get ``-2``, ``-3``, ..."""
    out: list[tuple[str, str]] = []
    used = set(taken)
    for entry in entries:
        entry = str(entry)
        head, sep, tail = entry.partition("=")
        if sep and head and "/" not in head and "\\" not in head and ":" not in head:
            name, path = head, tail
        else:
            path = entry
            stem = os.path.splitext(storage.basename(path.rstrip("/")))[0]
            parent = storage.basename(os.path.dirname(path.rstrip("/")))
            name = parent if stem.lower() in GENERIC_MODEL_STEMS and parent else stem
        name = name.replace("/", "_") or "model"
        base, k = name, 2
        while name in used or name == POSE_KEY:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        out.append((name, path))
    return out


PEER_2D_CROP_NOTE = ("the model's crop; its face box is the crop's centre 1/1.4, which its own 0.2 expansion "
                     "turns back into the whole crop")


def peer_landmark_predictor(model_path: str | None = None) -> PredictFn:
    """The shared 68-point 2D landmark network (``facepgn.faces.LandmarkModel``) as a peer: it is
    given the centre 1/1.4 of each crop as its face box, which its 0.2 expansion turns back into
    the whole crop (the crops here are ~1.4x the face)."""
    from facepgn.faces import LandmarkModel

    net = LandmarkModel(model_path)

    def predict(crops: np.ndarray) -> np.ndarray:
        size = crops.shape[1]
        inner = size / (1.0 + 2.0 * net.expand)
        box = np.array([(size - inner) / 2.0, (size - inner) / 2.0, inner, inner])
        return np.stack([net.predict(c, box) for c in crops]).astype(np.float64)

    return predict


def mediapipe_peer(model_path: str | None = None, *, passes: int = 2, threads: int = 1,
                   face_model: str | None = None, landmarks: str = "auto") -> FramePeerFn:
    """MediaPipe's face mesh (the labeller's teacher, ``facepgn.teachers.MediaPipe68``: its 468
    points mapped to the 68 through the face-model correspondence) as a frame peer, 2D.

    Its first pass sees the same square region of the image as the model's crop (its face box is
    the crop's side over MediaPipe's 1.5 expansion, so the region is the crop), sampled from the
    image at MediaPipe's 192 px rather than from the model's smaller crop; with ``passes=2`` (the
    teacher's setting) a second pass re-crops around its own first answer, levelled by the eyes, as
    MediaPipe's tracking mode does. The report's crop note says so."""
    from facepgn.teachers import MediaPipe68

    mp = MediaPipe68(model_path, threads=threads, passes=passes, face_model=face_model, landmarks=landmarks)
    expand = float(mp.mesh.crop_scale)

    def predict(image: np.ndarray, crop_to_frame: np.ndarray, size: int) -> np.ndarray:
        m = np.asarray(crop_to_frame, dtype=np.float64).reshape(2, 3)
        centre = m[:, :2] @ np.array([size / 2.0, size / 2.0]) + m[:, 2]
        side = max(float(np.hypot(*m[:, 0])), float(np.hypot(*m[:, 1]))) * size / expand
        box = np.array([centre[0] - side / 2.0, centre[1] - side / 2.0, side, side])
        return mp.predict(image, box)

    second = (" then a second pass on its own re-crop (its first answer's box x1.5, levelled by the eye corners: "
              "MediaPipe's tracking mode, as the labeller runs it)") if mp.mesh.passes > 1 else ""
    predict.crop_note = (f"MediaPipe cuts its own {mp.mesh.input_size} px input from the image: the first pass covers the "
                         f"same square region as the model's crop (sampled from the image, not from the model's crop),"
                         f"{second}")
    return predict


def set_legend(names: Sequence[str], model_labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain words for each landmark set (row set) of a report: the model's sets, the peers, and
    compared models' ``<name>/<set>``. ``model_labels``: "" -> the evaluated model, name -> a
    compared model (e.g. their files)."""
    labels = dict(model_labels or {})
    main = labels.get("", "the evaluated model")
    what = {
        "mesh_landmarks": "the 68 landmark vertices of its fitted 3D face mesh (3DMM coefficients + closed-form pose)",
        "landmarks_3d": "the 68 3D landmarks its Pose Guidance Network predicts directly",
        "landmarks": "its 68 landmarks",
    }
    peers = {
        "peer_2d": "peer, not a facepgn model: the 68-point 2D landmark network (Peppa, ainrichman, trained on 300W-LP); 2D only",
        "peer_mediapipe": ("peer, not a facepgn model: MediaPipe's face mesh (face_landmark.tflite), its 468 points mapped to "
                           "the 68 through the face-model correspondence, as the labeller uses it as a teacher; 2D only"),
        "gt": "the ground truth served back (a check)",
    }
    out = {}
    for name in names:
        if name in peers:
            out[name] = peers[name]
        elif "/" in name:
            owner, inner = name.split("/", 1)
            out[name] = f"{labels.get(owner, owner)} (compared): " + what.get(inner, inner)
        else:
            out[name] = f"{main}: " + what.get(name, name)
    return out


def with_peer_landmarks(predict_fn: PredictFn, model_path: str | None = None) -> PredictFn:
    """``predict_fn`` plus a ``peer_2d`` landmark set from :func:`peer_landmark_predictor`."""
    peer = peer_landmark_predictor(model_path)

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        out = as_sets(predict_fn(crops))
        out["peer_2d"] = peer(crops)
        return out

    return predict
