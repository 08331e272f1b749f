"""``facepgn labelled convert``: AFLW2000-3D / 300W-LP folders -> face records (facepgn.labelled)."""

from __future__ import annotations

from typing import Literal, Optional

from facepgn.config.base import StrictModel


class LabelledConfig(StrictModel):
    """AFLW2000-3D / 300W-LP folder -> face-record shards (facepgn.labelled.convert_folder)."""

    source: Optional[Literal["aflw2000-3d", "300w-lp"]] = None  # None: from the .mat (pt3d_68 -> aflw2000-3d)
    image_size: int = 128  # crop side, pixels
    margin: float = 0.2  # crop side = (1 + 2 * margin) * landmark extent (0.2: ~3DDFA's sqrt(2) boxes)
    # landmarks: square boxes around the ground truth (margin above); roi: AFLW2000-3D's standard
    # 3DDFA roi boxes, the crops `facepgn evaluate aflw2000` scores (validation records that select
    # checkpoints the way the evaluation scores them)
    box: Literal["landmarks", "roi"] = "landmarks"
    shard_size: int = 500  # records per part-NNNNN.parquet
    limit: Optional[int] = None  # first N images only (previews, tests)
