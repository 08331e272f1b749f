"""Face profiling: new large-pose views of a fitted real face, with exact 3D landmarks.

Why: the model never sees real faces turning, so it fails on real faces at large yaw. 300W-LP was
made from 300W this way (Zhu et al., "Face Alignment Across Large Poses: A 3D Solution", CVPR 2016,
"Face Profiling"): take a near-frontal face with a fitted 3DMM, texture the fitted mesh from the
photo, rotate it to new poses and re-render; the landmarks of every view are exact by construction.

How (per face record, plain numpy/cv2/torch, no Ray):

* **Head proxy.** The face model's mesh (eye and mouth holes closed by ``FaceSkin.close``; the
  ears, which a frontal photo sees edge-on, flattened to a membrane) is closed at the back by a
  *shell*: rings of vertices running from the face mask's outer border over an ellipsoid fitted
  to the face (sized from the jaw width) to a pole at the back of the head. The shell stands in
  for the hair and skull that the face area does not cover; its extent along each ring is fitted
  so its silhouette in the source meets the person's outline (GrabCut, seeded with the face and
  forehead). Face + shell is closed: no inside of the mask can show. The neck blends from turning
  with the head (at the jaw) to staying put (at the bottom), as a real neck twists.
* **Texture without UVs.** Each vertex samples the source crop at its own projection there (the
  source image is the texture; barycentric interpolation of those source coordinates gives
  per-pixel sampling at the crop's full resolution, so a coarse mesh costs no sharpness). A
  vertex's own sample is trusted by z-buffer visibility times a foreshortening weight; where it
  is not, the vertex takes its left/right partner's sample (the nearest vertex of the x-mirrored
  mean shape), colour-matched to the own side's lighting; where neither side sees it (back of the
  head, under the chin) source coordinates are propagated over the mesh graph from the nearest
  textured vertices on the person, sampled from a blurred source (soft streaks, not sharp ones).
  The three layers blend with interpolated weights: no seams.
* **Surroundings.** The rotated, re-centred, re-scaled head (its 68-landmark box matches the
  input's) is rendered with the project's z-buffer rasteriser over the source crop warped
  radially about the head, so that the source's head outline lands on the view's and the crop
  border stays put: hair, shoulders and scene next to the head follow it continuously (300W-LP's
  triangulated image warp, without its folds). With a ``background`` the scene is replaced and the
  person's own hair and body (the GrabCut foreground) are kept.

Entry points: :func:`profile_views` (the per-item function a Ray job maps over records; rows out),
:func:`profile_record` (the same plus the skip reason and timings), :func:`skip_reason`,
:func:`profile_contact_sheet`, and :func:`fit_photo_record` (a quick 2D-landmark fit of a photo, for
eyeballing profiles before the pseudo-labeller exists; not a labeller).

Modules: :mod:`~facepgn.profiling.head` (the head proxy mesh and its fitted geometry),
:mod:`~facepgn.profiling.texture` (foreground, shell extent, texture, rendering over the warped
surroundings), :mod:`~facepgn.profiling.views` (skip reasons, view poses, the per-record entry points,
eyeballing), :mod:`~facepgn.profiling.sequences` (nearby views with exact flow). Every public name is
importable from :mod:`facepgn.profiling`.
"""

from facepgn.profiling.head import HeadGeometry, HeadMesh, head_geometry, head_mesh
from facepgn.profiling.sequences import (
    ProfiledSequence,
    ViewGeometry,
    exact_vertex_mask,
    profile_sequence,
    sequence_poses,
    view_flow,
    view_geometry,
    view_vertices,
)
from facepgn.profiling.texture import (
    HeadTexture,
    fit_shell_extent,
    head_foreground,
    head_texture,
    outline_radii,
    render_head,
    surround_warp,
)
from facepgn.profiling.views import (
    SKIP_REASONS,
    ProfileOutcome,
    SourceFace,
    fit_photo_record,
    prepare_source,
    profile_contact_sheet,
    profile_record,
    profile_views,
    render_view,
    sample_view_poses,
    skip_reason,
)

__all__ = [
    "SKIP_REASONS",
    "HeadGeometry",
    "HeadMesh",
    "HeadTexture",
    "ProfileOutcome",
    "ProfiledSequence",
    "SourceFace",
    "ViewGeometry",
    "exact_vertex_mask",
    "fit_photo_record",
    "fit_shell_extent",
    "head_foreground",
    "head_geometry",
    "head_mesh",
    "head_texture",
    "outline_radii",
    "prepare_source",
    "profile_contact_sheet",
    "profile_record",
    "profile_sequence",
    "profile_views",
    "render_head",
    "render_view",
    "sample_view_poses",
    "sequence_poses",
    "skip_reason",
    "surround_warp",
    "view_flow",
    "view_geometry",
    "view_vertices",
]
