"""The Parquet record schemas and their encode/decode helpers."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn import records
from facepgn.errors import FacepgnError


def test_image_and_flow_roundtrip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(records.decode_image(records.encode_image(img, ".png")), img)
    jpg = records.decode_image(records.encode_image(img))
    assert jpg.shape == img.shape
    flow = rng.normal(size=(16, 16, 2)).astype(np.float32)
    back = records.decode_flow(records.encode_flow(flow), 16)
    np.testing.assert_allclose(back, flow, atol=2e-3)
    with pytest.raises(ValueError):
        records.decode_flow(records.encode_flow(flow), 8)


def test_affine_crop_transform_maps_back():
    m = records.crop_transform(10.0, 20.0, 64.0, 128)
    pts = np.array([[0.0, 0.0], [128.0, 64.0]])
    np.testing.assert_allclose(records.apply_affine(m, pts), [[10, 20], [74, 52]])
    inv = records.invert_affine(m)
    np.testing.assert_allclose(records.apply_affine(inv, records.apply_affine(m, pts)), pts, atol=1e-4)
    # z is scaled with x/y
    np.testing.assert_allclose(records.apply_affine(m, np.array([[0.0, 0.0, 2.0]]))[0, 2], 1.0)


def test_face_record_table_and_version_check():
    row = {
        "record_id": "r0",
        "source": "synthetic",
        "subject_id": "s0",
        "image": records.encode_image(np.zeros((8, 8, 3), np.uint8)),
        "image_size": 8,
        "landmarks_2d": np.zeros((68, 2)),
        "crop_to_frame": records.crop_transform(0, 0, 8, 8),
        "source_path": "x",
    }
    table = records.to_table([row], "face_record")
    assert table.schema.equals(records.FACE_RECORD_SCHEMA, check_metadata=False)
    assert table.column("schema_version").to_pylist() == [records.FACE_RECORD_VERSION]
    assert table.column("landmarks_3d").to_pylist() == [None]
    records.check_table(table, "face_record")
    with pytest.raises(FacepgnError, match="not a frame_pair table"):
        records.check_table(table, "frame_pair", "x.parquet")
    future = table.set_column(0, "schema_version", __import__("pyarrow").array([99], "int32"))
    with pytest.raises(FacepgnError, match="version"):
        records.check_table(future, "face_record")
    with pytest.raises(ValueError, match="unknown fields"):
        records.to_table([{**row, "bogus": 1}], "face_record")
