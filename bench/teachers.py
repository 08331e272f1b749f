"""Teacher accuracy on the AFLW2000-3D dev images, by yaw bucket: the 68-point 2D network (Peppa),
MediaPipe's face mesh (its 68 points through the face-model correspondence), and the fitted
pseudo-labels (the face model's 68 landmarks after the fit), for all faces and for the faces the
labeller keeps. Writes a Markdown report.

Faces are found as the label job finds them (YuNet boxes on the whole image; the detection nearest
the labelled face); images without a detection are left out of every row. The dev images are for
evaluation only: nothing here is trained on them.

    .venv/bin/python bench/teachers.py [--data ../shared/media/aflw2000-3d] [--out runs/bench/teachers.md]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np

from facepgn import evaluation, faces, labelled, paths, records
from facepgn.pseudolabel import FaceLabeller, FaceToLabel
from facepgn.teachers import MediaPipe68

PERMISSIVE = dict(min_presence=0.0, min_face_size=0.0, max_teacher_disagreement=np.inf, max_fit_residual=np.inf,
                  max_abs_yaw_deg=np.inf)


def frame_landmarks(record: dict) -> np.ndarray:
    return records.apply_affine(np.asarray(record["crop_to_frame"]).reshape(2, 3), np.asarray(record["landmarks_2d"]))


def row(name: str, pred: np.ndarray, gt: np.ndarray, yaw: np.ndarray) -> str:
    b = evaluation.bucket_means(evaluation.nme(pred, gt), yaw)
    n = evaluation.bucket_counts(yaw)
    cells = " | ".join(f"{b[k] * 100:.2f} ({n[k]})" for k in ("[0,30]", "(30,60]", "(60,90]"))
    return f"| {name} | {cells} | {b['mean'] * 100:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(paths.shared_path("media/aflw2000-3d")))
    parser.add_argument("--out", default="runs/bench/teachers.md")
    args = parser.parse_args()

    detector = faces.FaceDetector()
    dev = labelled.read_faces(labelled.list_labelled_images(args.data))
    items, gt, yaw, missed = [], [], [], 0
    for f in dev:
        found = detector.detect(f.image)
        if not found:
            missed += 1
            continue
        centre = f.landmarks[:, :2].mean(0)
        d = min(found, key=lambda x: float(np.linalg.norm(x.centre - centre)))
        items.append(FaceToLabel(f.image, d.box, f.source_path, f.name, points=d.points))
        gt.append(f.landmarks)
        yaw.append(np.degrees(f.pose[1]))
    gt, yaw = np.stack(gt).astype(np.float64), np.asarray(yaw)

    everything = FaceLabeller(**PERMISSIVE)
    t0 = time.perf_counter()
    outs = [o for i in range(0, len(items), 32) for o in everything.label(items[i:i + 32])]
    seconds = time.perf_counter() - t0
    peppa = np.stack([everything.peppa.predict(it.image, it.box) for it in items])
    mediapipe68 = MediaPipe68(mesh=everything.mesh, map68=everything.map68)  # the labeller's teacher and mapping
    mesh68 = np.stack([mediapipe68.predict(it.image, it.box, it.points[:2]) for it in items])
    fitted = np.stack([frame_landmarks(o.record) for o in outs])

    keeper = FaceLabeller()
    kept_outs = [o for i in range(0, len(items), 32) for o in keeper.label(items[i:i + 32])]
    kept = np.array([o.record is not None for o in kept_outs])
    reasons = Counter(o.reason for o in kept_outs if o.record is None)
    kept_lm = np.stack([frame_landmarks(o.record) for o in kept_outs if o.record is not None])

    lines = [
        "# Teachers and pseudo-labels on the AFLW2000-3D dev images",
        "",
        f"{len(items)} of {len(dev)} dev images (YuNet found no face in {missed}); 2D NME over 68 points, % of the "
        "ground-truth box size sqrt(w*h); in brackets the faces per yaw bucket. Landmark definition of the fit: "
        f"`{everything.definition}`.",
        "",
        "| landmarks | [0,30] | (30,60] | (60,90] | mean of buckets |",
        "|---|---|---|---|---|",
        row("68-point 2D network (Peppa)", peppa, gt, yaw),
        row("MediaPipe face mesh (68 via the correspondence)", mesh68, gt, yaw),
        row("fitted pseudo-labels, all faces", fitted, gt, yaw),
        row("fitted pseudo-labels, kept faces only", kept_lm, gt[kept], yaw[kept]),
        "",
        f"Kept {int(kept.sum())} of {len(items)}; rejected: "
        + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none") + ".",
        f"Labeller time: {seconds / len(items) * 1000:.1f} ms per face (one process; stages, ms: "
        + ", ".join(f"{k} {np.mean([o.timings.get(k, 0.0) for o in outs]) * 1000:.1f}" for k in ("mediapipe", "peppa", "fit", "record"))
        + ").",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
