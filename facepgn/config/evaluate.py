"""``facepgn evaluate aflw2000``: the AFLW2000-3D benchmark (facepgn.evaluation)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field as _TField

from facepgn.config.base import StrictModel


class EvaluateConfig(StrictModel):
    """AFLW2000-3D benchmark (facepgn.evaluation.evaluate_aflw2000); the crop size is the model's."""

    batch_size: int = 32
    box: Literal["auto", "roi", "landmarks"] = "auto"  # auto: standard 3DDFA roi boxes when the faces match them
    margin: float = 0.2  # landmark boxes: side = (1 + 2 * margin) * landmark extent
    arrays_dir: Optional[str] = None  # standard AFLW2000-3D arrays; None: the shared copy
    skip_bad: bool = False  # record and skip bad image/.mat pairs instead of failing
    limit: Optional[int] = None  # first N images only (previews, tests)
    peer_landmarks: bool = False  # also score the shared 68-point 2D landmark network as a peer (row set peer_2d)
    peer_mediapipe: bool = False  # also score MediaPipe's face mesh, 468 points mapped to the 68 (row set peer_mediapipe)
    compare_models: list[str] = []  # more model files scored beside the model, each its own row sets ("NAME=PATH" or a path)
    detector_boxes: bool = True  # also score crops from the YuNet detector, cut as facepgn infer cuts a detected face
    grid_per_bucket: int = _TField(6, ge=0)  # report pictures: faces per |yaw| bucket in grid.png (0: no grid)
    grid_columns: int = _TField(6, ge=1)  # face tiles per grid row
    best_worst: int = _TField(4, ge=0)  # best and worst faces by NME in best_worst.png (0: none)
    grid_tile: int = _TField(160, ge=48, le=1024)  # pixels per face tile
