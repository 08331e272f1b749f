"""``facepgn demo``: the whole pipeline on one machine, on an embedded local Ray.

face model -> synthetic labelled faces + synthetic videos -> preprocess (real + synthetic videos ->
frame pairs) -> train (Ray Train) -> a small sweep (Ray Tune) -> batch inference on the real videos
with overlays (Ray Data) -> AFLW2000-3D evaluation -> ``REPORT.md`` + ``summary.json``.

Each stage runs its command in this process (``facepgn.cli.main([...])``): the same code, configs
and outputs as running the stages one by one, or as ``ray job submit`` on a cluster. The demo only
chooses paths and sizes, starts Ray once, and collects the stages' ``summary.json`` files into one
report. A stage whose command is not installed is reported as skipped, with what depends on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from facepgn import storage
from facepgn.config import DEMO_STAGES, DemoConfig, dump_config
from facepgn.demo_report import overlay_preview, render_report
from facepgn.errors import FacepgnError
from facepgn.paths import REPO_ROOT, shared_path
from facepgn.summary import versions, write_summary

STAGE_TITLES = {
    "model": "face model",
    "synth_faces": "synthetic labelled faces",
    "synth_videos": "synthetic videos",
    "preprocess": "preprocess videos -> frame pairs (Ray Data)",
    "train": "train (Ray Train)",
    "tune": "sweep loss weights (Ray Tune)",
    "infer": "batch inference + overlays on the real videos (Ray Data)",
    "evaluate": "evaluate on AFLW2000-3D",
}


@dataclass
class StageResult:
    name: str
    status: str = "pending"  # done | skipped | failed
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)  # what -> path
    summary: dict[str, Any] = field(default_factory=dict)  # the stage's own summary.json
    note: str = ""


class DemoLayout:
    """Where every stage writes, under the demo's output folder (documented in docs/demo.md)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        join = lambda *p: os.path.join(self.root, *p)  # noqa: E731
        self.face_model = join("face_model.json")
        self.synthetic_faces = join("synthetic", "faces")
        self.synthetic_videos = join("synthetic", "videos")
        self.manifest = join("videos.csv")
        self.pairs = join("pairs")
        self.train = join("train")
        self.ray = join("ray")
        self.tune = join("tune")
        self.infer = join("infer")
        self.evaluate = join("eval")  # the shipped pretrained model (the demo's own when there is none)
        self.evaluate_trained = join("eval-trained")  # the model the demo trained, beside it
        self.report = join("REPORT.md")
        self.summary = join("summary.json")
        self.timings_plot = join("timings.png")


STAGE_CONFIG_FILES = {"tune": "tune-loss-weights.yaml"}  # default: configs/<stage>.yaml


def _config_file(stage: str) -> list[str]:
    """``--config configs/<stage file>`` when the checkout has one (an installed wheel may not)."""
    path = REPO_ROOT / "configs" / STAGE_CONFIG_FILES.get(stage, f"{stage}.yaml")
    return ["--config", str(path)] if path.is_file() else []


def _kv(key: str, value: Any) -> str:
    """A ``--set`` item whose value survives YAML parsing (paths, lists)."""
    return f"{key}={json.dumps(value)}"


def _read_json(path: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Demo:
    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.paths = DemoLayout(cfg.output)
        self.log = log
        self.results: dict[str, StageResult] = {}
        self.started = time.time()

    # ---- running -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        storage.makedirs(self.paths.root)
        dump_config(self.cfg, os.path.join(self.paths.root, "demo-config.yaml"))
        stages = [s for s in DEMO_STAGES if s in self.cfg.stages]
        self.log(f"facepgn demo: {len(stages)} stages -> {self.paths.root}")
        for n, name in enumerate(stages, 1):
            result = StageResult(name)
            self.results[name] = result
            self.log(f"\n=== [{n}/{len(stages)}] {STAGE_TITLES[name]} (t+{time.time() - self.started:.0f}s)")
            t0 = time.time()
            try:
                getattr(self, f"stage_{name}")(result)
                if result.status == "pending":
                    result.status = "done"
            except FacepgnError as exc:
                result.status, result.note = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in a stage: keep its traceback, still write the report
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                result.status, result.note = "failed", f"{type(exc).__name__}: {first}"
            result.seconds = time.time() - t0
            self.log(f"--- {name}: {result.status} in {result.seconds:.1f}s" + (f" ({result.note})" if result.note else ""))
            if result.status == "failed":
                break
        return self.finish()

    def _command(self, result: StageResult, command: str, argv: list[str]) -> bool:
        """Run ``facepgn <argv>`` in this process; False (stage failed) if it exits non-zero."""
        from facepgn.cli import main

        extra = self.cfg.overrides.get(result.name, [])
        if extra:
            argv = [*argv, "--set", *extra] if "--set" not in argv else [*argv, *extra]
        self.log("$ facepgn " + " ".join(argv))
        code = main(argv)
        if code != 0:
            result.status, result.note = "failed", f"`facepgn {command}` exited with {code}"
            return False
        return True

    def _needs(self, result: StageResult, path: str, what: str) -> bool:
        if storage.exists(path):
            return True
        result.status, result.note = "skipped", f"no {what} ({path} missing)"
        return False

    # ---- stages --------------------------------------------------------------------------------

    def stage_model(self, result: StageResult) -> None:
        from facepgn.facemodel import load_face_model
        from facepgn.paths import resolve_asset

        path = resolve_asset("face_model")
        model = load_face_model(path)
        info = model.summary()
        mapped = [int(i) for i in model.landmark_ids]
        info.update({"path": str(path), "landmark_vertex_ids": mapped})
        storage.atomic_write_text(self.paths.face_model, json.dumps(info, indent=2))
        lms = model.landmarks()  # (68, 3), neutral face, model units
        span = lms[model.landmark_mask].max(0) - lms[model.landmark_mask].min(0)
        self.log(
            f"face model {info['name']}: {info['vertices']} vertices, {info['triangles']} triangles, "
            f"{info['identity_modes']} identity modes, {info['expressions']} expressions ({info['expression_kind']}), "
            f"{info['landmarks']}/68 landmarks mapped, landmark extent {span[0]:.1f} x {span[1]:.1f} {info['units']}"
        )
        self.log(f"  from {path}")
        result.outputs["face model info"] = self.paths.face_model
        result.summary = info

    def stage_synth_faces(self, result: StageResult) -> None:
        out = self.paths.synthetic_faces
        if self._command(result, "synth", ["synth", "faces", "--out", out, "--n", str(self.cfg.synthetic_faces)]):
            result.outputs["face-record shards"] = out
            result.summary = _read_json(storage.join(out, "summary.json"))

    def stage_synth_videos(self, result: StageResult) -> None:
        out = self.paths.synthetic_videos
        argv = ["synth", "videos", "--out", out, "--n", str(self.cfg.synthetic_videos),
                "--frames", str(self.cfg.synthetic_video_frames)]
        if self._command(result, "synth", argv):
            result.outputs["videos"] = out
            result.summary = _read_json(storage.join(out, "summary.json"))

    def real_videos(self) -> str:
        return self.cfg.videos or str(shared_path("media/videos"))

    def write_manifest(self) -> int:
        """videos.csv: the real videos plus the synthetic clips, one subject per video."""
        from facepgn.video import list_videos

        items = list_videos(self.real_videos())
        synthetic = self.paths.synthetic_videos
        if storage.exists(synthetic):
            items += list_videos(synthetic)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "video_id", "subject_id"])
        for it in items:
            writer.writerow([it.path, it.video_id, it.subject_id])
        storage.atomic_write_text(self.paths.manifest, buf.getvalue())
        return len(items)

    def stage_preprocess(self, result: StageResult) -> None:
        n = self.write_manifest()
        self.log(f"{n} videos listed in {self.paths.manifest}")
        argv = ["preprocess", *_config_file("preprocess"), "--input", self.paths.manifest,
                "--output", self.paths.pairs, "--set", _kv("decode.max_frames_per_video", self.cfg.preprocess_frames)]
        if self._command(result, "preprocess", argv):
            result.outputs["frame-pair shards"] = self.paths.pairs
            result.outputs["video list"] = self.paths.manifest
            result.summary = _read_json(storage.join(self.paths.pairs, "summary.json"))

    def _train_data_overrides(self, prefix: str = "") -> list[str]:
        sets = []
        if storage.exists(self.paths.synthetic_faces):
            sets.append(_kv(f"{prefix}data.labelled", [self.paths.synthetic_faces]))
        if storage.exists(self.paths.pairs):
            sets.append(_kv(f"{prefix}data.pairs", [self.paths.pairs]))
        return sets

    def stage_train(self, result: StageResult) -> None:
        data = self._train_data_overrides()
        if not data:
            result.status, result.note = "skipped", "no training data (synthetic faces / frame pairs)"
            return
        argv = ["train", *_config_file("train"), "--set", *data,
                _kv("steps", self.cfg.train_steps), _kv("output_dir", self.paths.train),
                _kv("scaling.num_workers", self.cfg.train_workers), _kv("ray.storage_path", self.paths.ray),
                _kv("ray.name", "demo-train")]
        if self._command(result, "train", argv):
            result.outputs["model file"] = self.model_file()
            result.outputs["TensorBoard"] = os.path.join(self.paths.train, "tensorboard")
            result.summary = _read_json(os.path.join(self.paths.train, "summary.json"))

    def model_file(self) -> str:
        return os.path.join(self.paths.train, "model.pt")

    def shipped_model(self) -> str | None:
        """The pretrained model shipped with facepgn, or None in a build without one."""
        from facepgn.errors import FacepgnError
        from facepgn.model import pretrained_model_file

        try:
            return pretrained_model_file()
        except FacepgnError:
            return None

    def inference_model(self) -> tuple[str, str]:
        """(model file, what it is) for inference and the evaluation report: the shipped model (what
        a user gets without training) if this facepgn has one, else the model the demo trained."""
        shipped = self.shipped_model()
        return (shipped, "pretrained (shipped)") if shipped else (self.model_file(), "trained by this demo")

    def stage_tune(self, result: StageResult) -> None:
        data = self._train_data_overrides("train.")
        if not data:
            result.status, result.note = "skipped", "no training data"
            return
        argv = ["tune", *_config_file("tune"), "--set", *data,
                _kv("sweep.num_samples", self.cfg.tune_trials), _kv("train.steps", self.cfg.tune_steps),
                # one Ray Train worker per trial, so that the trials can run side by side
                _kv("train.scaling.num_workers", 1),
                _kv("output_dir", self.paths.tune), _kv("storage_path", self.paths.ray), _kv("name", "demo-tune")]
        if self._command(result, "tune", argv):
            result.outputs["sweep results"] = self.paths.tune
            result.summary = _read_json(os.path.join(self.paths.tune, "summary.json"))

    def stage_infer(self, result: StageResult) -> None:
        model, which = self.inference_model()
        if not self._needs(result, model, "trained model"):
            return
        result.outputs[f"model ({which})"] = model
        argv = ["infer", *_config_file("infer"), "--set", _kv("model", model),
                _kv("input", self.real_videos()), _kv("output", self.paths.infer),
                _kv("decode.max_frames", self.cfg.infer_frames), _kv("decode.stride", self.cfg.infer_stride), _kv("outputs.overlay", True)]
        if self._command(result, "infer", argv):
            result.outputs["per-face rows"] = os.path.join(self.paths.infer, "rows")
            result.outputs["overlay videos"] = os.path.join(self.paths.infer, "overlays")
            preview = os.path.join(self.paths.infer, "overlays_preview.jpg")
            if overlay_preview(os.path.join(self.paths.infer, "overlays"), preview):
                result.outputs["overlay preview"] = preview
            result.summary = _read_json(os.path.join(self.paths.infer, "summary.json"))

    def stage_evaluate(self, result: StageResult) -> None:
        """The report's model (shipped, else the demo's) in eval/; with a shipped model, the demo's
        own short training is scored too, in eval-trained/."""
        model, which = self.inference_model()
        if not self._needs(result, model, "trained model"):
            return
        data = self.cfg.aflw2000 or str(shared_path("media/aflw2000-3d"))
        runs = [(model, which, self.paths.evaluate)]
        if model != self.model_file() and storage.exists(self.model_file()):
            runs.append((self.model_file(), "trained by this demo", self.paths.evaluate_trained))
        for path, label, out in runs:
            argv = ["evaluate", "aflw2000", "--model", path, "--data", data, "--out", out,
                    *_config_file("evaluate"), "--set", _kv("limit", self.cfg.eval_images)]
            if not self._command(result, "evaluate", argv):
                return
            result.outputs[f"report ({label})"] = os.path.join(out, "report.md")
        result.outputs["CED plot"] = os.path.join(self.paths.evaluate, "ced.png")
        result.summary = _read_json(os.path.join(self.paths.evaluate, "metrics.json"))
        result.summary["model"] = which
        if len(runs) > 1:
            result.summary["trained_by_demo"] = _read_json(os.path.join(self.paths.evaluate_trained, "metrics.json"))

    # ---- report --------------------------------------------------------------------------------

    def stage_summary_file(self, name: str) -> str:
        """Where a stage's own summary lives (read back for the report, also for earlier runs)."""
        p = self.paths
        return {
            "model": p.face_model,
            "synth_faces": os.path.join(p.synthetic_faces, "summary.json"),
            "synth_videos": os.path.join(p.synthetic_videos, "summary.json"),
            "preprocess": os.path.join(p.pairs, "summary.json"),
            "train": os.path.join(p.train, "summary.json"),
            "tune": os.path.join(p.tune, "summary.json"),
            "infer": os.path.join(p.infer, "summary.json"),
            "evaluate": os.path.join(p.evaluate, "metrics.json"),
        }[name]

    def _carry_over_earlier_run(self) -> None:
        """Stages not run this time but done by an earlier run into the same folder stay in the report."""
        earlier = _read_json(self.paths.summary).get("stages", {})
        merged: dict[str, StageResult] = {}
        for name in DEMO_STAGES:
            if name in self.results:
                merged[name] = self.results[name]
            elif earlier.get(name, {}).get("status") in ("done", "done earlier"):
                old = earlier[name]
                merged[name] = StageResult(name, "done earlier", float(old.get("seconds", 0.0)), dict(old.get("outputs", {})),
                                           _read_json(self.stage_summary_file(name)), "from an earlier run")
        self.results = merged

    def finish(self) -> dict[str, Any]:
        total = time.time() - self.started
        self._carry_over_earlier_run()
        self._timings_plot()
        storage.atomic_write_text(self.paths.report, render_report(self, total))
        statuses = [r.status for r in self.results.values()]
        summary = write_summary(
            self.paths.summary, job="demo",
            counts={"stages": len(statuses), "done": statuses.count("done"), "done_earlier": statuses.count("done earlier"),
                    "skipped": statuses.count("skipped"), "failed": statuses.count("failed")},
            errors=[{"stage": n, "reason": r.note} for n, r in self.results.items() if r.status == "failed"],
            timings={"wall_s": round(total, 1), "stage_s": {name: round(r.seconds, 1) for name, r in self.results.items()}},
            config=self.cfg.model_dump(mode="json"),
            extra={
                "output": self.paths.root,
                "stages": {
                    name: {"status": r.status, "seconds": round(r.seconds, 1), "outputs": r.outputs, "note": r.note}
                    for name, r in self.results.items()
                },
            },
            versions=versions("ray", "torch", "cv2"),
        )
        self.log(f"\nfacepgn demo finished in {total / 60:.1f} min ({os.cpu_count()} cores):")
        for name, r in self.results.items():
            line = f"  {name:<13} {r.status:<8} {r.seconds:7.1f}s"
            self.log(line + (f"  {r.note}" if r.note else ""))
            for what, path in r.outputs.items():
                self.log(f"      {what}: {path}")
        self.log(f"  report:  {self.paths.report}")
        self.log(f"  summary: {self.paths.summary}")
        return summary

    def _timings_plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        names = list(self.results)
        secs = [self.results[n].seconds for n in names]
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
        ax.barh(names[::-1], secs[::-1], color="#4c72b0")
        ax.set_xlabel("seconds")
        ax.set_title(f"facepgn demo stages ({os.cpu_count()} cores)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        storage.atomic_write_bytes(self.paths.timings_plot, buf.getvalue())


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo on an embedded local Ray (or the cluster in ``RAY_ADDRESS``)."""
    needs_ray = set(cfg.stages) & {"synth_faces", "synth_videos", "preprocess", "train", "tune", "infer"}
    started_ray = False
    if needs_ray:
        import ray

        from facepgn.cluster import connect

        started_ray = connect(num_cpus=cfg.num_cpus, include_dashboard=False)
        log(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    try:
        return Demo(cfg, log).run()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
