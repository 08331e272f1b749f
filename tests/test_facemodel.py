"""FaceModel: evaluation (numpy and batched torch), truncation, canonical file round trip, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from facepgn.errors import InputError
from facepgn.facemodel import FORMAT_VERSION, FaceModel, load_face_model, read_face_model_npz


@pytest.fixture(scope="module")
def ict(shared):
    return load_face_model(shared / "facemodels" / "ict" / "ict_face_area.npz")


def test_shared_ict_npz_loads_with_expected_sizes(ict):
    assert ict.num_vertices == 9409 and ict.num_id == 100 and ict.num_exp == 53
    assert ict.triangles.shape == (18460, 3) and ict.triangles.dtype == np.int32
    assert ict.landmark_mask.all() and ict.units == "cm"
    assert ict.exp_names[0] == "browDown_L" and "jawOpen" in ict.exp_names
    assert ict.jaw_right_ids.tolist()[:3] == [1278, 1272, 12]
    assert not ict.mean.flags.writeable  # shared between users of the cache
    assert load_face_model() is load_face_model()  # default path resolves and is cached


def test_vertices_numpy_matches_formula(ict):
    rng = np.random.default_rng(0)
    ic = rng.normal(size=100).astype(np.float32)
    ec = rng.uniform(size=53).astype(np.float32)
    v = ict.vertices(ic, ec)
    expected = ict.mean + np.tensordot(ic, ict.id_basis, 1) + np.tensordot(ec, ict.exp_basis, 1)
    np.testing.assert_allclose(v, expected, atol=1e-4)
    np.testing.assert_array_equal(ict.vertices(), ict.mean)
    np.testing.assert_allclose(ict.landmarks(ic, ec), v[ict.landmark_ids], atol=1e-5)


def test_torch_batched_matches_numpy_and_backprops(ict):
    rng = np.random.default_rng(1)
    ic = rng.normal(size=(2, 3, 100)).astype(np.float32)
    ec = rng.uniform(size=(2, 3, 53)).astype(np.float32)
    ic_t = torch.tensor(ic, requires_grad=True)
    v = ict.vertices(ic_t, torch.tensor(ec))
    assert v.shape == (2, 3, 9409, 3)
    np.testing.assert_allclose(v.detach().numpy(), ict.vertices(ic, ec), atol=1e-4)
    lm = ict.landmarks(ic_t, torch.tensor(ec))
    assert lm.shape == (2, 3, 68, 3)
    np.testing.assert_allclose(lm.detach().numpy(), v.detach().numpy()[..., ict.landmark_ids, :], atol=1e-5)
    lm.sum().backward()
    assert ic_t.grad is not None and torch.isfinite(ic_t.grad).all()
    # float64 and identity-only calls work; caches are per dtype
    lm64 = ict.landmarks(torch.tensor(ic[0, 0], dtype=torch.float64))
    assert lm64.dtype == torch.float64 and lm64.shape == (68, 3)
    with pytest.raises(ValueError, match="identity coefficients"):
        ict.vertices(torch.zeros(5, 40))


def test_truncated(ict):
    small = ict.truncated(40, 20)
    assert small.num_id == 40 and small.num_exp == 20 and len(small.exp_names) == 20
    np.testing.assert_array_equal(small.id_basis, ict.id_basis[:40])
    assert "jawOpen" in small.exp_names  # blendshapes chosen by landmark motion
    order = [ict.exp_names.index(n) for n in small.exp_names]
    assert order == sorted(order)
    picked = ict.truncated(10, exp_names=["eyeBlink_L", "jawOpen"])
    np.testing.assert_array_equal(picked.exp_basis[1], ict.exp_basis[ict.exp_names.index("jawOpen")])
    with pytest.raises(ValueError):
        ict.truncated(101, 5)


def test_jaw_substitutes(ict):
    sub = ict.using_jaw_substitutes()
    np.testing.assert_array_equal(sub.landmark_ids[0:8], ict.jaw_right_ids)
    np.testing.assert_array_equal(sub.landmark_ids[9:17], ict.jaw_left_ids)
    np.testing.assert_array_equal(sub.landmark_ids[17:], ict.landmark_ids[17:])
    assert sub.landmark_ids[8] == ict.landmark_ids[8]  # the chin stays
    np.testing.assert_array_equal(sub.landmarks()[:8], ict.mean[ict.jaw_right_ids])


def test_save_load_round_trip(ict, tmp_path):
    small = ict.truncated(5, 3)
    path = tmp_path / "m.npz"
    small.save(path)
    with np.load(path) as npz:
        assert int(npz["facepgn_format"]) == FORMAT_VERSION
        assert str(npz["units"]) == "cm"
    back = load_face_model(path)
    for attr in ("mean", "id_basis", "exp_basis", "triangles", "landmark_ids", "jaw_right_ids", "jaw_left_ids"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(small, attr))
    assert back.exp_names == small.exp_names and back.name == small.name and back.exp_kind == small.exp_kind
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp files left
    # pickles (Ray ships models to workers) without its torch cache
    small.landmarks(torch.zeros(5))
    again = pickle.loads(pickle.dumps(small))
    np.testing.assert_array_equal(again.landmarks(np.zeros(5)), small.landmarks(np.zeros(5)))


def test_partial_landmarks_are_zero_and_masked():
    rng = np.random.default_rng(2)
    ids = np.arange(68, dtype=np.int32)
    ids[:17] = -1
    m = FaceModel(mean=rng.normal(size=(100, 3)), id_basis=rng.normal(size=(2, 100, 3)),
                  exp_basis=rng.normal(size=(1, 100, 3)), exp_names=["smile"],
                  triangles=np.array([[0, 1, 2]]), landmark_ids=ids, units="mm", name="toy")
    lm = m.landmarks(np.ones(2), np.ones(1))
    assert (lm[:17] == 0).all()
    np.testing.assert_allclose(lm[17:], m.vertices(np.ones(2), np.ones(1))[17:68], atol=1e-5)
    assert m.landmark_mask.sum() == 51
    lm_t = m.landmarks(torch.ones(4, 2))
    assert (lm_t[:, :17] == 0).all()


def test_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="missing.npz: face model file not found"):
        load_face_model(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(InputError) as err:
        read_face_model_npz(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(InputError, match="not a face model"):
        load_face_model(other)
    newer = tmp_path / "newer.npz"
    np.savez(newer, facepgn_format=np.array(99))
    with pytest.raises(InputError, match="version 99"):
        load_face_model(newer)
    broken = tmp_path / "broken.npz"
    np.savez(broken, facepgn_format=np.array(1), mean=np.zeros((4, 3)), id_basis=np.zeros((1, 4, 3)),
             exp_basis=np.zeros((0, 4, 3)), exp_names=np.array([], dtype=str), triangles=np.array([[0, 1, 9]]),
             landmark_ids=np.zeros(68, dtype=np.int32))
    with pytest.raises(InputError, match="inconsistent"):
        load_face_model(broken)


def test_env_var_selects_model(ict, tmp_path, monkeypatch):
    path = tmp_path / "env.npz"
    ict.truncated(3, 2).save(path)
    monkeypatch.setenv("FACEPGN_FACE_MODEL", str(path))
    assert load_face_model().num_id == 3


# ---------------------------------------------------------------------------------------------
# Other layouts
# ---------------------------------------------------------------------------------------------


def test_ict_upstream_converter_reproduces_shared_npz(shared, tmp_path):
    from facepgn.facemodel import convert_ict_upstream

    sample = shared / "facemodels" / "ict" / "upstream-sample"
    model = convert_ict_upstream(sample, allow_missing=True)
    with np.load(shared / "facemodels" / "ict" / "ict_face_area.npz") as npz:
        ref = {k: npz[k] for k in npz.files}
    names = list(ref["exp_names"])
    assert model.exp_names == ["eyeBlink_L", "jawOpen"]  # vertex_indices.json order
    np.testing.assert_array_equal(model.mean, ref["mean"])
    np.testing.assert_array_equal(model.id_basis, ref["id_basis"][:2])
    for k, name in enumerate(model.exp_names):
        np.testing.assert_array_equal(model.exp_basis[k], ref["exp_basis"][names.index(name)])
    np.testing.assert_array_equal(model.triangles, ref["triangles"])
    np.testing.assert_array_equal(model.landmark_ids, ref["lm68"])
    # canonical file round trip
    model.save(tmp_path / "ict.npz")
    back = load_face_model(tmp_path / "ict.npz")
    np.testing.assert_array_equal(back.exp_basis, model.exp_basis)
    # a strict conversion of an incomplete folder names the first missing file
    with pytest.raises(InputError, match="identity002.obj: file not found"):
        convert_ict_upstream(sample)


def test_obj_reader_errors(tmp_path):
    from facepgn.meshio import read_obj

    bad = tmp_path / "bad.obj"
    bad.write_text("v 1 2\nv 3 4 5\n")
    with pytest.raises(InputError, match="bad.obj: not a valid .obj"):
        read_obj(bad)
    good = tmp_path / "tri.obj"
    good.write_text("# c\nv 0 0 0\nv 1 0 0\nvt 0 0\nv 0 1 0\nv 1 1 0\nf 1/1 2/1 4/1 3/1\nf 1 2 3\n")
    verts, polys = read_obj(good)
    assert verts.shape == (4, 3) and polys == [[0, 1, 3, 2], [0, 1, 2]]


def test_surrey_face_model(shared):
    from facepgn.facemodel import load_sfm, open_face_model

    folder = shared / "facemodels" / "sfm"
    sfm = open_face_model(folder)
    assert (sfm.num_vertices, sfm.num_id, sfm.num_exp) == (3448, 63, 6)
    assert sfm.triangles.shape == (6736, 3) and sfm.units == "mm"
    assert sfm.landmark_mask.sum() == 50
    assert not sfm.landmark_mask[:8].any() and sfm.landmark_mask[8] and not sfm.landmark_mask[60]
    assert sfm.landmark_ids[30] == 114 and sfm.exp_names[3] == "happiness"  # iBUG 31 = nose tip
    # same frame as ICT: +y up (chin below nose), +z towards the viewer (nose tip in front)
    assert sfm.mean[114, 2] > np.percentile(sfm.mean[:, 2], 99)
    assert sfm.mean[33, 1] < sfm.mean[114, 1]
    # identity modes are orthogonal, scaled by sqrt(eigenvalue): Gram matrix diagonal, decreasing
    flat = sfm.id_basis.reshape(63, -1).astype(np.float64)
    gram = flat @ flat.T
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-3 * gram.max()
    assert np.all(np.diff(np.diag(gram)) <= 1e-6 * gram.max())
    direct = load_sfm(folder / "sfm_shape_3448.bin")
    np.testing.assert_array_equal(direct.exp_basis, sfm.exp_basis)


def test_surrey_truncated_file(shared, tmp_path):
    from facepgn.facemodel import load_sfm

    data = (shared / "facemodels" / "sfm" / "sfm_shape_3448.bin").read_bytes()
    cut = tmp_path / "sfm_shape_3448.bin"
    cut.write_bytes(data[:5000])
    with pytest.raises(InputError, match="truncated cereal binary"):
        load_sfm(cut)


def _write_bfm(tmp_path, with_kpt=True):
    import scipy.io

    rng = np.random.default_rng(5)
    v, k, e = 80, 5, 3
    mu = rng.normal(size=(3 * v, 1)) * 5e4
    pc, _ = np.linalg.qr(rng.normal(size=(3 * v, k)))
    ev = np.sort(rng.uniform(1e4, 1e5, size=(k, 1)))[::-1]
    tl = rng.integers(1, v + 1, size=(100, 3))
    shape = {"shapeMU": mu, "shapePC": pc, "shapeEV": ev, "tl": tl.astype(np.float64)}
    if with_kpt:
        shape["kpt_ind"] = np.arange(1, 69, dtype=np.float64)[None]
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", shape)
    exp = {"mu_exp": rng.normal(size=(3 * v, 1)), "w_exp": rng.normal(size=(3 * v, e)),
           "sigma_exp": np.array([[2.0], [1.0], [0.5]])}
    scipy.io.savemat(tmp_path / "Model_Expression.mat", exp)
    return shape, exp


def test_bfm2009_layout(tmp_path):
    from facepgn.facemodel import load_bfm, open_face_model

    shape, exp = _write_bfm(tmp_path)
    bfm = load_bfm(tmp_path / "01_MorphableModel.mat", tmp_path / "Model_Expression.mat")
    v = 80
    assert (bfm.num_vertices, bfm.num_id, bfm.num_exp) == (v, 5, 3)
    assert bfm.units == "um" and bfm.exp_kind == "pca"
    # MATLAB's column vectors are x1 y1 z1 x2 ...: vertex 7's coordinates are entries 21..23
    np.testing.assert_allclose(bfm.mean[7], (shape["shapeMU"][21:24, 0] + exp["mu_exp"][21:24, 0]), rtol=1e-6)
    np.testing.assert_allclose(bfm.id_basis[2, 7], shape["shapePC"][21:24, 2] * shape["shapeEV"][2, 0], rtol=1e-5)
    np.testing.assert_allclose(bfm.exp_basis[2, 7], exp["w_exp"][21:24, 2] * 0.5, rtol=1e-5)
    np.testing.assert_array_equal(bfm.triangles, shape["tl"].astype(int) - 1)
    np.testing.assert_array_equal(bfm.landmark_ids, np.arange(68))
    assert open_face_model(tmp_path / "01_MorphableModel.mat").num_exp == 0
    assert bfm.truncated(2, 1).exp_names == ["exp00"]  # PCA: the first components


def test_bfm_errors(tmp_path):
    import scipy.io

    from facepgn.facemodel import load_bfm, open_face_model

    scipy.io.savemat(tmp_path / "x.mat", {"foo": np.zeros(3)})
    with pytest.raises(InputError, match="x.mat: not a BFM 2009 model file"):
        load_bfm(tmp_path / "x.mat")
    with pytest.raises(InputError, match="unknown face model format"):
        open_face_model(_touch(tmp_path / "m.ply"))


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_the_face_model_does_not_import_the_dataset_reader():
    import subprocess
    import sys

    code = "import sys, facepgn.facemodel; print('facepgn.labelled' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
