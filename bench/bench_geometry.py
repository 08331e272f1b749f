"""Benchmark: the pose fit and the face-model landmark path, as ratios to baselines run in the same
process.

* ``geometry.similarity_fit`` (Horn's quaternion form, regularised eigenvector backward), forward +
  backward, against a plain SVD Umeyama with torch's own SVD backward (which is what it replaces;
  that baseline's gradients are not finite for degenerate inputs, so it is a speed reference only).
* ``FaceModel.landmarks`` (68 landmark rows only) against ``FaceModel.vertices`` + indexing (the
  obvious way), forward + backward, for the ICT model truncated to 40 identity / 20 expression modes.

    .venv/bin/python bench/bench_geometry.py [--batch 64] [--repeats 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from facepgn import geometry
from facepgn.facemodel import load_face_model


def svd_umeyama(src: torch.Tensor, dst: torch.Tensor):
    mu_s, mu_d = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    a, b = src - mu_s, dst - mu_d
    cov = b.transpose(-1, -2) @ a / src.shape[-2]
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(U @ Vh))
    D = torch.ones_like(S)
    D = torch.stack([D[..., 0], D[..., 1], d], -1)
    R = U @ torch.diag_embed(D) @ Vh
    s = (S * D).sum(-1) / (a * a).sum((-1, -2)) * src.shape[-2]
    t = mu_d.squeeze(-2) - s[..., None] * (R @ mu_s.transpose(-1, -2)).squeeze(-1)
    return s, R, t


def timed(fn, repeats: int) -> float:
    fn()  # warm up (caches, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    src = torch.randn(args.batch, 68, 3)
    R0 = geometry.euler_to_matrix(torch.rand(args.batch, 3) - 0.5)
    dst0 = 2.0 * src @ R0.transpose(-1, -2) + 0.05 * torch.randn(args.batch, 68, 3)

    def run(fit):
        dst = dst0.clone().requires_grad_(True)
        s, R, t = fit(src, dst)
        (s.sum() + R.sum() + t.sum()).backward()

    ours = timed(lambda: run(geometry.similarity_fit), args.repeats)
    base = timed(lambda: run(svd_umeyama), args.repeats)
    print(f"similarity_fit fwd+bwd, batch {args.batch} x 68 points: {1e3 * ours:.3f} ms; "
          f"SVD Umeyama baseline {1e3 * base:.3f} ms; ratio ours/baseline {ours / base:.2f}")

    model = load_face_model().truncated(40, 20)

    def lm_path(use_landmarks: bool):
        ic = torch.randn(args.batch, 40, requires_grad=True)
        ec = torch.rand(args.batch, 20, requires_grad=True)
        if use_landmarks:
            out = model.landmarks(ic, ec)
        else:
            out = model.vertices(ic, ec)[:, torch.from_numpy(model.landmark_ids.astype("int64"))]
        out.sum().backward()

    lm = timed(lambda: lm_path(True), args.repeats)
    full = timed(lambda: lm_path(False), max(3, args.repeats // 10))
    print(f"FaceModel.landmarks fwd+bwd, batch {args.batch}: {1e3 * lm:.3f} ms; vertices + index baseline "
          f"{1e3 * full:.3f} ms; speed-up {full / lm:.0f}x")


if __name__ == "__main__":
    main()
