"""``facepgn synth faces|videos``: the synthetic data generators' settings (facepgn.synthetic)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from facepgn.config.base import StrictModel


class SyntheticFacesConfig(StrictModel):
    """``facepgn synth faces``: labelled face crops rendered from the face model (facepgn.synthetic)."""

    n: int = 1000
    output: str = "data/synthetic/faces"  # folder or s3:// prefix: data/part-NNNNN.parquet, summary.json, contact_sheet.png
    seed: int = 0
    size: int = 128  # crop side, pixels
    num_id: int = 40  # identity modes sampled (the face model truncated like ModelConfig)
    num_exp: int = 20
    id_std: float = 1.0  # identity coefficients ~ N(0, id_std)
    expression_prob: float = 0.15  # each expression is active with this probability, weight U(0.1, 1)
    yaw_max_deg: float = 90.0  # |yaw| uniform in [0, max]: AFLW2000-3D buckets equally represented
    pitch_max_deg: float = 40.0
    roll_max_deg: float = 30.0
    # 68-landmark box side / crop side. Matched to the evaluation crops: on all 2000 AFLW2000-3D
    # images the 3DDFA roi boxes (AFLW2000-3D_crop.roi_box.npy) hold the pts68 landmark box at
    # 0.707 of their side (median; 5th-95th percentile 0.706-0.708, i.e. 1/sqrt(2)), centred to 0.2%.
    # The range around it leaves the rest of the variation to the training's geometric augmentation.
    face_fill: tuple[float, float] = (0.62, 0.80)
    centre_jitter: float = 0.05  # of the crop side
    image_format: Literal[".jpg", ".png"] = ".jpg"
    rows_per_shard: int = 256  # faces per chunk: one chunk is one task and one part-NNNNN.parquet
    executor: Literal["ray", "local"] = "ray"  # ray: chunks as Ray tasks over the cluster; local: this machine (workers processes)
    workers: int = 0  # executor local: processes; 0: one per CPU
    num_cpus_per_task: float = 0.5  # executor ray: Ray CPUs per chunk task (fractional on small machines)
    max_tasks: Optional[int] = None  # executor ray: chunk tasks at once; None: cluster CPUs / num_cpus_per_task
    overwrite: bool = False  # ignore done markers and render every chunk again
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
    contact_sheet: int = 64  # faces in contact_sheet.png; 0: none
    face_model: Optional[str] = None  # None: facepgn.paths.resolve_asset("face_model")
    # which face-model vertices the 68 labels are (facemodel.LANDMARK_DEFINITIONS), applied after
    # truncating; the resolved name goes into each record's landmark_definition
    landmarks: Literal["auto", "upstream", "jaw-substitutes", "calibrated"] = "auto"
    # Real backgrounds (facepgn.backgrounds): photos/videos (files, folders, globs) or one bank .npz;
    # face-free patches are cut once and cached. Empty: procedural backgrounds. Real training data
    # should use real ones (configs/synth-faces.yaml).
    backgrounds: list[str] = []
    background_bank_size: int = 512  # patches in the bank
    background_cache: Optional[str] = None  # bank cache folder; None: FACEPGN_CACHE (~/.cache/facepgn)
    # Head and occluders (landmarks they cover are marked not visible); 0 switches one off.
    hair_prob: float = 0.85  # else a bald head
    long_hair_prob: float = 0.35  # of those with hair: hair down the sides and back, locks over the cheeks
    fringe_prob: float = 0.3  # of those with hair: a fringe over the forehead (often the brows)
    hand_prob: float = 0.12  # a hand over the chin, mouth or a cheek
    glasses_prob: float = 0.2  # glasses frames (a quarter of them dark lenses)
    microphone_prob: float = 0.05
    # Camera realism: colour cast, blur or motion blur, down-up scaling, noise, grey-scale, JPEG.
    camera_effects: bool = True  # False: only slight blur and noise
    grayscale_prob: float = 0.08
    jpeg_quality: tuple[int, int] = (30, 92)  # JPEG re-encoding (70% of faces) at a quality in this range

    def model_post_init(self, __context: Any) -> None:
        lo, hi = self.face_fill
        if not 0 < lo <= hi:
            raise ValueError(f"face_fill {list(self.face_fill)}: need 0 < low <= high")
        probs = ("hair_prob", "long_hair_prob", "fringe_prob", "hand_prob", "glasses_prob", "microphone_prob", "grayscale_prob")
        for name in probs:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} {getattr(self, name)}: need a probability in [0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality {list(self.jpeg_quality)}: need 1 <= low <= high <= 100")
        if self.background_bank_size < 1:
            raise ValueError("background_bank_size must be >= 1")
        _check_chunks(self.rows_per_shard, self.num_cpus_per_task)


class SyntheticVideosConfig(StrictModel):
    """``facepgn synth videos``: mp4 clips of one synthetic identity each, with per-frame ground truth."""

    n: int = 3
    output: str = "data/synthetic/videos"
    seed: int = 0
    frames: int = 60
    size: int = 256  # frame side, pixels
    fps: float = 25.0
    num_id: int = 40
    num_exp: int = 20
    id_std: float = 1.0  # identity coefficients ~ N(0, id_std)
    expression_prob: float = 0.25  # each expression is active in a clip with this probability
    face_px: tuple[float, float] = (80.0, 110.0)  # 68-landmark box side in frame pixels
    yaw_amplitude_deg: float = 45.0
    pitch_amplitude_deg: float = 15.0
    roll_amplitude_deg: float = 10.0
    drift_px: float = 12.0  # the face centre wanders by about this much
    executor: Literal["ray", "local"] = "ray"  # ray: one Ray task per clip over the cluster; local: this machine (workers processes)
    workers: int = 0  # executor local: processes; 0: one per CPU
    num_cpus_per_task: float = 0.5  # executor ray: Ray CPUs per clip task
    max_tasks: Optional[int] = None  # executor ray: clip tasks at once; None: cluster CPUs / num_cpus_per_task
    overwrite: bool = False  # ignore done markers and render every clip again
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
    face_model: Optional[str] = None

    def model_post_init(self, __context: Any) -> None:
        _check_chunks(1, self.num_cpus_per_task)


def _check_chunks(size: int, num_cpus: float) -> None:
    if size < 1:
        raise ValueError(f"rows_per_shard {size}: need >= 1")
    if num_cpus <= 0:
        raise ValueError(f"num_cpus_per_task {num_cpus}: need > 0")
