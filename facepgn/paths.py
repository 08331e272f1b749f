"""Where facepgn finds its data files: the face model, the detector and landmark models, test media.

Resolution order for each asset: an explicit path (config / CLI) > an environment variable >
the shared data folder (``FACEPGN_SHARED``, default ``../shared`` beside the checkout, used by tests,
demos and benchmarks) > the user cache (``FACEPGN_CACHE``, default ``~/.cache/facepgn``), where
``facepgn model download`` puts checksum-verified upstream files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from facepgn.errors import FacepgnError

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared data folder (may not exist on a user's machine)."""
    return Path(os.environ.get("FACEPGN_SHARED", REPO_ROOT.parent / "shared")).resolve()


def cache_dir() -> Path:
    return Path(os.environ.get("FACEPGN_CACHE", Path.home() / ".cache" / "facepgn"))


@dataclass(frozen=True)
class Asset:
    """A data file facepgn needs, where it lives in shared/, and how users get it."""

    name: str
    env_var: str
    shared_relpath: str
    cache_relpath: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    how_to_get: str = ""


def _asset(name: str, shared_relpath: str, download: str, *, cache_relpath: str | None = None, url: str | None = None,
           sha256: str | None = None, size: int | None = None) -> Asset:
    """The asset ``name``: ``$FACEPGN_<NAME>`` points at it, the cache holds it where shared/ does
    (unless ``cache_relpath``), and ``facepgn model download <download>`` fetches it."""
    return Asset(name, f"FACEPGN_{name.upper()}", shared_relpath, cache_relpath or shared_relpath, url, sha256, size,
                 f"run `facepgn model download {download}`")


ASSETS: dict[str, Asset] = {asset.name: asset for asset in (
    _asset("face_model", "facemodels/ict/ict_face_area.npz", "ict --dest ~/.cache/facepgn/models",
           cache_relpath="models/ict_face_area.npz"),
    _asset("detector", "detectors/yunet_s_640_640.onnx", "detector", size=232589,
           url="https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_640_640.onnx",
           sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"),
    _asset("landmarks", "landmarks/peppa_slim_160_latest.onnx", "landmarks", size=973972,
           url="https://raw.githubusercontent.com/ainrichman/Peppa-Facial-Landmark-PyTorch/master/pretrained_weights/slim_160_latest.onnx",
           sha256="2121aacea9169ac27227508238237376fe64b96e2f2cc57082f26e88d650fbd2"),
    # MediaPipe face mesh (Apache-2.0). Upstream ships it inside the mediapipe wheel; `facepgn model
    # download mediapipe` fetches the pinned 0.10.21 wheel and extracts these files (facepgn.download).
    _asset("mediapipe_mesh", "landmarks/mediapipe/face_landmark.tflite", "mediapipe", size=1242398,
           sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    _asset("mediapipe_canonical", "landmarks/mediapipe/canonical_face_model.obj", "mediapipe", size=45999,
           url=("https://raw.githubusercontent.com/google-ai-edge/mediapipe/85c0cdc7d70653888903c88df45962b764296342/"
                "mediapipe/modules/face_geometry/data/canonical_face_model.obj"),
           sha256="8bac80443397e113f41a8b565ea72c59390bc031d9defab289dba7bc0c54e618"),
)}


def resolve_asset(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """Return the path of an asset, or raise a one-line error saying how to get it."""
    asset = ASSETS[name]
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise FacepgnError(f"{path}: {name} file not found")
        return path
    candidates = []
    if os.environ.get(asset.env_var):
        path = Path(os.environ[asset.env_var]).expanduser()
        if not path.exists():
            raise FacepgnError(f"{path}: {name} file not found (from ${asset.env_var})")
        return path
    candidates.append(shared_dir() / asset.shared_relpath)
    candidates.append(cache_dir() / asset.cache_relpath)
    for path in candidates:
        if path.exists():
            return path
    raise FacepgnError(
        f"{candidates[-1]}: no {name} file found (also looked in {candidates[0]}); {asset.how_to_get}"
    )


def shared_path(relpath: str) -> Path:
    """A path inside the shared data folder (tests, demos and benchmarks)."""
    return shared_dir() / relpath
