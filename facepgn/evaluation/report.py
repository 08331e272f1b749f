"""The report of an evaluation: ``report.md`` (an NME table per landmark set and crop convention,
pose MAE, legends and crop notes, the pictures), the cumulative error distribution plot, and
:func:`write_report`, which writes them with ``metrics.json`` and ``per_image.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping

import numpy as np

from facepgn import storage
from facepgn.evaluation.figures import report_figures
from facepgn.evaluation.metrics import DETECTOR_KEY, EvaluationResult
from facepgn.summary import json_safe


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.2f}"


def _nme_table(landmarks: Mapping[str, Any], counts: Mapping[str, int]) -> list[str]:
    header = ["landmarks", "metric", *counts.keys(), "mean", "all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for set_name, entry in landmarks.items():
        for key, values in entry.items():
            cells = [set_name, key] + [_pct(values[b]) for b in counts] + [f"**{_pct(values['mean'])}**", _pct(values["all"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pose_lines(p: Mapping[str, float] | None, compared: Mapping[str, Mapping[str, float]] | None = None,
                main: str = "the evaluated model") -> list[str]:
    if not p:
        return []
    if not compared:
        return ["", "Pose MAE (degrees, wrapped):", "", "| yaw | pitch | roll | mean |", "|---|---|---|---|",
                f"| {p['yaw']:.2f} | {p['pitch']:.2f} | {p['roll']:.2f} | {p['mean']:.2f} |"]
    rows = [(main, p)] + [(f"{name} (compared)", v) for name, v in compared.items()]
    return ["", "Pose MAE (degrees, wrapped), per model:", "", "| model | yaw | pitch | roll | mean |", "|---|---|---|---|---|"] + [
        f"| {label} | {v['yaw']:.2f} | {v['pitch']:.2f} | {v['roll']:.2f} | {v['mean']:.2f} |" for label, v in rows]


def _crop_note_lines(m: Mapping[str, Any]) -> list[str]:
    notes = m.get("crop_notes") or {}
    if not notes:
        return []
    return ["Every row set is given these crops (what the model sees), except: "
            + "; ".join(f"`{name}`: {note}" for name, note in notes.items()) + ".", ""]


def _summary_lines(m: Mapping[str, Any], det: Mapping[str, Any] | None) -> list[str]:
    """One row per row set: nme_2d_68 by bucket with each crop convention (the tables below have
    every metric)."""
    counts = list(m["bucket_counts"])
    header = ["row set"] + [f"roi {b}" for b in counts] + ["roi **mean**"]
    if det and det.get("landmarks"):
        header += [f"detector {b}" for b in counts] + ["detector **mean**"]
    lines = ["Summary, 2D NME over 68 points (nme_2d_68, %):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in m["landmarks"].items():
        v = entry["nme_2d_68"]
        cells = [name] + [_pct(v[b]) for b in counts] + [f"**{_pct(v['mean'])}**"]
        if det and det.get("landmarks"):
            d = det["landmarks"].get(name, {}).get("nme_2d_68")
            cells += ([_pct(d[b]) for b in counts] + [f"**{_pct(d['mean'])}**"]) if d else ["n/a"] * (len(counts) + 1)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _legend_lines(m: Mapping[str, Any]) -> list[str]:
    legend = m.get("legend") or {}
    if not legend:
        return []
    return ["Row sets:", ""] + [f"- `{name}`: {text}" for name, text in legend.items()] + [""]


def _scale_note(m: Mapping[str, Any]) -> str:
    r = m.get("crop_side_over_face")
    return "" if r is None else f"; crop side {r:.2f}x the face's landmark extent (median)"


def _detector_lines(det: Mapping[str, Any], main: str = "the evaluated model") -> list[str]:
    n, found, missed = det["num_images"], det["num_detected"], det["num_missed"]
    lines = ["", "## Detector boxes (what a user's pipeline crops)", "", f"Crop boxes: {det['box']}{_scale_note(det)}.", ""]
    lines += _crop_note_lines(det)
    by_bucket = ", ".join(f"{k}: {v}" for k, v in det["missed_bucket_counts"].items())
    lines += [f"Labelled face detected in {found} of {n} images ({100.0 * found / max(n, 1):.1f}%); "
              f"missed in {missed} ({by_bucket}). The NME below is over the {found} detected images only "
              "(a missed face has no prediction in this pass; the CED plot counts it as a failure).", ""]
    if found:
        lines += _nme_table(det["landmarks"], det["bucket_counts"])
        same = det.get("roi_same_images") or {}
        if same:
            parts = [f"{name} {_pct(v['mean'])}% ("
                     + ", ".join(f"{b} {_pct(v[b])}" for b in det["bucket_counts"]) + ")" for name, v in same.items()]
            lines += ["", f"For comparison, nme_2d_68 of the roi boxes on the same {found} images: " + "; ".join(parts) + "."]
        lines += _pose_lines(det.get("pose_mae_deg"), det.get("pose_mae_deg_compared"), main)
    if det.get("missed"):
        shown = det["missed"][:20]
        lines += ["", "Missed:", ""] + [f"- {e['name']} (yaw {e['yaw_deg']:.0f}): {e['reason']}" for e in shown]
        if len(det["missed"]) > len(shown):
            lines.append(f"- ... and {len(det['missed']) - len(shown)} more (per_image.csv: {DETECTOR_KEY}.detected = 0)")
    return lines


def report_markdown(result: EvaluationResult, title: str = "Evaluation", plot: str | None = None) -> str:
    """The metrics as Markdown: an NME table (percent of face size) per landmark set and crop
    convention (the 3DDFA roi boxes; the detector boxes when that pass ran), pose MAE, the
    cumulative error plot ``plot`` (a path relative to the report) and ``result.figures``."""
    m = result.metrics
    counts = m["bucket_counts"]
    det = m.get(DETECTOR_KEY)
    lines = [f"# {title}", "", f"{m['num_images']} images; |yaw| buckets: "
             + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".", ""]
    lines += ["NME in % of sqrt(w*h) of the ground-truth 2D landmark box (3DDFA protocol); "
              "'mean' is the mean of the three bucket means (the headline), 'all' the plain mean.", ""]
    lines += _legend_lines(m)
    if len(m["landmarks"]) > 1:
        lines += _summary_lines(m, det)
    main = m.get("model_label") or "the evaluated model"
    if det:
        lines += ["## 3DDFA roi boxes (the published protocol)", "", f"Crop boxes: {m.get('box')}{_scale_note(m)}.", ""]
        lines += _crop_note_lines(m)
    lines += _nme_table(m["landmarks"], counts)
    lines += _pose_lines(m.get("pose_mae_deg"), m.get("pose_mae_deg_compared"), main)
    if det:
        lines += _detector_lines(det, main)
    if plot:
        if det:
            lines += ["", "## Cumulative error distribution"]
        lines += ["", f"![cumulative error distribution]({plot})"]
    if result.figures:
        lines += ["", "## Predictions on the images"]
    for name, caption in result.figures:
        lines += ["", caption, "", f"![{storage.basename(name).rsplit('.', 1)[0]}]({name})"]
    if m.get("box") and not det:
        lines += ["", f"Crop boxes: {m['box']}{_scale_note(m)}."]
        if m.get("crop_notes"):
            lines += [""] + _crop_note_lines(m)[:1]
    if m.get("errors"):
        lines += ["", f"{len(m['errors'])} input(s) skipped:", ""] + [f"- {e['path']}: {e['reason']}" for e in m["errors"]]
    empty = [b for b, c in counts.items() if c == 0]
    if empty:
        lines += ["", f"Note: no images in bucket(s) {', '.join(empty)}; 'mean' averages the others."]
    return "\n".join(lines) + "\n"


CED_MANY_SETS = 3  # above this many landmark sets the CED plot shows 2D 68-point NME only, one panel per convention


def ced_plot_png(result: EvaluationResult, title: str = "Cumulative error distribution", max_nme: float | None = None) -> bytes:
    """PNG bytes: the fraction of images with NME <= x, for each landmark set's 2D/3D 68-point NME;
    solid for the roi boxes, dashed (same colour) for the detector boxes, whose missed faces count
    as failures (the curve levels off at the detected fraction). With more than
    :data:`CED_MANY_SETS` sets (peers, compared models) only the 2D 68-point NME is drawn, the roi
    boxes and the detector boxes in two panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    prefix = DETECTOR_KEY + "."
    keys = [k for k in result.per_image if k.endswith("_68") and ".nme_" in k and not k.startswith(prefix)]
    many = len({k.rsplit(".nme_", 1)[0] for k in keys}) > CED_MANY_SETS
    if many:
        keys = [k for k in keys if k.endswith(".nme_2d_68")]
    two_panels = many and any(prefix + k in result.per_image for k in keys)
    curves = []  # (panel, label, finite values in %, number of images, line style, colour)
    for i, key in enumerate(keys):
        label = key.replace(".nme_", " ").replace("_68", " 68pt")
        if many:
            label = key.rsplit(".nme_", 1)[0]
        colour = f"C{i % 10}"
        style = "-" if i < 10 else ":"
        values = 100.0 * np.asarray(result.per_image[key], dtype=np.float64)
        if prefix + key in result.per_image:
            det = 100.0 * np.asarray(result.per_image[prefix + key], dtype=np.float64)
            found = det[np.isfinite(det)]
            mean = f"{found.mean():.2f}%" if found.size else "n/a"
            if two_panels:
                curves.append((0, f"{label} (mean {values.mean():.2f}%)", values, values.size, style, colour))
                curves.append((1, f"{label} ({found.size}/{det.size} detected, mean {mean})", found, det.size, style, colour))
            else:
                curves.append((0, f"{label}, roi boxes (mean {values.mean():.2f}%)", values, values.size, style, colour))
                curves.append((0, f"{label}, detector boxes ({found.size}/{det.size} detected, mean {mean})", found, det.size, "--", colour))
        else:
            curves.append((0, f"{label} (all images: {values.mean():.2f}%)", values, values.size, style, colour))
    if max_nme is None:
        top = max((np.percentile(v, 95) for _, _, v, _, _, _ in curves if v.size), default=10.0)
        max_nme = float(max(10.0, math.ceil(top)))
    panels = 2 if two_panels else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.2 * panels * (0.85 if panels > 1 else 1.0), 4.8), dpi=100, squeeze=False)
    for p, ax in enumerate(axes[0]):
        for panel, label, values, total, style, colour in curves:
            if panel != p:
                continue
            xs = np.concatenate([[0.0], np.sort(values)])
            ys = np.arange(0, values.size + 1) / max(total, 1)
            ax.step(xs, ys, where="post", label=label, linestyle=style, color=colour)
        ax.set_xlim(0, max_nme)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("2D NME, 68 points (% of face size)" if many else "NME (% of face size)")
        ax.set_ylabel("fraction of images")
        what = f"{title} ({result.metrics['num_images']} images)"
        if two_panels:
            what = ("3DDFA roi boxes" if p == 0 else "detector boxes (missed faces count as failures)") + f", {result.metrics['num_images']} images"
        ax.set_title(what, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    if two_panels:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(result: EvaluationResult, out_dir: str, title: str = "Evaluation", *, grid_per_bucket: int = 6,
                 grid_columns: int = 6, best_worst: int = 4, grid_tile: int = 160) -> dict[str, str]:
    """Write ``report.md``, ``ced.png``, ``metrics.json`` and ``per_image.csv`` (atomically) to
    ``out_dir``, and the pictures of :func:`report_figures` (embedded in the report) when the
    result has its images."""
    storage.makedirs(out_dir)
    paths = {name: storage.join(out_dir, name) for name in ("report.md", "ced.png", "metrics.json", "per_image.csv")}
    figures = report_figures(result, per_bucket=grid_per_bucket, columns=grid_columns, best_worst=best_worst, tile=grid_tile)
    for name, png, _ in figures:
        paths[name] = storage.join(out_dir, name)
        storage.atomic_write_bytes(paths[name], png)
    result.figures = [(name, caption) for name, _, caption in figures]
    storage.atomic_write_text(paths["report.md"], report_markdown(result, title, plot="ced.png"))
    storage.atomic_write_bytes(paths["ced.png"], ced_plot_png(result, title))
    storage.atomic_write_text(paths["metrics.json"], json.dumps(json_safe(result.metrics), indent=2))
    columns = list(result.per_image)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", *columns])
    for i, name in enumerate(result.names):
        writer.writerow([name, *(f"{float(result.per_image[c][i]):.6g}" for c in columns)])
    storage.atomic_write_text(paths["per_image.csv"], text.getvalue())
    result.report_paths = paths
    return paths
