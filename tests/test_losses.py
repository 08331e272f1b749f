"""Every loss term is ~0 at the ground truth and grows away from it; the pair terms hold on a
synthetic pair rendered with known motion and its exact flow (facepgn.synthetic.render_pair)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepgn import geometry, losses
from facepgn.config import LossWeights, ModelConfig
from facepgn.facemodel import load_face_model
from facepgn.model import build_model

SIZE = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small nets (conftest.one_torch_thread)


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(input_size=SIZE), load_face_model())


@pytest.fixture(scope="module")
def pairs():
    from facepgn.synthetic import render_pair

    return [render_pair(seed, size=SIZE) for seed in (3, 4)]


def _truth(face) -> dict[str, torch.Tensor]:
    p = face.params
    return {
        "id_coeffs": torch.tensor(p.id_coeffs, dtype=torch.float32)[None],
        "exp_coeffs": torch.tensor(p.exp_coeffs, dtype=torch.float32)[None],
        "scale": torch.tensor([p.scale], dtype=torch.float32),
        "rotation": geometry.euler_to_matrix(torch.tensor(p.pose, dtype=torch.float32)[None]),
        "translation": torch.tensor(p.translation, dtype=torch.float32)[None],
    }


def _turned(out: dict[str, torch.Tensor], yaw: float) -> dict[str, torch.Tensor]:
    moved = dict(out)
    moved["rotation"] = out["rotation"] @ geometry.euler_to_matrix(torch.tensor([[0.0, yaw, 0.0]]))
    return moved


def _grows(fn, magnitudes=(0.0, 0.5, 2.0, 8.0)) -> list[float]:
    values = [float(fn(m)) for m in magnitudes]
    assert values[0] < 1e-6, values
    assert all(b > a for a, b in zip(values, values[1:])), values
    return values


def test_point_terms_are_zero_at_the_truth_and_grow():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 68, 3, generator=gen) * SIZE
    noise = torch.randn(2, 68, 3, generator=gen)
    mask = torch.ones(2, 68)
    _grows(lambda m: losses.landmarks_3d_loss(target + m * noise, target, mask, SIZE))
    _grows(lambda m: losses.mesh_landmarks_loss(target + m * noise, target, mask, SIZE))
    _grows(lambda m: losses.landmarks_2d_loss(target + m * noise, target[..., :2], mask, SIZE))
    # masked-out points do not count
    masked = mask.clone()
    masked[:, :10] = 0
    far = target.clone()
    far[:, :10] += 50
    assert float(losses.landmarks_3d_loss(far, target, masked, SIZE)) < 1e-6
    # the loss reads as a fraction of the crop: 1 px everywhere on x -> 1/SIZE
    shifted = target + torch.tensor([1.0, 0, 0])
    assert abs(float(losses.landmarks_3d_loss(shifted, target, mask, SIZE)) - 1 / SIZE) < 1e-4


def test_shape_prior_and_identity_terms(model):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randn(3, 40, generator=gen)
    exps = torch.rand(3, 20, generator=gen)
    target = model.model_vertices(ids, exps)
    rows = torch.ones(3)
    _grows(lambda m: losses.shape_loss(model.model_vertices(ids + m * 0.3, exps), target, rows, model.face_size))
    _grows(lambda m: losses.coeff_prior_loss(torch.full((3, 40), m), torch.full((3, 20), min(m / 8, 1.0))))
    _grows(lambda m: losses.identity_consistency_loss(ids, ids + m))
    # rows without coefficients do not count
    assert float(losses.shape_loss(model.model_vertices(ids + 1, exps), target, torch.zeros(3), model.face_size)) == 0.0


def test_flow_photometric_and_landmark_flow_terms_on_an_exact_flow_pair(model, pairs):
    ids = losses.pair_vertex_subset(model.num_vertices, 2048)
    for pair in pairs:
        out_a, out_b = _truth(pair.face_a), _truth(pair.face_b)
        flow = torch.tensor(pair.flow).permute(2, 0, 1)[None]
        img_a = torch.tensor(pair.image_a).permute(2, 0, 1)[None].float() / 255
        img_b = torch.tensor(pair.image_b).permute(2, 0, 1)[None].float() / 255
        va, vb = model.mesh_vertices(out_a, ids), model.mesh_vertices(out_b, ids)
        mask = model.vertex_visibility(out_a, ids) * model.vertex_visibility(out_b, ids)
        mask = mask * losses.inside_crop(va, SIZE) * losses.inside_crop(vb, SIZE)
        assert mask.mean() > 0.3

        def flow_at(yaw):
            return losses.flow_consistency_loss(va, model.mesh_vertices(_turned(out_b, yaw), ids), flow, mask)

        def photo_at(yaw):
            return losses.photometric_loss(img_a, img_b, va, model.mesh_vertices(_turned(out_b, yaw), ids), mask)

        at_truth = float(flow_at(0.0)) * SIZE  # in pixels
        assert at_truth < 0.15, at_truth  # median error is ~0.003 px; a few occlusion-edge vertices remain
        off = [float(flow_at(y)) * SIZE for y in (0.02, 0.05, 0.1)]
        assert off[0] > 3 * at_truth and off[0] < off[1] < off[2], (at_truth, off)
        photo = [float(photo_at(y)) for y in (0.0, 0.05, 0.1)]
        assert photo[0] < photo[1] < photo[2] and photo[0] < 0.6 * photo[2], photo

        lm_a = torch.tensor(np.nan_to_num(pair.face_a.landmarks_3d), dtype=torch.float32)[None]
        lm_b = torch.tensor(np.nan_to_num(pair.face_b.landmarks_3d), dtype=torch.float32)[None]
        lm_mask = torch.tensor(pair.face_a.landmarks_visible & pair.face_b.landmarks_visible, dtype=torch.float32)[None]
        lmf = [float(losses.landmark_flow_loss(lm_a, lm_b + d, flow, lm_mask)) * SIZE for d in (0.0, 1.0, 3.0)]
        assert lmf[0] < 0.15 and lmf[0] < lmf[1] < lmf[2], lmf


def test_weighted_total_uses_the_config_weights():
    terms = {"landmarks_3d": torch.tensor(2.0), "flow": torch.tensor(3.0), "pair_landmarks_2d": torch.tensor(1.0)}
    weights = LossWeights(landmarks_3d=0.5, flow=0.0, landmarks_2d=2.0).model_dump()
    assert float(losses.weighted_total(terms, weights)) == pytest.approx(0.5 * 2 + 2.0 * 1.0)
    with pytest.raises(ValueError):
        losses.weighted_total({"flow": torch.tensor(1.0)}, {"flow": 0.0})


def test_step_terms_are_zero_when_the_model_outputs_the_truth(model, pairs):
    """The batch-level functions (as the train step calls them) give ~0 on ground-truth outputs."""
    face = pairs[0].face_a
    out = _truth(face)
    lm = torch.tensor(np.nan_to_num(face.landmarks_3d), dtype=torch.float32)[None]
    model_lm = model.model_landmarks(out["id_coeffs"], out["exp_coeffs"])
    out.update(
        landmarks_3d=lm,
        mesh_landmarks=geometry.project(model_lm, out["scale"], out["rotation"], out["translation"]),
        landmark_mask=model.fm_landmark_mask[None],
    )
    batch = {
        "landmarks_3d": lm,
        "has_3d": torch.ones(1),
        "landmarks_2d": lm[..., :2],
        "landmarks_visible": torch.ones(1, 68),
        "id_coeffs": out["id_coeffs"],
        "exp_coeffs": out["exp_coeffs"],
        "has_coeffs": torch.ones(1),
    }
    weights = LossWeights().model_dump()
    terms = losses.labelled_terms(model, out, batch, weights)
    assert set(terms) >= {"landmarks_3d", "mesh_landmarks", "shape", "coeff_prior"}
    for name in ("landmarks_3d", "mesh_landmarks", "shape"):
        assert float(terms[name]) < 1e-4, (name, float(terms[name]))
