"""Synthetic labelled faces, videos and frame pairs rendered from the face model.

Why: exact ground truth (3D landmarks, pose, coefficients, visibility, dense flow) for tests,
benchmarks and as labelled training data. Faces are the face model's mesh with its eye and mouth
holes closed, per-vertex skin albedo (a random skin tone, low-frequency blotches, darker lips, brows,
lash lines and nostrils, optional hair at the top), Lambertian shading and a random textured
background, rendered by :mod:`facepgn.render`.

Labelled faces (:func:`synthesize_face`) are made to look less like renders, since a network that
only saw clean renders fails on real faces: the rest of the head around the face mask (a skull-shaped
cap with hair or bald skin, long hair, a fringe, locks over the cheeks: :func:`hair_mesh`, z-buffered
with the face), occluders drawn over it (hands, glasses, microphones: :func:`add_occluders`), real
background patches cut from photos and videos away from their faces (:mod:`facepgn.backgrounds`,
with ``SyntheticFacesConfig.backgrounds``), and camera effects (:func:`camera_effects`). Landmarks that hair
or an occluder covers are marked not visible. The faces fill the crop like the evaluation's crops
(``config.SyntheticFacesConfig.face_fill``). Videos and frame pairs keep the plain look.

Everything is deterministic by seed: face ``i`` of a dataset with seed ``s`` comes from
``np.random.default_rng([s, i])`` whatever the sharding or number of worker processes.

Geometry follows :mod:`facepgn.geometry` (``p = s * F @ R @ X + t``); records follow
:mod:`facepgn.records` (crop pixels, 3D landmark z centred).

Outputs:

* :func:`write_face_chunk` / :func:`write_video`: one chunk of faces (one shard) or one clip, plain
  values in, files out: what ``facepgn synth faces|videos`` runs per Ray task or in a local loop
  (:mod:`facepgn.pipelines.synth`), and :func:`generate_faces` / :func:`generate_videos` in one process.
* :func:`generate_faces`: ``part-NNNNN.parquet`` shards in ``FACE_RECORD_SCHEMA`` (face model truncated
  with ``FaceModel.truncated(num_id, num_exp)``, so ``id_coeffs``/``exp_coeffs`` have those lengths);
  ``facepgn synth faces`` writes them to ``<output>/data/`` (:func:`data_dir`), summary.json and
  contact_sheet.png beside it.
* :func:`generate_videos`: ``synthetic-NNNN.mp4`` (mp4v) and ``synthetic-NNNN.gt.npz`` with, per frame
  (T first): ``pose`` (pitch, yaw, roll rad), ``scale``, ``translation``, ``exp_coeffs``,
  ``landmarks_2d``/``landmarks_3d`` (frame px, z centred), ``landmarks_visible``, ``face_box`` (x, y, w, h
  of the rendered mesh), ``frame_index``, ``time``; and once: ``id_coeffs``, ``fps``, ``size``,
  ``face_model``, ``exp_names``, ``seed``, ``index``.
* :func:`render_pair` / :func:`synthetic_pair_rows`: two frames with known motion, the exact flow A -> B
  and its validity (for losses tests and flow benchmarks), and ``FRAME_PAIR_SCHEMA`` rows.
"""

from facepgn.config import SyntheticFacesConfig, SyntheticVideosConfig
from facepgn.synthetic.camera import camera_effects
from facepgn.synthetic.faces import (
    DATA_DIR,
    background_bank,
    contact_sheet_from_records,
    data_dir,
    face_chunk_stats,
    face_model_for,
    face_record,
    generate_faces,
    synthesize_face,
    write_face_chunk,
)
from facepgn.synthetic.hair import HeadFrame, hair_mesh, head_frame
from facepgn.synthetic.occluders import add_occluders
from facepgn.synthetic.pairs import FramePair, _five_points, _mask_box, exact_flow, render_pair, synthetic_pair_rows
from facepgn.synthetic.scene import (
                                     FaceParams,
                                     FaceRender,
                                     model_vertices,
                                     place_face,
                                     random_background,
                                     render_face,
                                     sample_expression,
                                     sample_identity,
                                     sample_pose,
                                     shade_albedo,
)
from facepgn.synthetic.skin import FaceSkin, _boundary_loops, face_skin, random_albedo
from facepgn.synthetic.threads import single_threaded
from facepgn.synthetic.videos import clip_name, generate_videos, smooth_signal, synthesize_video, write_mp4, write_video

#: the generators' settings are the job configs themselves (one definition); the old names stay
FaceSettings = SyntheticFacesConfig
VideoSettings = SyntheticVideosConfig

__all__ = [
    "DATA_DIR", "FaceParams", "FaceRender", "FaceSettings", "FaceSkin", "FramePair", "HeadFrame", "SyntheticFacesConfig",
    "SyntheticVideosConfig", "VideoSettings", "add_occluders", "camera_effects", "contact_sheet_from_records", "data_dir",
    "exact_flow", "face_model_for", "face_record", "face_skin", "generate_faces", "generate_videos", "hair_mesh",
    "head_frame", "model_vertices", "place_face", "random_albedo", "random_background", "render_face", "render_pair",
    "sample_expression", "sample_identity", "sample_pose", "shade_albedo", "single_threaded", "smooth_signal",
    "synthesize_face", "synthesize_video", "synthetic_pair_rows", "write_mp4", "write_face_chunk", "face_chunk_stats",
    "write_video", "clip_name", "background_bank",
    "_boundary_loops", "_five_points", "_mask_box",  # used by facepgn.profiling
]
