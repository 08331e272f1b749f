"""``facepgn labelled convert``: AFLW2000-3D / 300W-LP folders -> face records (facepgn.labelled)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from facepgn.config.base import StrictModel


class LabelledConfig(StrictModel):
    """AFLW2000-3D / 300W-LP folder -> face-record shards (facepgn.pipelines.labelled.run_convert)."""

    source: Optional[Literal["aflw2000-3d", "300w-lp"]] = None  # None: from the .mat (pt3d_68 -> aflw2000-3d)
    image_size: int = 128  # crop side, pixels
    margin: float = 0.2  # crop side = (1 + 2 * margin) * landmark extent (0.2: ~3DDFA's sqrt(2) boxes)
    # landmarks: square boxes around the ground truth (margin above); roi: AFLW2000-3D's standard
    # 3DDFA roi boxes, the crops `facepgn evaluate aflw2000` scores (validation records that select
    # checkpoints the way the evaluation scores them)
    box: Literal["landmarks", "roi"] = "landmarks"
    shard_size: int = 500  # images per chunk: one chunk is one task and one part-NNNNN.parquet
    limit: Optional[int] = None  # first N images only (previews, tests)
    contact_sheet: int = 48  # records drawn with their landmarks in contact_sheet.png; 0: none
    executor: Literal["ray", "local"] = "ray"  # ray: chunks as Ray tasks over the cluster; local: a plain loop in this process (small inputs, baselines)
    num_cpus_per_task: float = 0.5  # Ray CPUs per chunk task (fractional on small machines)
    max_tasks: Optional[int] = None  # chunk tasks at once; None: cluster CPUs / num_cpus_per_task
    overwrite: bool = False  # ignore done markers and convert every chunk again
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)

    def model_post_init(self, __context: Any) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size {self.shard_size}: need >= 1")
        if self.num_cpus_per_task <= 0:
            raise ValueError(f"num_cpus_per_task {self.num_cpus_per_task}: need > 0")
