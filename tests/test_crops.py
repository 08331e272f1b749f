"""facepgn.crops is the one home of the crop geometry (the earlier names still resolve to it), and
facepgn.tracking.track_faces is the decode -> detect -> track loop of preprocess, infer and label."""

from __future__ import annotations

import numpy as np

from facepgn import crops, faces, labelled, records, tracking
from facepgn.faces import Detection
from facepgn.video import Frame


def test_earlier_names_are_the_crops_functions():
    assert records.crop_transform is crops.crop_transform
    assert records.apply_affine is crops.apply_affine and records.invert_affine is crops.invert_affine
    assert faces.square_crop is crops.square_crop and faces.square_crop_box is crops.square_crop_box
    assert faces.frame_to_crop is crops.frame_to_crop and labelled.to_crop is crops.frame_to_crop
    assert labelled.crop_with_affine is crops.crop_with_affine and labelled.landmark_box is crops.landmark_box


def test_roi_affine_and_crop_transform_agree_on_a_square():
    np.testing.assert_allclose(crops.roi_affine(np.array([10.0, 20.0, 74.0, 84.0]), 128), crops.crop_transform(10, 20, 64, 128))
    m = crops.roi_affine(np.array([0.0, 0.0, 100.0, 50.0]), 100)  # not square: y scaled by half
    np.testing.assert_allclose(crops.apply_affine(m, np.array([[100.0, 100.0]])), [[100.0, 50.0]])
    pts = np.array([[3.0, 4.0, 2.0]])
    back = crops.frame_to_crop(crops.apply_affine(crops.crop_transform(5, 6, 64, 128), pts), crops.crop_transform(5, 6, 64, 128))
    np.testing.assert_allclose(back, pts, atol=1e-4)


def _det(x: float, score: float) -> Detection:
    return Detection(box=np.array([x, 10.0, 40.0, 40.0], np.float32), points=np.zeros((5, 2), np.float32), score=score)


def test_track_faces_keeps_ids_across_frames_and_caps_faces():
    frames = [Frame(i * 2, i * 0.1, np.zeros((8, 8, 3), np.uint8)) for i in range(3)]
    found = {0: [_det(0, 0.9), _det(100, 0.8), _det(200, 0.7)], 1: [_det(102, 0.95), _det(2, 0.85)], 2: []}
    step = iter(range(3))
    seconds: dict[str, float] = {}
    out = list(tracking.track_faces(frames, lambda rgb: found[next(step)], tracker=tracking.new_tracker(), max_faces=2,
                                    clock=tracking.seconds_into(seconds, "_s")))
    assert [t.step for t in out] == [0, 1, 2] and [t.index for t in out] == [0, 2, 4]
    assert [len(t.detections) for t in out] == [2, 2, 0]  # at most max_faces, highest score first
    assert [(f.track_id, f.rank, float(f.detection.box[0])) for f in out[0].faces] == [(0, 0, 0.0), (1, 1, 100.0)]
    assert [(f.track_id, f.rank, float(f.detection.box[0])) for f in out[1].faces] == [(0, 1, 2.0), (1, 0, 102.0)]
    assert set(seconds) == {"decode_s", "detect_s"}
    photo = next(tracking.track_faces([frames[0]], lambda rgb: found[0], tracker=None, max_faces=None))
    assert [(f.track_id, f.rank) for f in photo.faces] == [(0, 0), (1, 1), (2, 2)]  # a photo: each face its rank
