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

from facepgn import __version__, storage
from facepgn.config import DEMO_STAGES, DemoConfig, dump_config
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


def available_commands() -> set[str]:
    from facepgn.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse keeps them here
        return set(action.choices)
    return set()


class Demo:
    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.paths = DemoLayout(cfg.output)
        self.log = log
        self.results: dict[str, StageResult] = {}
        self.commands = available_commands()
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
        """Run ``facepgn <argv>`` in this process; False (stage skipped/failed) if it cannot."""
        from facepgn.cli import main

        if command not in self.commands:
            result.status, result.note = "skipped", f"`facepgn {command}` is not available in this install"
            return False
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
                "--output", self.paths.pairs, "--set", _kv("max_frames_per_video", self.cfg.preprocess_frames)]
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
                _kv("max_frames", self.cfg.infer_frames), _kv("stride", self.cfg.infer_stride), _kv("overlay", True)]
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


def read_tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalar series from TensorBoard event files (``facepgn.train.tensorboard.read_tensorboard``)."""
    from facepgn.train.tensorboard import read_tensorboard

    return read_tensorboard(log_dir)["scalars"]


def training_curve(log_dir: str, out_path: str) -> bool:
    """The total training loss (and validation NME, if logged) against the step, as a PNG."""
    scalars = read_tensorboard_scalars(log_dir)
    loss = scalars.get("train/loss")
    if not loss:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(*zip(*loss), lw=1, marker="." if len(loss) < 30 else None, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    val = [(tag, pts) for tag, pts in scalars.items() if "nme" in tag and tag.startswith("val")]
    if val:
        ax2 = ax.twinx()
        for tag, pts in val[:2]:
            ax2.plot(*zip(*pts), "o-", ms=3, lw=1, label=tag, color="tab:red" if "pgn" not in tag else "tab:orange")
        ax2.set_ylabel("validation NME")
        ax2.legend(loc="upper center", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("training")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.atomic_write_bytes(out_path, buf.getvalue())
    return True


def inference_stats(rows_dir: str, plot_path: str | None = None) -> dict[str, dict[str, float]]:
    """Per-video numbers from the inference rows (all runs), and a plot of yaw along each track."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = storage.list_files(rows_dir, extensions=[".parquet"]) if storage.exists(rows_dir) else []
    if not files:
        return {}
    cols = ["video_id", "track_id", "frame_index", "time", "yaw", "quality", "fit_error"]
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files]).to_pydict()
    by_video: dict[str, dict[str, list]] = {}
    for i, vid in enumerate(table["video_id"]):
        d = by_video.setdefault(vid, {k: [] for k in cols})
        for k in cols:
            d[k].append(table[k][i])
    stats = {}
    for vid, d in sorted(by_video.items()):
        yaw = np.asarray(d["yaw"], dtype=float)
        stats[vid] = {
            "rows": len(yaw), "tracks": len(set(d["track_id"])), "frames": len(set(d["frame_index"])),
            "yaw_min": float(yaw.min()), "yaw_max": float(yaw.max()),
            "quality": float(np.mean(d["quality"])), "fit_error": float(np.mean(d["fit_error"])),
        }
    if plot_path:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return stats
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for vid, d in sorted(by_video.items()):
            tracks = np.asarray(d["track_id"])
            for tid in sorted(set(d["track_id"])):
                sel = tracks == tid
                order = np.argsort(np.asarray(d["time"])[sel])
                ax.plot(np.asarray(d["time"])[sel][order], np.asarray(d["yaw"])[sel][order], lw=1,
                        label=vid if tid == min(d["track_id"]) else None)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("yaw (deg)")
        ax.set_title("estimated head yaw along each face track")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        storage.atomic_write_bytes(plot_path, buf.getvalue())
    return stats


def overlay_preview(overlays_dir: str, out_path: str, height: int = 240, columns: int = 4) -> bool:
    """One middle frame of each overlay video, tiled into a JPEG for the report."""
    import cv2
    import numpy as np

    from facepgn import records

    tiles = []
    for path in storage.list_files(overlays_dir, extensions=[".mp4"]) if storage.exists(overlays_dir) else []:
        cap = cv2.VideoCapture(path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.set(cv2.CAP_PROP_POS_FRAMES, max(0, n // 2))
        ok, frame = cap.read()
        cap.release()
        if ok:
            w = int(round(frame.shape[1] * height / frame.shape[0]))
            tiles.append(cv2.cvtColor(cv2.resize(frame, (w, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    if not tiles:
        return False
    rows = []
    for i in range(0, len(tiles), columns):
        row = tiles[i:i + columns]
        rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    storage.atomic_write_bytes(out_path, records.encode_image(sheet, ".jpg"))
    return True


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _rel(demo: Demo, path: str) -> str:
    return os.path.relpath(path, demo.paths.root)


def render_report(demo: Demo, total: float) -> str:
    """REPORT.md: what ran, how long it took, the key numbers of each stage, links to the outputs."""
    r = demo.results
    lines = [
        "# facepgn demo report",
        "",
        f"{len(r)} stages, {sum(x.seconds for x in r.values()) / 60:.1f} min of stage time on {os.cpu_count()} cores "
        f"(this run: {total / 60:.1f} min wall), facepgn {__version__}. "
        "Every stage ran its `facepgn` command on one embedded Ray; each folder below has the stage's "
        "own `summary.json` (counts, errors with reasons, timings, versions, resolved config).",
        "",
        "| stage | status | seconds | outputs |",
        "| --- | --- | ---: | --- |",
    ]
    for name, res in r.items():
        outs = ", ".join(f"[{what}]({_rel(demo, p)})" for what, p in res.outputs.items()) or res.note
        lines.append(f"| {name} | {res.status} | {res.seconds:.1f} | {outs} |")
    lines += ["", f"![stage timings]({_rel(demo, demo.paths.timings_plot)})", ""]

    if "model" in r and r["model"].summary:
        s = r["model"].summary
        lines += ["## Face model", "", f"{s['name']}: {s['vertices']} vertices, {s['identity_modes']} identity modes, "
                  f"{s['expressions']} expressions, {s['landmarks']}/68 landmarks mapped ({s['path']}).", ""]
    if "synth_faces" in r and r["synth_faces"].summary:
        s = r["synth_faces"].summary
        lines += ["## Synthetic data", "", f"{s.get('written', 0) + s.get('skipped_existing', 0)} labelled faces, "
                  f"|yaw| buckets {s.get('yaw_buckets_deg')}."]
        if s.get("contact_sheet"):
            lines += ["", f"![synthetic faces]({_rel(demo, s['contact_sheet'])})"]
        v = r.get("synth_videos")
        if v and v.summary:
            lines += ["", f"{v.summary.get('videos')} synthetic clips of {v.summary.get('frames_per_video')} frames."]
        lines.append("")
    if "preprocess" in r and r["preprocess"].summary:
        s = r["preprocess"].summary
        lines += ["## Preprocess", "", f"{s.get('videos_read')} videos read, {s.get('videos_skipped_count', 0)} skipped, "
                  f"{s.get('pairs_written')} frame pairs in {s.get('shards')} shards, "
                  f"{_get(s, 'timings', 'frames_per_s')} sampled frames/s.", ""]
    if "train" in r and r["train"].summary:
        s = r["train"].summary
        c, m = s.get("counts", {}), s.get("final_metrics", {})
        lines += ["## Training", "",
                  f"{c.get('steps')} steps on {c.get('workers')} Ray Train workers, {c.get('labelled_records')} labelled "
                  f"faces + {c.get('frame_pairs')} frame pairs, {c.get('validation_records')} validation faces, "
                  f"{_get(s, 'timings', 'wall_s', default=0):.0f} s -> [model.pt]({_rel(demo, demo.model_file())}).", ""]
        shown = {k: v for k, v in m.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        if shown:
            lines += ["| final metric | value |", "| --- | ---: |"] + [f"| {k} | {v:.4g} |" for k, v in shown.items()] + [""]
        curve = os.path.join(demo.paths.train, "loss_curve.png")
        if training_curve(os.path.join(demo.paths.train, "tensorboard"), curve):
            lines += [f"![training loss]({_rel(demo, curve)})", ""]
        lines += [f"All loss terms, learning rate, throughput and validation overlays: "
                  f"`tensorboard --logdir {os.path.join(demo.paths.train, 'tensorboard')}`.", ""]
    if "tune" in r and r["tune"].status.startswith("done"):
        results_md = os.path.join(demo.paths.tune, "results.md")
        lines += ["## Sweep", ""]
        if storage.exists(results_md):
            body = [l for l in storage.read_text(results_md).strip().splitlines() if not l.startswith("# ")]
            while body and not body[0].strip():
                body.pop(0)
            lines += body + [""]
            best = os.path.join(demo.paths.tune, "best.yaml")
            if storage.exists(best):
                lines += [f"Best trial's training config: [{_rel(demo, best)}]({_rel(demo, best)}) "
                          f"(`facepgn train --config {best}`).", ""]
        else:
            lines += [f"See {_rel(demo, demo.paths.tune)}.", ""]
    if "infer" in r and r["infer"].status.startswith("done"):
        s = r["infer"].summary
        t = s.get("timings", {})
        stats = inference_stats(os.path.join(demo.paths.infer, "rows"), os.path.join(demo.paths.infer, "pose_tracks.png"))
        lines += ["## Inference on the real videos", ""]
        if stats:
            total_rows = sum(v["rows"] for v in stats.values())
            lines += [f"{len(stats)} videos, {total_rows} face rows (per-face 3D reconstruction per sampled frame). "
                      f"Last run: {t.get('wall_s', 0):.1f} s, {t.get('frames_per_s') or 0:.1f} frames/s end to end; "
                      f"{(s.get('counts') or {}).get('videos_failed', 0)} videos failed.", "",
                      "| video | face rows | tracks | frames | yaw range (deg) | mean quality | mean fit error |",
                      "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
            for vid, v in stats.items():
                lines.append(f"| {vid} | {v['rows']} | {v['tracks']} | {v['frames']} | {v['yaw_min']:.0f} .. {v['yaw_max']:.0f} "
                             f"| {v['quality']:.2f} | {v['fit_error']:.3f} |")
            lines += ["", "![head yaw along each track](infer/pose_tracks.png)"]
        stage_s = t.get("stage_s") or {}
        if stage_s:
            lines += ["", "Time per stage in the last run (summed over tasks): " + ", ".join(
                f"{k.removesuffix('_s')} {v:.1f} s" for k, v in stage_s.items() if v >= 0.05) + "."]
        preview = os.path.join(demo.paths.infer, "overlays_preview.jpg")
        if storage.exists(preview):
            lines += ["", f"![one frame of each overlay video]({_rel(demo, preview)})"]
        overlays = os.path.join(demo.paths.infer, "overlays")
        if storage.exists(overlays):
            files = storage.list_files(overlays)
            lines += ["", "Overlay videos: " + ", ".join(f"[{storage.basename(f)}]({_rel(demo, f)})" for f in files)]
        lines.append("")
    if "evaluate" in r and r["evaluate"].status.startswith("done"):
        report = os.path.join(demo.paths.evaluate, "report.md")
        which = (r["evaluate"].summary or {}).get("model", "trained by this demo")
        lines += ["## AFLW2000-3D evaluation", "", f"Model: {which}.", ""]
        trained = (r["evaluate"].summary or {}).get("trained_by_demo")
        if trained:
            lines += [f"The model this demo trained scores {_headline(trained)} on the same images "
                      f"([report]({_rel(demo, demo.paths.evaluate_trained)}/report.md)); the shipped one:", ""]
        if storage.exists(report):
            body = storage.read_text(report).strip().splitlines()
            body = [l for l in body if not l.startswith("# ")]
            while body and not body[0].strip():
                body.pop(0)
            lines += [l.replace("](", f"]({_rel(demo, demo.paths.evaluate)}/") if "](" in l and "://" not in l else l
                      for l in body]
        lines.append("")
    return "\n".join(lines) + "\n"


def _headline(metrics: dict[str, Any]) -> str:
    """'NME x.xx%' (68 points, 2D, mean of the yaw-bucket means) of an evaluation's metrics.json."""
    value = _get(metrics, "landmarks", "mesh_landmarks", "nme_2d_68", "mean", default=None)
    return f"NME {100 * value:.2f}%" if isinstance(value, (int, float)) else "(no NME)"


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo on an embedded local Ray (or the cluster in ``RAY_ADDRESS``)."""
    needs_ray = set(cfg.stages) & {"preprocess", "train", "tune", "infer"}
    started_ray = False
    if needs_ray:
        import ray

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(configure_logging=False, log_to_driver=True)
            else:
                ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=True)
            started_ray = True
        log(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    try:
        return Demo(cfg, log).run()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
