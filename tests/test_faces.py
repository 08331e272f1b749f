"""YuNet detection, tracking, square crops and their transforms, landmarks, DIS flow."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn import records
from facepgn.faces import Detection, FaceDetector, FaceTracker, LandmarkModel, frame_to_crop, square_crop
from facepgn.flow import FlowEstimator, flow_magnitude
from facepgn.video import VideoReader


@pytest.fixture(scope="module")
def frames(shared):
    reader = VideoReader(str(shared / "media" / "videos" / "short_hamilton_clip.mp4"))
    return list(reader.frames(reader.sample_indices(10.0, max_frames=6)))


def _det(x, y, w, h, score=0.9):
    return Detection(box=np.array([x, y, w, h], np.float32), points=np.zeros((5, 2), np.float32), score=score)


def test_detector_finds_several_faces_and_tracks_keep_ids(frames):
    detector = FaceDetector()
    tracker = FaceTracker()
    ids_per_frame = []
    for f in frames:
        dets = [d for d in detector.detect(f.rgb) if d.score > 0.85]
        assert dets and all(0 <= d.box[0] < 640 and 0 <= d.box[1] < 360 for d in dets)
        ids_per_frame.append({t for t, _ in tracker.update(dets)})
    assert max(len(ids) for ids in ids_per_frame) >= 2  # 2-3 faces in this clip
    # the faces of the first frame keep their ids in the next ones
    assert ids_per_frame[0] <= ids_per_frame[1] | ids_per_frame[2]


def test_tracker_matches_by_iou_then_centre_and_ages_out():
    tracker = FaceTracker(max_missed=1)
    assert tracker.update([_det(0, 0, 50, 50), _det(200, 0, 50, 50)]) == [(0, tracker._tracks[0].last), (1, tracker._tracks[1].last)]
    out = tracker.update([_det(205, 2, 52, 50), _det(3, 1, 50, 50)])
    assert [t for t, d in out] == [0, 1] and out[0][1].box[0] == 3
    tracker.update([])
    tracker.update([])
    tracker.update([])
    assert [t for t, _ in tracker.update([_det(0, 0, 50, 50)])] == [2]  # old tracks aged out: new id


def test_square_crop_transform_maps_crop_pixels_to_frame_pixels(frames):
    rgb = frames[0].rgb
    box = np.array([300.5, 40.2, 80.0, 100.0], np.float32)
    crop, m = square_crop(rgb, box, margin=0.25, size=64)
    assert crop.shape == (64, 64, 3)
    side = 100 * 1.5
    assert m[0, 0] == pytest.approx(side / 64, rel=0.01) and m[1, 1] == m[0, 0]
    centre = records.apply_affine(m, np.array([[32.0, 32.0]]))[0]
    assert np.allclose(centre, [340.5, 90.2], atol=2)
    # a crop at scale 1 is an exact copy of the frame region
    crop1, m1 = square_crop(rgb, np.array([100, 50, 64, 64], np.float32), margin=0.0, size=64)
    x0, y0 = int(m1[0, 2]), int(m1[1, 2])
    assert np.array_equal(crop1, rgb[y0:y0 + 64, x0:x0 + 64])
    assert np.allclose(frame_to_crop(np.array([[x0 + 5.0, y0 + 7.0]]), m1), [[5, 7]])
    # partly outside the frame: zero padding, no error
    crop2, _ = square_crop(rgb, np.array([-30, -30, 60, 60], np.float32), 0.3, 32)
    assert crop2.shape == (32, 32, 3) and crop2[0, 0].sum() == 0


def test_landmarks_fall_inside_the_face_box(frames):
    detector, model = FaceDetector(), LandmarkModel()
    det = detector.detect(frames[0].rgb)[0]
    lm = model.predict(frames[0].rgb, det.box)
    assert lm.shape == (68, 2)
    x, y, w, h = det.box
    inside = (lm[:, 0] > x - 0.15 * w) & (lm[:, 0] < x + 1.15 * w) & (lm[:, 1] > y - 0.15 * h) & (lm[:, 1] < y + 1.15 * h)
    assert inside.mean() > 0.9
    # eyes (36-47) above the mouth (48-67) in an upright face
    assert lm[36:48, 1].mean() < lm[48:68, 1].mean()


def test_dis_flow_recovers_a_known_shift(frames):
    crop, _ = square_crop(frames[0].rgb, np.array([260, 20, 120, 140], np.float32), 0.2, 128)
    shifted = np.roll(crop, shift=(2, 3), axis=(0, 1))  # content moves +3 px in x, +2 px in y
    flow = FlowEstimator("medium")(crop, shifted)
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16].reshape(-1, 2)
    assert np.allclose(np.median(inner, axis=0), [3, 2], atol=0.3)
    assert flow_magnitude(flow) == pytest.approx(np.sqrt(13), abs=0.6)
    back = records.decode_flow(records.encode_flow(flow), 128)
    assert np.abs(back - flow).max() < 0.01


def test_landmark_pseudo_labels_match_aflw2000_ground_truth(shared):
    """The pre/post-processing matches the model's training: small 2D error on labelled faces."""
    import cv2
    from scipy.io import loadmat

    folder = shared / "media" / "aflw2000-3d"
    detector, model = FaceDetector(), LandmarkModel()
    errors = []
    for jpg in sorted(folder.glob("image*.jpg"))[:40:4]:
        rgb = cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB)
        gt = loadmat(str(jpg.with_suffix(".mat")))["pt3d_68"][:2].T  # (68, 2) image pixels
        dets = detector.detect(rgb)
        if not dets:
            continue
        pred = model.predict(rgb, dets[0].box)
        w, h = gt.max(0) - gt.min(0)
        errors.append(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(w * h))
    assert len(errors) >= 8
    assert np.median(errors) < 0.08, errors  # the shared README measured 5.2% on 16 samples
