"""Typed, validated configs: one pydantic model per job, loaded from YAML with ``--set a.b=value``.

Unknown keys and wrong types are errors (``extra="forbid"``), reported in one line that names the
file and the offending key before any work starts. Keys that moved keep working under their old
names (``StrictModel.renamed``), with a one-line note. ``facepgn config show JOB`` prints a job's
full defaults as commented YAML (:func:`facepgn.config.show.defaults_yaml`); the files in
``configs/`` list only what differs from them.

One module per job family: :mod:`~facepgn.config.base` (the strict model, overrides, loading),
:mod:`~facepgn.config.synthetic`, :mod:`~facepgn.config.training` (model, losses, optimiser, data,
Ray Train, Ray Tune), :mod:`~facepgn.config.detection` (shared by preprocess, infer, label),
:mod:`~facepgn.config.preprocess`, :mod:`~facepgn.config.infer`, :mod:`~facepgn.config.labelled`,
:mod:`~facepgn.config.evaluate`, :mod:`~facepgn.config.data_engine` (label, profile),
:mod:`~facepgn.config.demo`. Every name imports from ``facepgn.config`` itself.
"""

from __future__ import annotations

from facepgn.config.base import (
    ConfigT,
    StrictModel,
    apply_overrides,
    build_config,
    config_data,
    current_key,
    deep_merge,
    dump_config,
    format_validation_error,
    load_config,
    note_old_keys,
    parse_override,
    read_yaml,
    set_dotted,
    upgrade_keys,
)
from facepgn.config.data_engine import LabelConfig, LabellerSettings, ProfileConfig
from facepgn.config.demo import DEMO_STAGES, DemoConfig
from facepgn.config.detection import FaceDetectorConfig, FaceTrackerConfig
from facepgn.config.evaluate import EvaluateConfig
from facepgn.config.infer import (
    InferConfig,
    InferDecodeSettings,
    InferOutputSettings,
    ModelActorSettings,
    PhotoSettings,
    SmoothingConfig,
)
from facepgn.config.labelled import LabelledConfig
from facepgn.config.preprocess import (
    CropSettings,
    PairingSettings,
    PairQualityConfig,
    PreprocessConfig,
    PseudoLabelSettings,
    VideoDecodeSettings,
    VideoTaskSettings,
)
from facepgn.config.synthetic import SyntheticFacesConfig, SyntheticVideosConfig
from facepgn.config.training import (
    DistributedTrainConfig,
    FaultInjection,
    LossWeights,
    ModelConfig,
    OptimConfig,
    RayRunSettings,
    ScalingSettings,
    SearchDimension,
    SweepSettings,
    TrainConfig,
    TrainDataConfig,
    TuneJobConfig,
    ValidationSettings,
)
from facepgn.errors import ConfigError

#: ``facepgn config show JOB``: each job's config class and the command that reads it
JOB_CONFIGS: dict[str, tuple[type[StrictModel], str]] = {
    "synth-faces": (SyntheticFacesConfig, "facepgn synth faces"),
    "synth-videos": (SyntheticVideosConfig, "facepgn synth videos"),
    "preprocess": (PreprocessConfig, "facepgn preprocess"),
    "train": (DistributedTrainConfig, "facepgn train (--local: the plain loop, same file)"),
    "tune": (TuneJobConfig, "facepgn tune"),
    "infer": (InferConfig, "facepgn infer"),
    "labelled": (LabelledConfig, "facepgn labelled convert"),
    "evaluate": (EvaluateConfig, "facepgn evaluate aflw2000"),
    "label": (LabelConfig, "facepgn label"),
    "profile": (ProfileConfig, "facepgn profile"),
    "demo": (DemoConfig, "facepgn demo"),
}

__all__ = [
    "DEMO_STAGES", "JOB_CONFIGS", "ConfigError", "ConfigT", "CropSettings", "DemoConfig", "DistributedTrainConfig",
    "EvaluateConfig", "FaceDetectorConfig", "FaceTrackerConfig", "FaultInjection", "InferConfig", "InferDecodeSettings",
    "InferOutputSettings", "LabelConfig", "LabelledConfig", "LabellerSettings", "LossWeights", "ModelActorSettings",
    "ModelConfig", "OptimConfig", "PairQualityConfig", "PairingSettings", "PhotoSettings", "PreprocessConfig",
    "ProfileConfig", "PseudoLabelSettings", "RayRunSettings", "ScalingSettings", "SearchDimension", "SmoothingConfig",
    "StrictModel", "SweepSettings", "SyntheticFacesConfig", "SyntheticVideosConfig", "TrainConfig", "TrainDataConfig",
    "TuneJobConfig", "ValidationSettings", "VideoDecodeSettings", "VideoTaskSettings", "apply_overrides",
    "build_config", "config_data", "current_key", "deep_merge", "dump_config", "format_validation_error",
    "load_config", "note_old_keys", "parse_override", "read_yaml", "set_dotted", "upgrade_keys",
]
