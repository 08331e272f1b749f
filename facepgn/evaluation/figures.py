"""Pictures of an evaluation's predictions, drawn on the images: face tiles (ground truth in red,
prediction in green, the detector's box in yellow), the grid of faces sampled across the |yaw|
buckets (roi and detector boxes) and the best and worst faces (:func:`report_figures`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from facepgn.crops import crop_with_affine
from facepgn.errors import FacepgnError
from facepgn.evaluation.metrics import DETECTOR_KEY, YAW_BUCKETS, EvaluationResult, yaw_bucket_index

GT_COLOUR = (255, 60, 60)  # ground truth: red (RGB)
PRED_COLOUR = (40, 255, 40)  # prediction: green
BOX_COLOUR = (255, 210, 0)  # the detector's box: yellow


def headline_set(names: Sequence[str]) -> str:
    """The landmark set the report's pictures show: the fitted mesh's when scored, else the first."""
    names = list(names)
    return "mesh_landmarks" if "mesh_landmarks" in names else names[0]


def _text(image: np.ndarray, text: str, top: bool, colour=(255, 255, 255)) -> None:
    import cv2

    h, w = image.shape[:2]
    scale = max(0.3, w / 420.0)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y0 = 0 if top else h - th - base - 4
    image[y0:y0 + th + base + 4, : min(w, tw + 6)] //= 3  # darken behind the text
    cv2.putText(image, text, (3, y0 + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def face_tile(
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray | None,
    size: int = 160,
    box: np.ndarray | None = None,
    top: str = "",
    bottom: str = "",
) -> np.ndarray:
    """A ``size`` x ``size`` RGB view of one face: ground truth (red) and prediction (green) drawn
    on the image around the ground-truth face (widened to show a far-off prediction), the
    detector's ``box`` (x, y, w, h) in yellow, and a caption line at the top and bottom."""
    import cv2

    from facepgn import render

    g = np.asarray(gt, dtype=np.float64)[:, :2]
    lo, hi = g.min(axis=0), g.max(axis=0)
    centre, extent = (lo + hi) / 2.0, float(max(hi - lo))
    side = 1.5 * extent
    p = None if pred is None else np.asarray(pred, dtype=np.float64)[:, :2]
    if p is not None and np.isfinite(p).all():
        side = max(side, min(2.2 * float(np.abs(p - centre).max()), 4.0 * extent))
    side = max(side, 8.0)
    x0, y0 = centre - side / 2.0
    crop = crop_with_affine(image, np.array([[side / size, 0, x0], [0, side / size, y0]]), size)

    def to_tile(q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64)[:, :2] - [x0, y0]) * (size / side)

    if box is not None and np.isfinite(box).all():
        (bx0, by0), (bx1, by1) = to_tile(np.array([[box[0], box[1]], [box[0] + box[2], box[1] + box[3]]]))
        cv2.rectangle(crop, (int(round(bx0)), int(round(by0))), (int(round(bx1)), int(round(by1))), BOX_COLOUR, 1, cv2.LINE_AA)
    radius = max(1.0, size / 110.0)
    crop = render.draw_landmarks(crop, to_tile(g), color=GT_COLOUR, radius=radius)
    if p is not None:
        crop = render.draw_landmarks(crop, to_tile(p), color=PRED_COLOUR, radius=radius)
    if top:
        _text(crop, top, True)
    if bottom:
        _text(crop, bottom, False)
    return crop


def grid_sample(values: np.ndarray, yaw_degrees: np.ndarray, per_bucket: int) -> list[list[int]]:
    """Per |yaw| bucket, ``per_bucket`` image indices at evenly spaced quantiles of ``values`` (NME)
    within the bucket, best first (all of a smaller bucket)."""
    values = np.asarray(values, dtype=np.float64)
    idx = yaw_bucket_index(yaw_degrees)
    rows = []
    for b in range(len(YAW_BUCKETS)):
        members = np.flatnonzero(idx == b)
        order = members[np.argsort(values[members], kind="stable")]
        if order.size > per_bucket:
            order = order[np.floor((np.arange(per_bucket) + 0.5) * order.size / per_bucket).astype(np.int64)]
        rows.append([int(i) for i in order])
    return rows


def _sheet(rows: list[list[np.ndarray]], columns: int, size: int) -> np.ndarray:
    """Tiles, each list starting a new grid row (padded with white tiles)."""
    from facepgn import render

    blank = np.full((size, size, 3), 255, np.uint8)
    tiles: list[np.ndarray] = []
    for row in rows:
        if not row:
            continue
        tiles += row + [blank] * ((-len(row)) % columns)
    return render.contact_sheet(tiles or [blank], columns=columns, pad=3)


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FacepgnError("could not encode a report image as PNG")
    return buf.tobytes()


def report_figures(
    result: EvaluationResult,
    *,
    per_bucket: int = 6,
    columns: int = 6,
    best_worst: int = 4,
    tile: int = 160,
) -> list[tuple[str, bytes, str]]:
    """(file name, PNG bytes, Markdown caption) of the report's pictures: ``grid.png`` (faces
    sampled across the three |yaw| buckets, roi-box predictions), ``grid_detector.png`` (the same
    faces, detector-box predictions) and ``best_worst.png`` (the best and worst faces by NME). Needs
    ``result.image_source``; empty without it or with ``per_bucket`` and ``best_worst`` both 0."""
    if result.image_source is None or not result.predictions or result.gt is None or (per_bucket <= 0 and best_worst <= 0):
        return []
    set_name = headline_set(result.predictions)
    key = f"{set_name}.nme_2d_68"
    nme_roi = np.asarray(result.per_image[key], dtype=np.float64)
    yaw = np.asarray(result.per_image["yaw_deg"], dtype=np.float64)
    det = result.detector
    nme_det = None if det is None else np.asarray(result.per_image[f"{DETECTOR_KEY}.{key}"], dtype=np.float64)
    cache: dict[int, np.ndarray] = {}

    def image(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = result.image_source(i)
        return cache[i]

    def det_text(i: int) -> str:
        return "" if nme_det is None else ("det: missed" if not det.detected[i] else f"det {100 * nme_det[i]:.2f}%")

    def roi_tile(i: int, label: str = "") -> np.ndarray:
        bottom = f"roi {100 * nme_roi[i]:.2f}%" + (f"  {det_text(i)}" if nme_det is not None else "")
        return face_tile(image(i), result.gt[i], result.predictions[set_name][i], tile,
                         top=f"{label}{result.names[i]} yaw {yaw[i]:.0f}", bottom=bottom)

    def det_tile(i: int, label: str = "") -> np.ndarray:
        found = bool(det.detected[i])
        return face_tile(image(i), result.gt[i], det.predictions[set_name][i] if found else None, tile,
                         box=det.boxes[i] if found else None, top=f"{label}{result.names[i]} yaw {yaw[i]:.0f}",
                         bottom=det_text(i) if found else f"det: {det.reasons[i]}")

    colours = "ground truth in red, prediction in green"
    what = f"`{set_name}` 68 points, {colours}"
    out: list[tuple[str, bytes, str]] = []
    if per_bucket > 0:
        rows = grid_sample(nme_roi, yaw, per_bucket)
        labels = [b for (b, _, _), r in zip(YAW_BUCKETS, rows) if r]
        cols = max(1, min(columns, max(len(r) for r in rows)))
        layout = (f"one row{'s' if per_bucket > cols else ''} per |yaw| bucket ({', '.join(labels)}), faces at evenly "
                  "spaced NME quantiles of the bucket, best first")
        out.append(("grid.png", _png(_sheet([[roi_tile(i) for i in r] for r in rows], cols, tile)),
                    f"**Predictions on AFLW2000-3D, roi boxes**: {what}; {layout}; roi and detector-box NME under each face."))
        if det is not None:
            out.append(("grid_detector.png", _png(_sheet([[det_tile(i) for i in r] for r in rows], cols, tile)),
                        f"**The same faces, detector boxes** (what `facepgn infer` feeds the model): {what}, "
                        "the YuNet box in yellow."))
    if best_worst > 0:
        k = min(best_worst, nme_roi.size)
        order = np.argsort(nme_roi, kind="stable")
        rows = [[roi_tile(int(i), "best ") for i in order[:k]], [roi_tile(int(i), "worst ") for i in order[::-1][:k]]]
        caption = f"**Best and worst faces by NME**: top row the {k} best, second row the {k} worst (roi boxes)"
        if det is not None and det.detected.any():
            found = np.flatnonzero(det.detected)
            worst = found[np.argsort(nme_det[found], kind="stable")[::-1][:k]]
            rows.append([det_tile(int(i), "worst ") for i in worst])
            caption += f"; third row the {len(worst)} worst with detector boxes (missed faces are listed above)"
        out.append(("best_worst.png", _png(_sheet(rows, max(len(r) for r in rows), tile)),
                    f"{caption}; {what}, NME written on each."))
    return out
