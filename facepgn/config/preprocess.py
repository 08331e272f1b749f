"""``facepgn preprocess``: unlabelled videos -> frame-pair Parquet shards (facepgn.pipelines.preprocess)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from facepgn.config.base import StrictModel
from facepgn.config.detection import FaceDetectorConfig, FaceTrackerConfig


class PairQualityConfig(StrictModel):
    """Filters a crop / pair must pass to be written (rejections are counted in summary.json)."""

    min_face_size: float = 40.0  # detector box side, frame pixels (after decode.max_side scaling)
    min_det_score: float = 0.7
    min_blur: float = 15.0  # variance of the Laplacian of the crop
    min_flow_magnitude: float = 0.0  # mean |flow|, crop pixels
    max_flow_magnitude: float = 0.15  # mean |flow| as a fraction of the crop size (tracking errors)


class VideoDecodeSettings(StrictModel):
    """Which videos are read and which of their frames, decoded how."""

    extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]
    target_fps: Optional[float] = 10.0  # sampling rate; None: every frame
    max_frames_per_video: Optional[int] = None  # sampled frames per video (tests, quick looks)
    chunk: int = 16  # sampled frames decoded per batch, with a fresh decoder each (memory bound)
    max_side: Optional[int] = 1280  # decode downscaled so the longer side is <= this


class CropSettings(StrictModel):
    """The face crops of the pairs."""

    size: int = 128  # crop side, pixels
    margin: float = 0.3  # extra context around the detector box, fraction of its side, each side
    jpeg_quality: int = 95


class PairingSettings(StrictModel):
    """Which frames of a track are paired, their flow, and the shards they are written to."""

    min_gap: int = 1  # pair gap range, in sampled frames
    max_gap: int = 5
    pairs_per_frame: int = 1  # pairs ending at each sampled frame of a track
    flow_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    shard_max_pairs: int = 256  # rows per Parquet shard


class PseudoLabelSettings(StrictModel):
    """2D landmark pseudo-labels of the crops."""

    landmarks: bool = True  # 68-point 2D pseudo-labels per crop
    model: Optional[str] = None  # the landmark network; None: facepgn.paths.resolve_asset("landmarks")


class VideoTaskSettings(StrictModel):
    """How the video tasks are run (``executor: ray``)."""

    num_cpus: float = 0.5  # Ray CPUs per video task (fractional on small machines)
    max_concurrent: Optional[int] = None  # cap on parallel video tasks; None: as many as the cluster's CPUs allow
    cv2_threads: int = 1  # OpenCV threads inside each task (parallelism comes from tasks)


class PreprocessConfig(StrictModel):
    """``facepgn preprocess``: unlabelled videos -> frame-pair Parquet shards (FRAME_PAIR_SCHEMA)."""

    renamed: ClassVar[dict[str, str]] = {
        "extensions": "decode.extensions", "target_fps": "decode.target_fps",
        "max_frames_per_video": "decode.max_frames_per_video", "decode_chunk": "decode.chunk",
        "decode_max_side": "decode.max_side",
        "image_size": "crops.size", "crop_margin": "crops.margin", "jpeg_quality": "crops.jpeg_quality",
        "min_gap": "pairs.min_gap", "max_gap": "pairs.max_gap", "pairs_per_frame": "pairs.pairs_per_frame",
        "flow_preset": "pairs.flow_preset", "shard_max_pairs": "pairs.shard_max_pairs",
        "landmarks": "labels.landmarks", "landmark_model": "labels.model",
        "num_cpus_per_video": "tasks.num_cpus", "max_concurrent_videos": "tasks.max_concurrent",
        "cv2_threads": "tasks.cv2_threads",
    }

    input: Optional[str] = None  # folder, glob, s3:// prefix, or .csv/.jsonl manifest (CLI --input)
    output: Optional[str] = None  # folder or s3:// prefix (CLI --output)
    decode: VideoDecodeSettings = VideoDecodeSettings()
    detector: FaceDetectorConfig = FaceDetectorConfig()
    tracker: FaceTrackerConfig = FaceTrackerConfig()
    crops: CropSettings = CropSettings()
    quality: PairQualityConfig = PairQualityConfig()
    pairs: PairingSettings = PairingSettings()
    labels: PseudoLabelSettings = PseudoLabelSettings()
    seed: int = 0  # pair-gap choice is seeded per (seed, video, track): reruns give the same shards
    executor: Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    tasks: VideoTaskSettings = VideoTaskSettings()
    max_videos: Optional[int] = None  # process at most this many videos not yet done this run
    retry_failed: bool = False  # rerun videos recorded as failed in an earlier run
    overwrite: bool = False  # ignore done markers and reprocess everything
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
