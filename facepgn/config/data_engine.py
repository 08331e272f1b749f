"""The real-face data engine: ``facepgn label`` (real videos and photos -> pseudo-labelled face
records) and ``facepgn profile`` (face records -> new views at other head poses)
(facepgn.pipelines.label, facepgn.pipelines.profile)."""

from __future__ import annotations

from typing import Literal, Optional

from facepgn.config.base import StrictModel
from facepgn.config.detection import FaceDetectorConfig, FaceTrackerConfig


class LabellerSettings(StrictModel):
    """The pseudo-labeller's settings: ``facepgn.pseudolabel.FaceLabeller`` is built from these.

    Faces that fail a threshold are rejected with the reason named (``LabelOutcome.reason``) and
    counted in the label job's summary.json. Sizes are fractions of the face size (the square root
    of the area of the 68 points' bounding box) unless said otherwise."""

    landmarks: Literal["auto", "upstream", "jaw-substitutes", "calibrated"] = "auto"  # the face model's 68-landmark definition the labels use (facemodel.LANDMARK_DEFINITIONS; auto: calibrated where the model has one, else upstream)
    face_model: Optional[str] = None  # face model .npz fitted to the teachers; None: facepgn.paths.resolve_asset("face_model")
    num_id: int = 40  # identity modes fitted (keep equal to the training ModelConfig.num_id)
    num_exp: int = 20  # expression modes fitted (training uses coefficients only with exactly ModelConfig.num_exp of them)
    mediapipe_model: Optional[str] = None  # MediaPipe face_landmark.tflite, the 468-point 3D teacher; None: facepgn.paths.resolve_asset("mediapipe_mesh")
    landmark_model: Optional[str] = None  # the 68-point 2D teacher (Peppa ONNX); None: facepgn.paths.resolve_asset("landmarks")
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

    input: Optional[str] = None  # folder, glob, s3:// prefix, or .csv/.jsonl manifest (path[, subject_id]) of videos and photos (CLI --input)
    output: Optional[str] = None  # folder or s3:// prefix: data/part-*.parquet, items/, summary.json, errors.csv, contact_sheet.png (CLI --output)
    video_extensions: list[str] = [".mp4", ".avi", ".mkv", ".mov", ".webm"]
    image_extensions: list[str] = [".jpg", ".jpeg", ".png"]
    target_fps: Optional[float] = 2.0  # video frames are sampled at this rate; None: every frame
    max_frames_per_video: Optional[int] = 64  # at most this many of the sampled frames, spread evenly over the video; None: all
    decode_chunk: int = 16  # sampled frames decoded per batch, with a fresh decoder each (memory bound)
    decode_max_side: Optional[int] = 1280  # videos and photos are decoded downscaled so the longer side is <= this (records' crop_to_frame stays in source pixels)
    detector: FaceDetectorConfig = FaceDetectorConfig(detect_width=640)
    tracker: FaceTrackerConfig = FaceTrackerConfig()  # links a video's faces across sampled frames (one subject per track); max_faces: faces per frame or photo, highest score first
    label_batch_size: int = 16  # faces per FaceLabeller.label call
    labeller: LabellerSettings = LabellerSettings()
    contact_sheet: int = 48  # kept faces drawn with their landmarks in contact_sheet.png; 0: none
    executor: Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    num_cpus_per_actor: float = 0.5  # Ray CPUs per labeller actor (fractional on small machines); the pool has as many as the cluster's CPUs hold
    max_actors: Optional[int] = None  # cap on the labeller actor pool; None: cluster CPUs / num_cpus_per_actor
    cv2_threads: int = 1  # OpenCV threads inside each actor (parallelism comes from actors)
    torch_threads: int = 1  # torch intra-op threads inside each actor
    max_items: Optional[int] = None  # process at most this many items not yet done this run
    retry_failed: bool = False  # redo items recorded as skipped in an earlier run
    overwrite: bool = False  # ignore done markers and redo everything
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)


class ProfileConfig(StrictModel):
    """``facepgn profile``: face records -> new views of each face at other head poses (facepgn.profiling.profile_views)."""

    input: Optional[str] = None  # face-record Parquet: a file, a folder searched recursively (a label output), a glob or an s3:// prefix (CLI --input)
    output: Optional[str] = None  # folder or s3:// prefix: data/part-*.parquet, items/, summary.json, errors.csv, contact_sheet.png (CLI --output)
    views: int = 4  # new views per input record (CLI --views)
    seed: int = 0  # each record's views come from a generator seeded by (seed, record_id): reruns write the same views
    face_model: Optional[str] = None  # the face model the records' coefficients belong to (truncated to their counts, with their landmark_definition); None: facepgn.paths.resolve_asset("face_model")
    yaw_max_deg: float = 90.0  # views' |yaw| up to this (profiling.sample_view_poses)
    large_yaw_share: float = 0.5  # share of the views beyond 60 degrees of |yaw|
    pitch_max_deg: float = 40.0  # views' pitch within +-this (truncated normal)
    roll_max_deg: float = 30.0  # views' roll within +-this
    max_source_yaw_deg: float = 45.0  # records turned further are skipped (yaw_out_of_range): too much of the face unseen
    image_format: Literal[".jpg", ".png"] = ".jpg"  # encoding of the views' crops
    contact_sheet: int = 48  # views drawn with their landmarks in contact_sheet.png; 0: none
    executor: Literal["ray", "local"] = "ray"  # local: a plain loop in this process (debugging, baselines)
    num_cpus_per_actor: float = 0.5  # Ray CPUs per actor holding the face model
    max_actors: Optional[int] = None  # cap on the actor pool; None: cluster CPUs / num_cpus_per_actor
    cv2_threads: int = 1
    torch_threads: int = 1
    max_items: Optional[int] = None  # process at most this many input shards not yet done this run
    retry_failed: bool = False  # redo shards recorded as skipped in an earlier run
    overwrite: bool = False  # ignore done markers and redo everything
    shared_storage: bool = False  # local paths are on storage every Ray node mounts (NFS, ...): allowed on a multi-node cluster (else s3:// only there)
