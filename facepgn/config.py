"""Typed, validated configs: one pydantic model per job, loaded from YAML with ``--set a.b=value``.

Unknown keys and wrong types are errors (``extra="forbid"``), reported in one line that names the
file and the offending key before any work starts.

Each job's config lives in this module, in its own section below.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from facepgn.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ConfigT = TypeVar("ConfigT", bound=StrictModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.num_workers=16"`` -> (["trainer", "num_workers"], 16). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (local path or ``s3://``), with a one-line error on failure."""
    from facepgn import storage

    try:
        text = storage.read_text(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: the source, the first offending key and what is wrong with it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def build_config(cls: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(
    cls: type[ConfigT],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> ConfigT:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    overrides = list(overrides)
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    source = str(path) if path else "config"
    if overrides:
        source += " (with --set overrides)"
    return build_config(cls, data, source)


def dump_config(config: StrictModel, path: str | os.PathLike | None = None) -> str:
    """The config as YAML text (and written atomically to ``path`` if given)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        from facepgn import storage

        storage.atomic_write_text(str(path), text)
    return text


# --------------------------------------------------------------------------------------------
# Job configs. Each section is owned by the module named in its comment.
# --------------------------------------------------------------------------------------------

# == face model (facepgn.facemodel) ==
# == synthetic data (facepgn.synthetic) ==

from typing import Literal, Optional  # noqa: E402  (kept in this section to keep edits local)


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
    rows_per_shard: int = 256
    workers: int = 0  # processes; 0: one per CPU
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
    workers: int = 0
    face_model: Optional[str] = None

# == model and losses (facepgn.model, facepgn.losses) ==

from typing import Literal, Optional  # noqa: E402  (kept in this section to keep edits local)


class ModelConfig(StrictModel):
    """The reconstruction network (facepgn.model). Saved inside every model file."""

    input_size: int = 128  # square crop side the networks see, pixels
    pose: Literal["pgn", "direct"] = "pgn"  # pgn: closed-form fit to the PGN's landmarks; direct: regressed
    num_id: int = 40  # identity modes kept from the face model
    num_exp: int = 20  # expression modes kept
    pgn_width: float = 1.0  # channel multiplier of the PGN
    regressor_width: float = 1.0  # channel multiplier of the regressor
    heatmap_stride: int = 4  # PGN heatmap resolution = input_size / heatmap_stride
    fit_weight_floor: float = 0.2  # min per-landmark weight in the similarity fit (rest: PGN confidence)
    face_model: Optional[str] = None  # face model .npz; None: facepgn.paths.resolve_asset("face_model")
    # which face-model vertices are the 68 landmarks (facemodel.LANDMARK_DEFINITIONS); must match the
    # training labels' definition (synthetic, pseudo-labelled and profiled records name theirs).
    # Model files store the ids themselves, so files written before this setting load unchanged.
    landmarks: Literal["auto", "upstream", "jaw-substitutes", "calibrated"] = "auto"
    # at inference, the PGN also sees the mirrored crop and the two landmark sets are averaged before
    # the pose fit (test-time mirroring: the PGN's cost doubles; training is unaffected)
    mirror_test: bool = False


class LossWeights(StrictModel):
    """Weight of each loss term (facepgn.losses); 0 switches a term off."""

    landmarks_3d: float = 1.0  # PGN 3D landmarks vs labels
    mesh_landmarks: float = 1.0  # projected mesh landmarks vs 3D labels
    landmarks_2d: float = 0.5  # PGN + mesh landmarks (x, y) vs 2D labels (2D-only data, pair pseudo-labels)
    shape: float = 0.5  # reconstructed neutral+expression mesh vs the labelled coefficients' mesh
    coeff_prior: float = 0.01  # identity ~ N(0, 1), expressions sparse
    flow: float = 1.0  # 2D motion of visible projected vertices A->B vs the pair's optical flow
    photometric: float = 0.5  # colours at corresponding visible vertices in A and B agree
    identity: float = 0.1  # identity coefficients of A and B agree
    landmark_flow: float = 0.5  # PGN landmarks of A moved by the flow agree with the PGN landmarks of B


class OptimConfig(StrictModel):
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 5.0  # max global gradient norm; 0: off
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast dtype (fp16 uses a GradScaler, CUDA only)


class TrainDataConfig(StrictModel):
    """Where the training data comes from; Parquet files or folders, local or s3://."""

    labelled: list[str] = []  # face-record Parquet (FACE_RECORD_SCHEMA)
    pairs: list[str] = []  # frame-pair Parquet (FRAME_PAIR_SCHEMA)
    labelled_batch_size: int = 32
    pair_batch_size: int = 16  # 0: no pair batches
    pairs_from_step: int = 0  # labelled-only warm-up: pair batches join at this step (the pose must be sane first)
    augment: bool = True  # augment labelled crops: colour jitter, plus the geometric augmentation below
    # Geometric augmentation (facepgn.augment), labels moved with the image; validation is never augmented.
    geometric_augment: bool = True  # random crop scale, shift, in-plane rotation and mirror (needs augment)
    aug_scale: tuple[float, float] = (0.85, 1.15)  # zoom range (> 1 enlarges the face), log-uniform
    aug_rotate_deg: float = 20.0  # in-plane rotation, uniform in +-this
    aug_shift: float = 0.06  # shift per axis, uniform in +-this fraction of the crop side
    aug_flip_prob: float = 0.5  # mirror (landmarks relabelled, yaw/roll negated, coefficients dropped)
    aug_border: Literal["reflect", "replicate"] = "reflect"  # pixels from outside the crop: never black

    def model_post_init(self, __context: Any) -> None:
        lo, hi = self.aug_scale
        if not 0 < lo <= hi:
            raise ValueError(f"aug_scale {list(self.aug_scale)}: need 0 < low <= high")
        if not 0 <= self.aug_flip_prob <= 1:
            raise ValueError(f"aug_flip_prob {self.aug_flip_prob}: need a probability in [0, 1]")
        if self.aug_rotate_deg < 0 or self.aug_shift < 0:
            raise ValueError("aug_rotate_deg and aug_shift must be >= 0")


class TrainConfig(StrictModel):
    """The plain training loop (facepgn.train.loop); the Ray trainer config wraps this one."""

    model: ModelConfig = ModelConfig()
    losses: LossWeights = LossWeights()
    optim: OptimConfig = OptimConfig()
    data: TrainDataConfig = TrainDataConfig()
    steps: int = 2000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs/train"  # checkpoints, model.pt, summary.json, TensorBoard events
    checkpoint_every: int = 500  # steps; 0: only at the end
    log_every: int = 20
    tensorboard: bool = True
    resume: bool = True  # continue from output_dir/checkpoint.pt when it exists
    threads: int = 0  # torch intra-op threads; 0: torch default
    # a model file or checkpoint whose network weights start this run (fine-tuning; "pretrained": the
    # shipped model); ignored when the run resumes from its own checkpoint. The model config must
    # build the same networks.
    init_from: Optional[str] = None

# == preprocess (facepgn.pipelines.preprocess) ==

from typing import Literal as _Literal, Optional as _Optional  # noqa: E402


class FaceDetectorConfig(StrictModel):
    """YuNet face detection (facepgn.faces.FaceDetector)."""

    model_path: _Optional[str] = None  # None: facepgn.paths.resolve_asset("detector")
    score_threshold: float = 0.6  # detector's own threshold (lower scores are never seen)
    nms_threshold: float = 0.3
    top_k: int = 50
    detect_width: int = 480  # frames are downscaled to this width (px) before detection


class FaceTrackerConfig(StrictModel):
    """IoU/centre tracker (facepgn.faces.FaceTracker); units: sampled frames and box sides."""

    iou_threshold: float = 0.3
    max_centre_shift: float = 0.5
    max_missed: int = 2
    max_faces: int = 8  # per frame, largest-score first


class PairQualityConfig(StrictModel):
    """Filters a crop / pair must pass to be written (rejections are counted in summary.json)."""

    min_face_size: float = 40.0  # detector box side, frame pixels (after decode_max_side scaling)
    min_det_score: float = 0.7
    min_blur: float = 15.0  # variance of the Laplacian of the crop
    min_flow_magnitude: float = 0.0  # mean |flow|, crop pixels
    max_flow_magnitude: float = 0.15  # mean |flow| as a fraction of the crop size (tracking errors)


class PreprocessConfig(StrictModel):
    """``facepgn preprocess``: unlabelled videos -> frame-pair Parquet shards (FRAME_PAIR_SCHEMA)."""

    input: _Optional[str] = None  # folder, glob, s3:// prefix, or .csv/.jsonl manifest (CLI --input)
    output: _Optional[str] = None  # folder or s3:// prefix (CLI --output)
    extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]
    target_fps: _Optional[float] = 10.0  # sampling rate; None: every frame
    max_frames_per_video: _Optional[int] = None  # sampled frames per video (tests, quick looks)
    max_videos: _Optional[int] = None  # process at most this many videos not yet done this run
    decode_chunk: int = 16  # sampled frames decoded per batch, with a fresh decoder each (memory bound)
    decode_max_side: _Optional[int] = 1280  # decode downscaled so the longer side is <= this
    image_size: int = 128  # crop side, pixels
    crop_margin: float = 0.3  # extra context around the detector box, fraction of its side, each side
    jpeg_quality: int = 95
    min_gap: int = 1  # pair gap range, in sampled frames
    max_gap: int = 5
    pairs_per_frame: int = 1  # pairs ending at each sampled frame of a track
    flow_preset: _Literal["ultrafast", "fast", "medium"] = "medium"
    landmarks: bool = True  # 68-point 2D pseudo-labels per crop
    landmark_model: _Optional[str] = None  # None: facepgn.paths.resolve_asset("landmarks")
    detector: FaceDetectorConfig = FaceDetectorConfig()
    tracker: FaceTrackerConfig = FaceTrackerConfig()
    quality: PairQualityConfig = PairQualityConfig()
    shard_max_pairs: int = 256  # rows per Parquet shard
    seed: int = 0  # pair-gap choice is seeded per (seed, video, track): reruns give the same shards
    executor: _Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    num_cpus_per_video: float = 0.5  # Ray CPUs per video task (fractional on small machines)
    max_concurrent_videos: _Optional[int] = None  # cap on parallel video tasks; None: as many as the cluster's CPUs allow
    cv2_threads: int = 1  # OpenCV threads inside each task (parallelism comes from tasks)
    retry_failed: bool = False  # rerun videos recorded as failed in an earlier run
    overwrite: bool = False  # ignore done markers and reprocess everything

# == training and tuning (facepgn.train) ==

from typing import Literal as _TLiteral, Optional as _TOptional  # noqa: E402

from pydantic import Field as _TField, model_validator as _t_model_validator  # noqa: E402


class ScalingSettings(StrictModel):
    """Ray Train workers (``ray.train.ScalingConfig``). Fractional CPUs leave room for Ray Data."""

    num_workers: int = _TField(2, ge=1)
    use_gpu: bool = False  # one GPU per worker (gpus_per_worker), NCCL, mixed precision per optim.amp
    cpus_per_worker: float = _TField(0.5, gt=0)  # 0.5: two workers + data reading fit a 2-CPU machine
    gpus_per_worker: float = _TField(1.0, ge=0)  # only with use_gpu
    resources_per_worker: dict[str, float] = {}  # extra (custom) resources per worker
    backend: _TLiteral["auto", "nccl", "gloo"] = "auto"  # auto: nccl with GPUs, gloo on CPUs
    gpu_mixed_precision: bool = True  # on GPUs with optim.amp "off": bf16 autocast (optim.amp wins when set)
    read_cpus: float = _TField(0.25, gt=0)  # CPUs per Ray Data Parquet read task


class ValidationSettings(StrictModel):
    """Held-out labelled faces: landmark NME after every epoch (and at the end)."""

    labelled: list[str] = []  # face-record Parquet; empty: the hold-out below (0: no validation)
    holdout_fraction: float = _TField(0.05, ge=0.0, lt=1.0)  # else: hold out this share of data.labelled, by subject
    max_records: int = _TField(512, ge=1)  # validation faces used (the first ones)
    batch_size: int = _TField(32, ge=1)
    overlay_images: int = _TField(4, ge=0)  # faces drawn with the predicted mesh + landmarks to TensorBoard
    every_steps: int = _TField(0, ge=0)  # also validate every N steps (at a checkpoint step); 0: after epochs only
    keep_best: bool = True  # write <output_dir>/best_model.pt whenever the validation NME improves (checkpoint selection)


class RayRunSettings(StrictModel):
    """Where Ray Train keeps the run; the same name + storage_path resumes from its latest checkpoint."""

    name: str = _TField("facepgn-train", min_length=1, pattern=r"^[A-Za-z0-9_.=-]+$")
    storage_path: str = "runs/ray"  # local folder or s3://bucket/prefix
    max_failures: int = _TField(2, ge=-1)  # worker-group restarts from the last checkpoint (-1: unlimited)
    checkpoints_to_keep: int = _TField(2, ge=1)
    record_batch_ids: bool = False  # audit: each worker writes the ids it trained on to output_dir/batch_ids/
    materialize_below_mb: float = 1024.0  # datasets smaller than this are read once into Ray's object store
    data_progress_bars: bool = False  # Ray Data progress bars (the workers log progress lines anyway)


class FaultInjection(StrictModel):
    """Deliberate worker death, for fault-tolerance tests and drills: worker ``rank`` exits its process
    (``os._exit``) after step ``at_step``, once: the ``marker`` file records that it happened."""

    at_step: _TOptional[int] = None
    rank: int = 1
    marker: _TOptional[str] = None
    delay_s: float = _TField(0.0, ge=0.0)  # wait before exiting: the controller registers reported checkpoints when it polls

    @_t_model_validator(mode="after")
    def _marker_needed(self):
        if self.at_step is not None and not self.marker:
            raise ValueError("fault.at_step needs fault.marker (a file that makes the crash happen once)")
        return self


class DistributedTrainConfig(TrainConfig):
    """``facepgn train``: the plain loop's config plus Ray Train scaling, validation and run storage.
    ``facepgn train --local`` runs the same file with the plain loop (the extra sections ignored)."""

    scaling: ScalingSettings = ScalingSettings()
    validation: ValidationSettings = ValidationSettings()
    ray: RayRunSettings = RayRunSettings()
    fault: FaultInjection = FaultInjection()

    def plain(self) -> TrainConfig:
        """The plain-loop part of this config."""
        return TrainConfig.model_validate(self.model_dump(include=set(TrainConfig.model_fields)))


class SearchDimension(StrictModel):
    """One searched setting: exactly one of the distributions."""

    loguniform: _TOptional[tuple[float, float]] = None
    uniform: _TOptional[tuple[float, float]] = None
    randint: _TOptional[tuple[int, int]] = None
    choice: _TOptional[list[Any]] = None
    grid: _TOptional[list[Any]] = None  # every value (times num_samples)

    @_t_model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("loguniform", "uniform", "randint", "choice", "grid") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, randint, choice, grid (got {given or 'none'})")
        lo_hi = self.loguniform or self.uniform or self.randint
        if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"range {list(lo_hi)} is empty")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        if (self.choice is not None and not self.choice) or (self.grid is not None and not self.grid):
            raise ValueError("choice/grid needs at least one value")
        return self


class SweepSettings(StrictModel):
    """Ray Tune: samples, ASHA early stopping on the validation NME (time unit: epochs)."""

    num_samples: int = _TField(8, ge=1)
    max_concurrent_trials: int = _TField(0, ge=0)  # 0: as many as the cluster's resources fit
    metric: str = "val_nme"
    mode: _TLiteral["min", "max"] = "min"
    grace_period: int = _TField(1, ge=1)  # epochs before ASHA may stop a trial
    max_t: int = _TField(10, ge=1)  # epochs at most per trial
    reduction_factor: float = _TField(2.0, gt=1.0)
    seed: _TOptional[int] = 0


class TuneJobConfig(StrictModel):
    """``facepgn tune``: a training config (``base`` file and/or inline ``train``), the search space
    over its dotted keys (``losses.flow``, ``optim.lr``, ...) and the sweep settings."""

    base: _TOptional[str] = None  # training YAML the trials start from (relative paths: to this file)
    train: DistributedTrainConfig = DistributedTrainConfig()
    search_space: dict[str, SearchDimension] = {  # default: the self-supervised terms' weights
        "losses.flow": SearchDimension(loguniform=(0.05, 2.0)),
        "losses.photometric": SearchDimension(loguniform=(0.05, 2.0)),
    }
    sweep: SweepSettings = SweepSettings()
    name: str = _TField("facepgn-tune", min_length=1, pattern=r"^[A-Za-z0-9_.=-]+$")
    storage_path: str = "runs/ray"  # Ray Tune experiment + the trials' Ray Train runs
    output_dir: str = "runs/tune"  # results.csv, results.md, best.yaml, summary.json
# == inference (facepgn.pipelines.infer) ==


class SmoothingConfig(StrictModel):
    """Temporal smoothing of pose, landmarks and coefficients along each track (facepgn.smoothing)."""

    enabled: bool = False
    method: Literal["local_linear", "one_euro"] = "local_linear"  # zero-phase offline | causal
    sigma_s: float = 0.06  # local_linear: Gaussian kernel width, seconds
    min_cutoff: float = 1.5  # one_euro: cut-off when still, Hz
    beta: float = 0.05  # one_euro: cut-off increase per unit/s of speed
    max_gap_frames: int = 15  # a track missing for longer is smoothed in separate pieces
    identity: Literal["track_mean", "smooth"] = "track_mean"  # one identity per track, or smoothed


class InferConfig(StrictModel):
    """Batch inference over videos and photos (facepgn.pipelines.infer)."""

    model: Optional[str] = None  # model file (facepgn.model) or training checkpoint
    input: Optional[str] = None  # folder, glob, s3:// prefix, single file, or a .csv/.jsonl manifest of videos and/or photos
    output: Optional[str] = None  # folder or s3:// prefix: rows/, overlays/, meshes/, summary.json
    runtime: Literal["torch", "onnx"] = "torch"  # onnx: onnxruntime for the networks (CPU: faster)
    video_extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]  # listed as videos
    image_extensions: list[str] = [".jpg", ".jpeg", ".png"]  # listed as photos
    stride: int = 1  # process every Nth frame
    max_frames: Optional[int] = None  # per video, before the stride (previews, tests)
    chunk_frames: int = 32  # frames decoded at a time per video (bounds memory)
    detector: FaceDetectorConfig = FaceDetectorConfig(detect_width=320)
    tracker: FaceTrackerConfig = FaceTrackerConfig()
    photo_max_side: Optional[int] = 1280  # photos: detection and the overlay image use the photo downscaled to this longer side; crops come from the full-resolution photo
    photo_detect_width: int = 640  # photos: the detector's width (a photo is one frame: detect finer than videos' detector.detect_width)
    photo_max_faces: Optional[int] = None  # faces per photo, highest detector score first; None: all the detector returns (detector.top_k)
    # context around the detector box, fraction of its side on each side. The model's training crops
    # (and AFLW2000-3D's roi boxes) are ~1.41x the landmarks' extent; a YuNet box + 0.05 matches them:
    # measured on the 503 dev images with the pretrain model, detector-box NME 9.4% at 0.05, 9.8% at
    # 0.0, 10.0% at 0.1, 11.1% at 0.15, ~17% at the former 0.3
    crop_margin: float = 0.05
    batch_size: int = 32  # faces per model call
    min_actors: int = 1  # model actor pool size
    max_actors: int = 1
    actor_num_cpus: float = 0.5  # CPUs reserved per model actor (no GPU)
    decode_num_cpus: float = 0.5  # CPUs reserved per decode+detect task
    decode_tasks: Optional[int] = None  # concurrent decode+detect tasks; None: the CPUs the model actors leave
    block_mb: float = 1.0  # Ray Data block size: crops stream to the model in blocks of about this size
    num_gpus: Optional[float] = None  # per model actor; None: 1 when the cluster has GPUs, else 0
    torch_threads: int = 1  # intra-op threads per actor (CPU)
    overlay: bool = False  # write overlays/<video_id>.mp4 (photos: overlays/<item_id>.jpg, .png for PNG photos)
    overlay_style: Literal["mesh", "landmarks"] = "mesh"
    meshes: Optional[str] = None  # "every:30" or "frames:0,10,20": export meshes of those frames
    mesh_format: Literal["obj", "ply"] = "obj"
    smoothing: SmoothingConfig = SmoothingConfig()  # videos only (a photo has no time axis)
    resume: bool = True  # skip items (videos, photos) whose done marker exists (False: redo everything)
    max_videos: Optional[int] = None  # process at most this many items (videos and photos) not yet done
    executor: Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baseline)
    finalize_on: Literal["driver", "tasks"] = "driver"  # per-video outputs: driver threads | Ray tasks (big overlay jobs)
    finalize_threads: int = 2  # driver threads writing rows/overlays/meshes
    finalize_num_cpus: float = 0.25  # per finalize task (finalize_on: tasks)
# == labelled datasets and evaluation (facepgn.labelled, facepgn.evaluation) ==


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


# == demo (facepgn.demo) ==


DEMO_STAGES = ("model", "synth_faces", "synth_videos", "preprocess", "train", "tune", "infer", "evaluate")


class DemoConfig(StrictModel):
    """``facepgn demo``: the whole pipeline on an embedded local Ray, sized for a laptop (facepgn.demo).

    Each stage runs the same code as its command (``facepgn synth|preprocess|train|tune|infer|evaluate``)
    with the stage's ``configs/<stage>.yaml`` plus the sizes below; ``overrides`` adds ``key=value``
    settings per stage on top (e.g. ``{train: ["optim.lr=0.001"]}``).
    """

    output: str = "runs/demo"  # every stage writes under here (local folder)
    stages: list[str] = list(DEMO_STAGES)  # run these, in pipeline order
    videos: Optional[str] = None  # real videos; None: <shared>/media/videos
    aflw2000: Optional[str] = None  # AFLW2000-3D-style folder; None: <shared>/media/aflw2000-3d
    num_cpus: Optional[float] = None  # embedded Ray's CPUs; None: all cores
    synthetic_faces: int = 1000  # labelled synthetic faces to train on
    synthetic_videos: int = 2  # synthetic clips added to the real videos for preprocess
    synthetic_video_frames: int = 50
    preprocess_frames: int = 30  # sampled frames per video (target_fps from configs/preprocess.yaml)
    train_steps: int = 300
    train_workers: int = 2  # Ray Train workers (fractional CPUs each)
    tune_trials: int = 2
    tune_steps: int = 60  # steps per trial
    infer_frames: int = 120  # frames per real video considered by inference (before the stride)
    infer_stride: int = 2
    eval_images: int = 150  # AFLW2000-3D images scored (the first N of the folder)
    overrides: dict[str, list[str]] = {}  # stage name -> extra key=value settings

    @_t_model_validator(mode="after")
    def _known_stages(self):
        unknown = sorted((set(self.stages) | set(self.overrides)) - set(DEMO_STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(DEMO_STAGES)}")
        return self



# == real-face data engine: label and profile jobs (facepgn.pipelines.label, facepgn.pipelines.profile) ==

from typing import Literal as _LLiteral, Optional as _LOptional  # noqa: E402


class LabellerSettings(StrictModel):
    """The pseudo-labeller's settings: ``facepgn.pseudolabel.FaceLabeller`` is built from these.

    Faces that fail a threshold are rejected with the reason named (``LabelOutcome.reason``) and
    counted in the label job's summary.json. Sizes are fractions of the face size (the square root
    of the area of the 68 points' bounding box) unless said otherwise."""

    landmarks: _LLiteral["auto", "upstream", "jaw-substitutes", "calibrated"] = "auto"  # the face model's 68-landmark definition the labels use (facemodel.LANDMARK_DEFINITIONS; auto: calibrated where the model has one, else upstream)
    face_model: _LOptional[str] = None  # face model .npz fitted to the teachers; None: facepgn.paths.resolve_asset("face_model")
    num_id: int = 40  # identity modes fitted (keep equal to the training ModelConfig.num_id)
    num_exp: int = 20  # expression modes fitted (training uses coefficients only with exactly ModelConfig.num_exp of them)
    mediapipe_model: _LOptional[str] = None  # MediaPipe face_landmark.tflite, the 468-point 3D teacher; None: facepgn.paths.resolve_asset("mediapipe_mesh")
    landmark_model: _LOptional[str] = None  # the 68-point 2D teacher (Peppa ONNX); None: facepgn.paths.resolve_asset("landmarks")
    fit_iterations: int = 8  # rounds of pose / coefficient fitting per face
    id_reg: float = 0.5  # fit prior: weight of |identity coefficients|^2 against the point residuals
    exp_reg: float = 0.5  # fit prior: weight of |expression coefficients|^2
    image_size: int = 128  # side of the record's square crop, pixels
    crop_margin: float = 0.2  # context around the face in the crop, fraction of the face's extent on each side
    min_face_size: float = 40.0  # detector box side in pixels of the frame or photo the labeller gets (decoded at most decode_max_side); smaller: too_small
    min_presence: float = 0.5  # the 3D teacher's face-presence probability; lower: no_face
    max_teacher_disagreement: float = 0.06  # mean distance between the two teachers' 51 inner points / face size; more: teachers_disagree
    max_fit_residual: float = 0.04  # mean 2D distance between the teacher's points and the fitted model's / face size; more: fit_residual
    max_abs_yaw_deg: float = 55.0  # |yaw| of the fitted pose, degrees (MediaPipe is poor beyond about 45-60); more: yaw_out_of_range


class LabelConfig(StrictModel):
    """``facepgn label``: real videos and photos -> pseudo-labelled face records (FACE_RECORD_SCHEMA v2)."""

    input: _LOptional[str] = None  # folder, glob, s3:// prefix, or .csv/.jsonl manifest (path[, subject_id]) of videos and photos (CLI --input)
    output: _LOptional[str] = None  # folder or s3:// prefix: data/part-*.parquet, items/, summary.json, errors.csv, contact_sheet.png (CLI --output)
    video_extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]
    image_extensions: list[str] = [".jpg", ".jpeg", ".png"]
    target_fps: _LOptional[float] = 2.0  # video frames are sampled at this rate; None: every frame
    max_frames_per_video: _LOptional[int] = 64  # at most this many of the sampled frames, spread evenly over the video; None: all
    decode_chunk: int = 16  # sampled frames decoded per batch, with a fresh decoder each (memory bound)
    decode_max_side: _LOptional[int] = 1280  # videos and photos are decoded downscaled so the longer side is <= this (records' crop_to_frame stays in source pixels)
    detector: FaceDetectorConfig = FaceDetectorConfig(detect_width=640)
    tracker: FaceTrackerConfig = FaceTrackerConfig()  # links a video's faces across sampled frames (one subject per track); max_faces: faces per frame or photo, highest score first
    label_batch_size: int = 16  # faces per FaceLabeller.label call
    labeller: LabellerSettings = LabellerSettings()
    contact_sheet: int = 48  # kept faces drawn with their landmarks in contact_sheet.png; 0: none
    executor: _LLiteral["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    num_cpus_per_actor: float = 0.5  # Ray CPUs per labeller actor (fractional on small machines); the pool has as many as the cluster's CPUs hold
    max_actors: _LOptional[int] = None  # cap on the labeller actor pool; None: cluster CPUs / num_cpus_per_actor
    cv2_threads: int = 1  # OpenCV threads inside each actor (parallelism comes from actors)
    torch_threads: int = 1  # torch intra-op threads inside each actor
    max_items: _LOptional[int] = None  # process at most this many items not yet done this run
    retry_failed: bool = False  # redo items recorded as skipped in an earlier run
    overwrite: bool = False  # ignore done markers and redo everything


class ProfileConfig(StrictModel):
    """``facepgn profile``: face records -> new views of each face at other head poses (facepgn.profiling.profile_views)."""

    input: _LOptional[str] = None  # face-record Parquet: a file, a folder searched recursively (a label output), a glob or an s3:// prefix (CLI --input)
    output: _LOptional[str] = None  # folder or s3:// prefix: data/part-*.parquet, items/, summary.json, errors.csv, contact_sheet.png (CLI --output)
    views: int = 4  # new views per input record (CLI --views)
    seed: int = 0  # each record's views come from a generator seeded by (seed, record_id): reruns write the same views
    face_model: _LOptional[str] = None  # the face model the records' coefficients belong to (truncated to their counts, with their landmark_definition); None: facepgn.paths.resolve_asset("face_model")
    yaw_max_deg: float = 90.0  # views' |yaw| up to this (profiling.sample_view_poses)
    large_yaw_share: float = 0.5  # share of the views beyond 60 degrees of |yaw|
    pitch_max_deg: float = 40.0  # views' pitch within +-this (truncated normal)
    roll_max_deg: float = 30.0  # views' roll within +-this
    max_source_yaw_deg: float = 45.0  # records turned further are skipped (yaw_out_of_range): too much of the face unseen
    image_format: _LLiteral[".jpg", ".png"] = ".jpg"  # encoding of the views' crops
    contact_sheet: int = 48  # views drawn with their landmarks in contact_sheet.png; 0: none
    executor: _LLiteral["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    num_cpus_per_actor: float = 0.5  # Ray CPUs per actor holding the face model
    max_actors: _LOptional[int] = None  # cap on the actor pool; None: cluster CPUs / num_cpus_per_actor
    cv2_threads: int = 1
    torch_threads: int = 1
    max_items: _LOptional[int] = None  # process at most this many input shards not yet done this run
    retry_failed: bool = False  # redo shards recorded as skipped in an earlier run
    overwrite: bool = False  # ignore done markers and redo everything
