"""Calibrate the face model's 68 landmark vertices on the AFLW2000-3D dev images, and print the
landmark-definition floor (oracle-fit NME) before and after.

Only the 503 dev images in ``shared/media/aflw2000-3d`` are read (the other 1497 AFLW2000-3D
images are the held-out test and must never be used). The split check calibrates on the
even-indexed images and scores on the odd ones; ``--write`` stores the ids calibrated on all 503
in ``facepgn/data/landmarks-<model name>.txt`` (what ``landmarks: calibrated`` / ``auto`` uses).

    .venv/bin/python bench/calibrate_landmarks.py [--data ../shared/media/aflw2000-3d] [--write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facepgn import calibration, labelled, paths
from facepgn.facemodel import load_face_model

OUT = Path(__file__).resolve().parent.parent / "facepgn" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(paths.shared_path("media/aflw2000-3d")))
    parser.add_argument("--num-id", type=int, default=40)
    parser.add_argument("--num-exp", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="store the ids calibrated on all images")
    args = parser.parse_args()

    faces = labelled.read_faces(labelled.list_labelled_images(args.data))
    gt = np.stack([f.landmarks for f in faces]).astype(np.float64)
    yaw = np.degrees(np.array([f.pose[1] for f in faces]))
    model = load_face_model().truncated(args.num_id, args.num_exp)
    start = model.with_landmarks("jaw-substitutes")
    even, odd = np.arange(0, len(gt), 2), np.arange(1, len(gt), 2)
    ids_even = calibration.calibrate_landmark_ids(start, gt[even])
    ids_all = calibration.calibrate_landmark_ids(start, gt)
    rows = [
        ("upstream", "all", model, np.arange(len(gt))),
        ("jaw-substitutes", "all", start, np.arange(len(gt))),
        ("jaw-substitutes", "odd half", start, odd),
        ("calibrated on even half", "odd half", model.with_landmark_ids(ids_even), odd),
        ("calibrated on all (shipped)", "all", model.with_landmark_ids(ids_all), np.arange(len(gt))),
    ]
    print(f"Landmark-definition floor: oracle fit of {model.name} ({args.num_id} id, {args.num_exp} exp) "
          f"to the ground truth of {len(gt)} AFLW2000-3D dev images; 2D NME (68 points) %\n")
    print("| definition | scored on | [0,30] | (30,60] | (60,90] | mean of buckets |")
    print("|---|---|---|---|---|---|")
    for name, on, fm, idx in rows:
        b = calibration.landmark_floor(fm, gt[idx], yaw[idx]).buckets
        print(f"| {name} | {on} ({len(idx)}) | {b['[0,30]']*100:.2f} | {b['(30,60]']*100:.2f} | {b['(60,90]']*100:.2f} | {b['mean']*100:.2f} |")
    if args.write:
        path = OUT / f"landmarks-{model.name}.txt"
        header = (f"# {model.name}: 68 landmark vertex ids (0-based, iBUG order), calibrated by bench/calibrate_landmarks.py\n"
                  f"# on the {len(gt)} AFLW2000-3D dev images (oracle fit, {args.num_id} id / {args.num_exp} exp modes).\n")
        path.write_text(header + "\n".join(" ".join(str(int(v)) for v in ids_all[i:i + 17]) for i in range(0, 68, 17)) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
