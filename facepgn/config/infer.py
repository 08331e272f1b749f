"""``facepgn infer``: batch inference over videos and photos (facepgn.pipelines.infer)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from facepgn.config.base import StrictModel
from facepgn.config.detection import FaceDetectorConfig, FaceTrackerConfig


class SmoothingConfig(StrictModel):
    """Temporal smoothing of pose, landmarks and coefficients along each track (facepgn.smoothing)."""

    enabled: bool = False
    method: Literal["local_linear", "one_euro"] = "local_linear"  # zero-phase offline | causal
    sigma_s: float = 0.06  # local_linear: Gaussian kernel width, seconds
    min_cutoff: float = 1.5  # one_euro: cut-off when still, Hz
    beta: float = 0.05  # one_euro: cut-off increase per unit/s of speed
    max_gap_frames: int = 15  # a track missing for longer is smoothed in separate pieces
    identity: Literal["track_mean", "smooth"] = "track_mean"  # one identity per track, or smoothed


class InferDecodeSettings(StrictModel):
    """Which inputs are read, which frames, and the decode+detect tasks that read them."""

    video_extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]  # listed as videos
    image_extensions: list[str] = [".jpg", ".jpeg", ".png"]  # listed as photos
    stride: int = 1  # process every Nth frame
    max_frames: Optional[int] = None  # per video, before the stride (previews, tests)
    chunk_frames: int = 32  # frames decoded at a time per video (bounds memory)
    num_cpus: float = 0.5  # CPUs reserved per decode+detect task
    tasks: Optional[int] = None  # concurrent decode+detect tasks; None: the CPUs the actors.min model slots leave
    block_mb: float = 1.0  # Ray Data block size: crops stream to the model in blocks of about this size


class PhotoSettings(StrictModel):
    """How photos are detected (a photo is one frame, often large)."""

    max_side: Optional[int] = 1280  # detection and the overlay image use the photo downscaled to this longer side; crops come from the full-resolution photo
    detect_width: int = 640  # the detector's width (a photo is one frame: detect finer than videos' detector.detect_width)
    max_faces: Optional[int] = None  # faces per photo, highest detector score first; None: all the detector returns (detector.top_k)


class ModelActorSettings(StrictModel):
    """The model stage: Ray tasks, each worker process loading the model once (the section keeps
    its older name, ``actors``). Decode and model tasks share the cluster's CPUs: decode never takes
    the ``min`` model slots, and the model takes every slot decode leaves (the end of a job)."""

    batch_size: int = 32  # faces per model call
    # auto: fused when the model runs on CPU (each decode+detect task also runs the model on its own
    # crops: no crops cross processes, every core does whole items), separate with GPUs (model tasks
    # batch the crops of all decode tasks on the GPU)
    stage: Literal["auto", "fused", "separate"] = "auto"
    min: int = 1  # model task slots decode+detect tasks never take (so decode cannot starve the model)
    max: Optional[int] = None  # model tasks at once; None: as many as the cluster's CPUs (GPUs) hold
    num_cpus: float = 0.5  # CPUs reserved per model task (no GPU)
    num_gpus: Optional[float] = None  # per model task; None: 1 when the cluster has GPUs, else 0
    torch_threads: int = 1  # intra-op threads per model task (CPU)


class InferOutputSettings(StrictModel):
    """What is written besides the rows, and where the per-video outputs are finished."""

    overlay: bool = False  # write overlays/<video_id>.mp4 (photos: overlays/<item_id>.jpg, .png for PNG photos)
    overlay_style: Literal["mesh", "landmarks"] = "mesh"
    meshes: Optional[str] = None  # "every:30" or "frames:0,10,20": export meshes of those frames
    mesh_format: Literal["obj", "ply"] = "obj"
    finalize_on: Literal["driver", "tasks"] = "driver"  # per-video outputs: driver threads | Ray tasks (big overlay jobs)
    finalize_threads: int = 2  # driver threads writing rows/overlays/meshes
    finalize_num_cpus: float = 0.25  # per finalize task (finalize_on: tasks)


class InferConfig(StrictModel):
    """Batch inference over videos and photos (facepgn.pipelines.infer)."""

    renamed: ClassVar[dict[str, str]] = {
        "video_extensions": "decode.video_extensions", "image_extensions": "decode.image_extensions",
        "stride": "decode.stride", "max_frames": "decode.max_frames", "chunk_frames": "decode.chunk_frames",
        "decode_num_cpus": "decode.num_cpus", "decode_tasks": "decode.tasks", "block_mb": "decode.block_mb",
        "photo_max_side": "photos.max_side", "photo_detect_width": "photos.detect_width",
        "photo_max_faces": "photos.max_faces",
        "batch_size": "actors.batch_size", "model_stage": "actors.stage", "min_actors": "actors.min", "max_actors": "actors.max",
        "actor_num_cpus": "actors.num_cpus", "num_gpus": "actors.num_gpus", "torch_threads": "actors.torch_threads",
        "overlay": "outputs.overlay", "overlay_style": "outputs.overlay_style", "meshes": "outputs.meshes",
        "mesh_format": "outputs.mesh_format", "finalize_on": "outputs.finalize_on",
        "finalize_threads": "outputs.finalize_threads", "finalize_num_cpus": "outputs.finalize_num_cpus",
    }

    model: Optional[str] = None  # model file (facepgn.model) or training checkpoint
    input: Optional[str] = None  # folder, glob, s3:// prefix, single file, or a .csv/.jsonl manifest of videos and/or photos
    output: Optional[str] = None  # folder or s3:// prefix: rows/, overlays/, meshes/, summary.json
    runtime: Literal["torch", "onnx"] = "torch"  # onnx: onnxruntime for the networks (CPU: faster)
    decode: InferDecodeSettings = InferDecodeSettings()
    detector: FaceDetectorConfig = FaceDetectorConfig(detect_width=320)
    tracker: FaceTrackerConfig = FaceTrackerConfig()
    photos: PhotoSettings = PhotoSettings()
    # context around the detector box, fraction of its side on each side. The model's training crops
    # (and AFLW2000-3D's roi boxes) are ~1.41x the landmarks' extent; a YuNet box + 0.05 matches them:
    # measured on the 503 dev images with the pretrain model, detector-box NME 9.4% at 0.05, 9.8% at
    # 0.0, 10.0% at 0.1, 11.1% at 0.15, ~17% at the former 0.3
    crop_margin: float = 0.05
    actors: ModelActorSettings = ModelActorSettings()
    outputs: InferOutputSettings = InferOutputSettings()
    smoothing: SmoothingConfig = SmoothingConfig()  # videos only (a photo has no time axis)
    resume: bool = True  # skip items (videos, photos) whose done marker exists (False: redo everything)
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
    max_videos: Optional[int] = None  # process at most this many items (videos and photos) not yet done
    executor: Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baseline)
