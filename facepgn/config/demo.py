"""``facepgn demo``: the whole pipeline on one machine (facepgn.demo)."""

from __future__ import annotations

from typing import Optional

from pydantic import model_validator

from facepgn.config.base import StrictModel

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

    @model_validator(mode="after")
    def _known_stages(self):
        unknown = sorted((set(self.stages) | set(self.overrides)) - set(DEMO_STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(DEMO_STAGES)}")
        return self
