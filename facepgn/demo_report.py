"""The demo's report (REPORT.md) and the pictures and numbers it shows: training curve, inference
statistics and overlay preview (:func:`render_report`, called by ``facepgn.demo.Demo.finish``)."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from facepgn import __version__, storage

if TYPE_CHECKING:
    from facepgn.demo import Demo


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
    _save_figure(fig, out_path)
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
        _save_figure(fig, plot_path)
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
    for section in (_data_section, _training_section, _sweep_section, _inference_section, _evaluation_section):
        lines += section(demo)
    return "\n".join(lines) + "\n"


def _data_section(demo: Demo) -> list[str]:
    """The face model, the synthetic data and the frame pairs."""
    r, lines = demo.results, []
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
    return lines


def _training_section(demo: Demo) -> list[str]:
    r, lines = demo.results, []
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
    return lines


def _sweep_section(demo: Demo) -> list[str]:
    r, lines = demo.results, []
    if "tune" in r and r["tune"].status.startswith("done"):
        results_md = os.path.join(demo.paths.tune, "results.md")
        lines += ["## Sweep", ""]
        if storage.exists(results_md):
            body = [ln for ln in storage.read_text(results_md).strip().splitlines() if not ln.startswith("# ")]
            while body and not body[0].strip():
                body.pop(0)
            lines += body + [""]
            best = os.path.join(demo.paths.tune, "best.yaml")
            if storage.exists(best):
                lines += [f"Best trial's training config: [{_rel(demo, best)}]({_rel(demo, best)}) "
                          f"(`facepgn train --config {best}`).", ""]
        else:
            lines += [f"See {_rel(demo, demo.paths.tune)}.", ""]
    return lines


def _inference_section(demo: Demo) -> list[str]:
    r, lines = demo.results, []
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
    return lines


def _evaluation_section(demo: Demo) -> list[str]:
    r, lines = demo.results, []
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
            body = [ln for ln in body if not ln.startswith("# ")]
            while body and not body[0].strip():
                body.pop(0)
            lines += [ln.replace("](", f"]({_rel(demo, demo.paths.evaluate)}/") if "](" in ln and "://" not in ln else ln
                      for ln in body]
        lines.append("")
    return lines


def _headline(metrics: dict[str, Any]) -> str:
    """'NME x.xx%' (68 points, 2D, mean of the yaw-bucket means) of an evaluation's metrics.json."""
    value = _get(metrics, "landmarks", "mesh_landmarks", "nme_2d_68", "mean", default=None)
    return f"NME {100 * value:.2f}%" if isinstance(value, (int, float)) else "(no NME)"


def _save_figure(fig, path: str) -> None:
    """A matplotlib figure as a PNG at ``path`` (atomically, local or s3://), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.atomic_write_bytes(path, buf.getvalue())
