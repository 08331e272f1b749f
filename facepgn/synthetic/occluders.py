"""Occluders drawn over a rendered face (hands, glasses, microphones); the landmarks they cover
are marked not visible."""

from __future__ import annotations

import cv2
import numpy as np

from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, project
from facepgn.synthetic.hair import head_frame
from facepgn.synthetic.scene import FaceParams, FaceRender


class _Layer:
    """Occluders drawn over the image: premultiplied colour and coverage (alpha), anti-aliased."""

    def __init__(self, size: int):
        self.alpha = np.zeros((size, size), np.float32)
        self.colour = np.zeros((size, size, 3), np.float32)  # premultiplied by alpha, [0, 255]

    def paint(self, shape: np.ndarray, colour: np.ndarray) -> None:
        """``shape`` (S, S) coverage in [0, 1]; ``colour`` (3,) or (S, S, 3) in [0, 255]."""
        a = np.clip(shape, 0, 1).astype(np.float32)
        col = np.broadcast_to(np.asarray(colour, np.float32), self.colour.shape)
        self.colour = col * a[..., None] + self.colour * (1 - a[..., None])
        self.alpha = a + self.alpha * (1 - a)

    def composite(self, image: np.ndarray) -> np.ndarray:
        out = self.colour + image.astype(np.float32) * (1 - self.alpha[..., None])
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


_SS = 4  # supersampling of occluder shapes


def _shape_canvas(size: int) -> np.ndarray:
    return np.zeros((size * _SS, size * _SS), np.uint8)


def _done(canvas: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * _SS + (_SS - 1) / 2)), int(round(float(p[1]) * _SS + (_SS - 1) / 2))


def _capsule(canvas: np.ndarray, a, b, width: float) -> None:
    cv2.line(canvas, _pt(a), _pt(b), 255, max(1, int(round(width * _SS))), cv2.LINE_AA)
    for p in (a, b):
        cv2.circle(canvas, _pt(p), max(1, int(round(width * _SS / 2))), 255, -1, cv2.LINE_AA)


def _rounded_shading(shape: np.ndarray, scale: float) -> np.ndarray:
    """0.7 at the edge of a shape rising to 1 inside it: a rounded look for flat-coloured blobs."""
    inner = cv2.distanceTransform((shape > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    return 0.7 + 0.3 * np.clip(inner / max(scale, 1e-6), 0, 1)


def _draw_hand(layer: _Layer, lm: np.ndarray, box: float, skin: np.ndarray, rng: np.random.Generator) -> None:
    """A hand (palm, four fingers, thumb) and forearm reaching in from below: over the chin, the
    mouth or a cheek."""
    size = layer.alpha.shape[0]
    anchor_kind = rng.integers(3)
    if anchor_kind == 0:
        anchor = lm[8] + np.array([0.0, 0.08]) * box  # chin resting on the hand
        angle = np.radians(rng.uniform(-110, -70))
    elif anchor_kind == 1:
        anchor = lm[62] + rng.normal(0, 0.04, 2) * box  # hand over the mouth
        angle = np.radians(rng.uniform(-120, -60))
    else:
        side = int(rng.integers(2))
        anchor = lm[[3, 13][side]] + np.array([[-0.02, 0.0], [0.02, 0.0]][side]) * box
        angle = np.radians(rng.uniform(-100, -60) if side == 0 else rng.uniform(-120, -80))
    hand = box * rng.uniform(0.85, 1.15)
    d = np.array([np.cos(angle), np.sin(angle)])  # from the wrist to the fingers (angle < 0: up)
    n = np.array([-d[1], d[0]])
    palm = anchor - d * 0.05 * hand
    canvas = _shape_canvas(size)
    cv2.ellipse(canvas, _pt(palm), (int(0.17 * hand * _SS), int(0.21 * hand * _SS)),
                float(np.degrees(angle)) + 90.0, 0, 360, 255, -1, cv2.LINE_AA)
    for k, (offset, length) in enumerate(zip((-0.11, -0.04, 0.035, 0.105), (0.17, 0.2, 0.19, 0.15))):
        base = palm + d * 0.15 * hand + n * offset * hand
        fan = np.radians(rng.normal(0, 6) + (k - 1.5) * 4)
        fd = np.array([np.cos(angle + fan), np.sin(angle + fan)])
        _capsule(canvas, base, base + fd * length * hand * rng.uniform(0.85, 1.1), 0.065 * hand)
    thumb_side = 1.0 if rng.random() < 0.5 else -1.0
    tbase = palm + n * thumb_side * 0.14 * hand
    tdir = np.array([np.cos(angle + thumb_side * 0.9), np.sin(angle + thumb_side * 0.9)])
    _capsule(canvas, tbase, tbase + tdir * 0.15 * hand, 0.07 * hand)
    _capsule(canvas, palm, palm - d * 2.0 * size, 0.27 * hand)  # forearm, out of the crop
    shape = _done(canvas, size)
    tone = np.clip(skin * rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3), 0, 1) * 255
    shading = _rounded_shading(shape, 0.06 * hand)[..., None]
    grain = 1.0 + rng.normal(0, 0.03, (size, size, 1)).astype(np.float32)
    layer.paint(shape, tone[None, None, :] * shading * grain)


def _draw_microphone(layer: _Layer, lm: np.ndarray, box: float, rng: np.random.Generator) -> None:
    """A hand-held or stand microphone: a bar from the bottom of the crop to a ball head below or
    beside the mouth."""
    size = layer.alpha.shape[0]
    head = lm[57] + np.array([rng.uniform(-0.15, 0.15), rng.uniform(0.08, 0.2)]) * box
    radius = rng.uniform(0.09, 0.13) * box
    angle = np.radians(rng.uniform(55, 125))  # the bar goes down (y grows)
    d = np.array([np.cos(angle), np.sin(angle)])
    canvas = _shape_canvas(size)
    _capsule(canvas, head, head + d * 2.0 * size, rng.uniform(0.06, 0.09) * box)
    bar = _done(canvas, size)
    grey = rng.uniform(15, 70)
    layer.paint(bar, np.full(3, grey) * _rounded_shading(bar, 0.02 * box)[..., None])
    canvas = _shape_canvas(size)
    cv2.circle(canvas, _pt(head), int(radius * _SS), 255, -1, cv2.LINE_AA)
    ball = _done(canvas, size)
    foam = rng.random() < 0.3
    base = rng.uniform(40, 220, 3) if foam else np.full(3, rng.uniform(20, 90))
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    mesh = 1.0 - 0.25 * ((np.sin(xs * 2.2) * np.sin(ys * 2.2)) > 0.3) * (not foam)
    layer.paint(ball, base[None, None, :] * (_rounded_shading(ball, 0.5 * radius) * mesh)[..., None])


def _draw_glasses(layer: _Layer, model: FaceModel, params: FaceParams, face: FaceRender, rng: np.random.Generator) -> None:
    """Glasses as a 3D wire frame in front of the eyes (lenses, bridge, temples to the ears),
    posed with the head and hidden where the face is in front of them; sometimes tinted lenses."""
    size = layer.alpha.shape[0]
    frame = head_frame(model)
    u = frame.unit
    X = model.landmarks(params.id_coeffs, params.exp_coeffs).astype(np.float64)
    if not model.landmark_mask[36:48].all():
        return
    eye_w = float(np.linalg.norm(X[39] - X[36]) + np.linalg.norm(X[45] - X[42])) / 2
    a = eye_w * rng.uniform(0.75, 0.95)
    b = a * rng.uniform(0.6, 0.85)
    power = rng.choice([2.0, 3.0, 4.0])
    t = np.linspace(0, 2 * np.pi, 33)
    ring = np.stack([np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / power) * a,
                     np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2 / power) * b], -1)
    z_front = max(X[36:48, 2].max(), X[27, 2]) + rng.uniform(0.6, 1.0) * u
    lenses = []
    for ids in (range(36, 42), range(42, 48)):
        centre = X[list(ids)].mean(0) + np.array([0.0, rng.normal(0, 0.1) * u, 0.0])
        lenses.append(np.stack([centre[0] + ring[:, 0], centre[1] + ring[:, 1] - 0.1 * u, np.full(len(t), z_front)], -1))
    inner_r = lenses[0][np.argmax(lenses[0][:, 0] * np.sign(X[42, 0] - X[39, 0]))]
    inner_l = lenses[1][np.argmin(lenses[1][:, 0] * np.sign(X[42, 0] - X[39, 0]))]
    bridge = np.stack([inner_r, (inner_r + inner_l) / 2 + np.array([0, 0.2 * u, 0.1 * u]), inner_l])
    polylines = [lenses[0], lenses[1], bridge]
    for lens in lenses:
        outer = lens[np.argmax(np.abs(lens[:, 0] - (X[39, 0] + X[42, 0]) / 2))]
        ear = frame.point([np.sign(outer[0] - frame.ref[0]) * 8.9, 0.0, 0.5])
        ear[1] = outer[1]
        polylines.append(np.linspace(outer, ear, 12))
    R = euler_to_matrix(np.asarray(params.pose, np.float64))
    tol = 0.3 * u * float(params.scale)
    depth = face.rendering.raster.depth
    thick = max(1.0, float(np.ptp(face.landmarks_3d[:, 0]) * rng.uniform(0.012, 0.03)))
    canvas = _shape_canvas(size)
    for line in polylines:
        p = project(line, float(params.scale), R, np.asarray(params.translation, np.float64))
        xi = np.clip(np.round(p[:, 0]).astype(int), 0, size - 1)
        yi = np.clip(np.round(p[:, 1]).astype(int), 0, size - 1)
        seen = p[:, 2] >= depth[yi, xi] - tol  # -inf depth (no face there) is always behind
        for k in range(len(p) - 1):
            if seen[k] and seen[k + 1]:
                cv2.line(canvas, _pt(p[k]), _pt(p[k + 1]), 255, max(1, int(round(thick * _SS))), cv2.LINE_AA)
    shape = _done(canvas, size)
    palette = np.array([[20, 20, 22], [60, 35, 20], [110, 70, 35], [170, 150, 110], [190, 190, 195]], np.float32)
    layer.paint(shape, palette[rng.integers(len(palette))] * rng.uniform(0.8, 1.1))
    if rng.random() < 0.25:  # sunglasses: dark lenses where the lens is in front of the face
        for lens in lenses:
            p = project(lens, float(params.scale), R, np.asarray(params.translation, np.float64))
            c = p.mean(0)
            ci, cj = int(np.clip(round(c[1]), 0, size - 1)), int(np.clip(round(c[0]), 0, size - 1))
            if c[2] < depth[ci, cj] - tol:
                continue
            canvas = _shape_canvas(size)
            cv2.fillPoly(canvas, [np.array([_pt(q) for q in p], np.int32)], 255, cv2.LINE_AA)
            layer.paint(_done(canvas, size) * rng.uniform(0.8, 0.95), np.full(3, rng.uniform(5, 40)))


def add_occluders(face: FaceRender, model: FaceModel, rng: np.random.Generator, colours: dict[str, np.ndarray],
                  hand_prob: float = 0.15, glasses_prob: float = 0.2, microphone_prob: float = 0.06) -> np.ndarray:
    """Draw glasses, a hand and/or a microphone over ``face.image`` (each with its probability, each
    from its own stream of ``rng``) and mark the landmarks they cover as not visible. Returns the
    occluder coverage (S, S) in [0, 1] (the landmarks at pixels covered above one half are hidden)."""
    size = face.image.shape[0]
    layer = _Layer(size)
    lm = np.nan_to_num(face.landmarks_3d[:, :2])
    box = float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]), 1.0))
    draws = rng.random(3)
    streams = [np.random.default_rng(rng.integers(2**63)) for _ in range(3)]
    if draws[0] < glasses_prob:
        _draw_glasses(layer, model, face.params, face, streams[0])
    if draws[1] < hand_prob:
        _draw_hand(layer, lm, box, colours["skin"], streams[1])
    if draws[2] < microphone_prob:
        _draw_microphone(layer, lm, box, streams[2])
    if layer.alpha.max() > 0:
        face.image = layer.composite(face.image)
        xi = np.round(lm[:, 0]).astype(int)
        yi = np.round(lm[:, 1]).astype(int)
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        covered = np.zeros(len(lm), bool)
        covered[inside] = layer.alpha[yi[inside], xi[inside]] > 0.5
        face.landmarks_visible = face.landmarks_visible & ~covered
    return layer.alpha

