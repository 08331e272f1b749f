"""Real background patches (facepgn.backgrounds): no faces in them, deterministic, cached."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn import backgrounds
from facepgn.errors import InputError
from facepgn.faces import FaceDetector


@pytest.fixture(scope="module")
def sources(shared) -> list[str]:
    """Two portraits (faces fill much of them) and a talking-head video."""
    wild = shared / "media" / "faces-wild" / "deepface"
    return [str(wild / "img1.jpg"), str(wild / "couple.jpg"), str(shared / "media" / "corpus2" / "lipnet" / "bbaf2n.mpg")]


def test_background_bank_contains_no_detected_face(sources):
    bank = backgrounds.build_background_bank(sources, 64, 16, seed=0)
    assert bank.shape == (16, 64, 64, 3) and bank.dtype == np.uint8
    assert len({p.tobytes() for p in bank}) >= 12 and min(float(p.std()) for p in bank) > 5  # real, varied content
    detector = FaceDetector(score_threshold=0.5, detect_width=0)
    for patch in bank:  # YuNet at the bank's size and magnified 2x and 3x
        assert not any(backgrounds.has_face(detector, patch, side) for side in (64, 128, 192))
    # Cut anywhere, the same sources give patches with faces: the exclusion is what keeps them out.
    anywhere = backgrounds.build_background_bank(sources, 64, 16, seed=0, avoid_faces=False)
    assert sum(backgrounds.has_face(detector, p, 128) for p in anywhere) >= 4
    np.testing.assert_array_equal(backgrounds.build_background_bank(sources, 64, 16, seed=0), bank)  # by seed


def test_bank_is_built_once_and_cached(sources, tmp_path):
    bank = backgrounds.load_background_bank(sources[:1], 48, 6, seed=1, cache_dir=tmp_path)
    files = list((tmp_path / "backgrounds").glob("bank-*.npz"))
    assert len(files) == 1 and bank.shape == (6, 48, 48, 3)
    with np.load(files[0]) as npz:
        np.testing.assert_array_equal(npz["patches"], bank)
        assert set(npz["sources"]) == {sources[0]}
    backgrounds._MEMO.clear()
    np.testing.assert_array_equal(backgrounds.load_background_bank(sources[:1], 48, 6, seed=1, cache_dir=tmp_path), bank)
    # A bank .npz can be given directly (resized to the size asked for).
    assert backgrounds.load_background_bank([str(files[0])], 32).shape == (6, 32, 32, 3)
    rng = np.random.default_rng(0)
    one = backgrounds.random_background(bank, rng, 40)
    assert one.shape == (40, 40, 3) and one.dtype == np.uint8


def test_bad_background_sources_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match=r"no images or videos found"):
        backgrounds.build_background_bank([str(tmp_path)], 32, 2)
    bad = tmp_path / "bank.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match=r"bank.npz: not a background bank"):
        backgrounds.load_background_bank([str(bad)], 32)


def test_an_unreadable_file_among_good_ones_is_skipped(sources, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bank = backgrounds.build_background_bank([sources[0], str(broken)], 32, 4, seed=0)
    assert bank.shape == (4, 32, 32, 3)
    with pytest.raises(InputError, match=r"broken.jpg: image cannot be decoded"):
        backgrounds.build_background_bank([str(broken)], 32, 2)
