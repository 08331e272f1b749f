"""Training and tuning: the network (saved inside every model file), the loss weights, the optimiser,
the training data, the plain loop's config and the Ray Train / Ray Tune configs (facepgn.model,
facepgn.losses, facepgn.train)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from facepgn.config.base import StrictModel


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
    """The optimiser, its schedule, and mixed precision (the one setting for it, both loops)."""

    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 5.0  # max global gradient norm; 0: off
    # autocast dtype; auto: bf16 on a CUDA device, off on CPU (fp16 uses a GradScaler, CUDA only)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"


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


class ScalingSettings(StrictModel):
    """Ray Train workers (``ray.train.ScalingConfig``). Fractional CPUs leave room for Ray Data."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False  # one GPU per worker (gpus_per_worker), NCCL, mixed precision per optim.amp
    cpus_per_worker: float = Field(0.5, gt=0)  # 0.5: two workers + data reading fit a 2-CPU machine
    gpus_per_worker: float = Field(1.0, ge=0)  # only with use_gpu
    resources_per_worker: dict[str, float] = {}  # extra (custom) resources per worker
    # how Ray places the workers: PACK (fewest nodes, Ray Train's default), SPREAD (one per node
    # where it can: e.g. a worker on each of two CPU nodes), or their STRICT_ forms (fail if impossible)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl with GPUs, gloo on CPUs
    read_cpus: float = Field(0.25, gt=0)  # CPUs per Ray Data Parquet read task


class ValidationSettings(StrictModel):
    """Held-out labelled faces: landmark NME after every epoch (and at the end)."""

    labelled: list[str] = []  # face-record Parquet; empty: the hold-out below (0: no validation)
    holdout_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # else: hold out this share of data.labelled, by subject
    max_records: int = Field(512, ge=1)  # validation faces used (the first ones)
    batch_size: int = Field(32, ge=1)
    overlay_images: int = Field(4, ge=0)  # faces drawn with the predicted mesh + landmarks to TensorBoard
    every_steps: int = Field(0, ge=0)  # also validate every N steps (at a checkpoint step); 0: after epochs only
    keep_best: bool = True  # write <output_dir>/best_model.pt whenever the validation NME improves (checkpoint selection)


class RayRunSettings(StrictModel):
    """Where Ray Train keeps the run; the same name + storage_path resumes from its latest checkpoint."""

    name: str = Field("facepgn-train", min_length=1, pattern=r"^[A-Za-z0-9_.=-]+$")
    storage_path: str = "runs/ray"  # local folder or s3://bucket/prefix
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the last checkpoint (-1: unlimited)
    checkpoints_to_keep: int = Field(2, ge=1)
    record_batch_ids: bool = False  # audit: each worker writes the ids it trained on to output_dir/batch_ids/
    materialize_below_mb: float = 1024.0  # inputs smaller than this are read once into Ray's object store; larger ones stream, each worker reading its own share of their files
    data_progress_bars: bool = False  # Ray Data progress bars (the workers log progress lines anyway)


class FaultInjection(StrictModel):
    """Deliberate worker death, for fault-tolerance tests and drills: worker ``rank`` exits its process
    (``os._exit``) after step ``at_step``, once: the ``marker`` file records that it happened."""

    at_step: Optional[int] = None
    rank: int = 1
    marker: Optional[str] = None
    delay_s: float = Field(0.0, ge=0.0)  # wait before exiting: the controller registers reported checkpoints when it polls

    @model_validator(mode="after")
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
    shared_storage: bool = False  # local ray.storage_path / output_dir are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)

    @classmethod
    def upgrade(cls, data: dict[str, Any], notes: list[str] | None, where: str) -> dict[str, Any]:
        """``scaling.gpu_mixed_precision`` (bf16 on GPUs while optim.amp was "off", its old default)
        is ``optim.amp: auto`` now (false: ``off``); an amp other than off/auto wins, as it did."""
        scaling = data.get("scaling")
        if not (isinstance(scaling, dict) and "gpu_mixed_precision" in scaling):
            return data
        scaling = dict(scaling)
        gpu_bf16 = scaling.pop("gpu_mixed_precision")
        optim = dict(data.get("optim") or {})
        if optim.get("amp", "off") in ("off", "auto"):
            optim["amp"] = "auto" if gpu_bf16 else "off"
        if notes is not None:
            notes.append(f"{where}scaling.gpu_mixed_precision -> {where}optim.amp ({optim.get('amp', 'auto')})")
        return {**data, "scaling": scaling, "optim": optim}

    def plain(self) -> TrainConfig:
        """The plain-loop part of this config."""
        return TrainConfig.model_validate(self.model_dump(include=set(TrainConfig.model_fields)))


class SearchDimension(StrictModel):
    """One searched setting: exactly one of the distributions."""

    loguniform: Optional[tuple[float, float]] = None
    uniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None
    choice: Optional[list[Any]] = None
    grid: Optional[list[Any]] = None  # every value (times num_samples)

    @model_validator(mode="after")
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

    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as the cluster's resources fit
    metric: str = "val_nme"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    max_t: int = Field(10, ge=1)  # epochs at most per trial
    reduction_factor: float = Field(2.0, gt=1.0)
    seed: Optional[int] = 0


class TuneJobConfig(StrictModel):
    """``facepgn tune``: a training config (``base`` file and/or inline ``train``), the search space
    over its dotted keys (``losses.flow``, ``optim.lr``, ...) and the sweep settings."""

    base: Optional[str] = None  # training YAML the trials start from (relative paths: to this file)
    train: DistributedTrainConfig = DistributedTrainConfig()
    search_space: dict[str, SearchDimension] = {  # default: the self-supervised terms' weights
        "losses.flow": SearchDimension(loguniform=(0.05, 2.0)),
        "losses.photometric": SearchDimension(loguniform=(0.05, 2.0)),
    }
    sweep: SweepSettings = SweepSettings()
    name: str = Field("facepgn-tune", min_length=1, pattern=r"^[A-Za-z0-9_.=-]+$")
    storage_path: str = "runs/ray"  # Ray Tune experiment + the trials' Ray Train runs
    output_dir: str = "runs/tune"  # results.csv, results.md, best.yaml, summary.json
    shared_storage: bool = False  # local storage_path / output_dir are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
