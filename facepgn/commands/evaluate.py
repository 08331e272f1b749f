"""``facepgn evaluate``: score a model (or precomputed predictions) with the AFLW2000-3D protocol.

    facepgn evaluate aflw2000 --model MODEL_FILE --data DIR --out DIR [--config FILE] [--set k=v ...]
    facepgn evaluate arrays --pred PRED.npy --gt GT.npy --pose POSE.npy [--out DIR]

Both write ``report.md``, ``ced.png``, ``metrics.json``, ``per_image.csv`` and ``summary.json`` into
``--out`` and print the headline numbers. ``aflw2000`` scores two crop conventions: the standard 3DDFA
roi boxes (``metrics.json``: ``landmarks``, ``pose_mae_deg``) and, unless ``detector_boxes=false``, the
YuNet detector's boxes cropped as ``facepgn infer`` crops (``detector_boxes``); it also draws
predictions on the images (``grid.png``, ``grid_detector.png``, ``best_worst.png``, in the report).
"""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    from facepgn.cli import add_command, add_command_group

    benchmarks = add_command_group(
        subparsers, "evaluate", dest="evaluate_command", metavar="BENCHMARK",
        help="evaluate landmarks/pose on AFLW2000-3D (3DDFA protocol) and write a report",
        description="Evaluate a model file on a folder laid out like AFLW2000-3D, or precomputed "
        "prediction arrays, with the 3DDFA protocol (NME by |yaw| bucket).",
    )
    add_command(benchmarks, "aflw2000", handler=run_aflw2000, arguments=_aflw2000_arguments,
                help="run a model file over AFLW2000-3D images (jpg + mat)")
    add_command(benchmarks, "arrays", handler=run_arrays, arguments=_arrays_arguments, config=False,
                help="score precomputed prediction arrays (.npy)")


def _aflw2000_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model file (facepgn.model.save_model_file), local or s3:// (default: the pretrained model)")
    parser.add_argument("--peer-only", action="store_true", help="score only the shared 2D landmark network, no model")
    parser.add_argument("--data", required=True, help="folder laid out like AFLW2000-3D (imageNNNNN.jpg + .mat)")
    parser.add_argument("--out", required=True, help="output folder (local or s3://)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _arrays_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="predicted landmarks (N, 68, 2|3) or (N, 2|3, 68), image pixels")
    parser.add_argument("--gt", required=True, help="ground-truth landmarks, e.g. AFLW2000-3D.pts68.npy")
    parser.add_argument("--pose", required=True, help="(N,) yaw degrees (AFLW2000-3D.pose.npy) or (N, 3) pitch/yaw/roll degrees")
    parser.add_argument("--pred-pose", default=None, help="predicted (N, 3) pitch/yaw/roll degrees (pose MAE)")
    parser.add_argument("--roi", default=None, help="(N, 4) crop boxes: --pred is then in crop pixels (3DDFA style)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side of --pred when --roi is given (3DDFA: 120)")
    parser.add_argument("--out", default=None, help="output folder for the report (optional)")


def _print_headline(metrics: dict) -> None:
    det = metrics.get("detector_boxes")
    if det:
        print("roi boxes (3DDFA protocol):")
    _print_metrics(metrics)
    if det:
        print(f"detector boxes (as facepgn infer crops): face detected in {det['num_detected']} of {det['num_images']} "
              f"images, missed {det['num_missed']}; NME over the detected ones:")
        _print_metrics(det)


def _write_summary(out_dir: str, args: argparse.Namespace, metrics: dict, config: dict, seconds: float) -> None:
    """``summary.json`` in :mod:`facepgn.summary`'s shape; the image count and buckets also at the top
    level, where this summary had them before."""
    from facepgn import storage
    from facepgn.summary import SUMMARY_FILE, versions, write_summary

    errors = metrics.get("errors", [])
    counts = {"images": metrics["num_images"], "images_skipped": len(errors)}
    det = metrics.get("detector_boxes")
    if det:
        counts.update(detector_detected=det["num_detected"], detector_missed=det["num_missed"])
    write_summary(
        storage.join(out_dir, SUMMARY_FILE), job=f"evaluate {args.evaluate_command}", counts=counts, errors=errors,
        timings={"wall_s": seconds}, config=config,
        extra={
            "arguments": {k: v for k, v in vars(args).items() if k != "handler" and not callable(v)},
            "num_images": metrics["num_images"],
            "bucket_counts": metrics["bucket_counts"],
            "metrics": "metrics.json",
        },
        versions=versions("torch", "cv2", "matplotlib"),
    )


def run_aflw2000(args: argparse.Namespace) -> int:
    import logging

    from facepgn import evaluation, storage
    from facepgn.config import EvaluateConfig, load_config
    from facepgn.errors import FacepgnError
    from facepgn.model import load_model_file, resolve_model_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cfg = load_config(EvaluateConfig, args.config, args.overrides)
    start = time.time()
    labels: dict[str, str] = {}
    crop_notes: dict[str, str] = {}
    if args.peer_only and cfg.compare_models:
        raise FacepgnError("compare_models needs a model to compare with: leave out --peer-only")
    if args.peer_only:
        predict, image_size = evaluation.peer_landmark_predictor(), 128
        labels[""] = "the peer 2D landmark network"
    else:
        model_file = resolve_model_file(args.model)
        model = load_model_file(model_file, map_location=args.device)
        predict, image_size = evaluation.model_predictor(model, device=args.device), model.input_size
        labels[""] = f"the model `{args.model}`" if args.model else f"the shipped pretrained model ({storage.basename(str(model_file))})"
        if cfg.compare_models:
            others = {}
            for name, path in evaluation.compared_model_names(cfg.compare_models, ["peer_2d", "peer_mediapipe"]):
                other = load_model_file(resolve_model_file(path), map_location=args.device)
                others[name] = evaluation.model_predictor(other, device=args.device)
                labels[name] = f"`{name}` ({path})"
            predict = evaluation.with_compared_models(predict, others)
        if cfg.peer_landmarks:
            predict = evaluation.with_peer_landmarks(predict)
            crop_notes["peer_2d"] = evaluation.PEER_2D_CROP_NOTE
    frame_peers = {"peer_mediapipe": evaluation.mediapipe_peer()} if cfg.peer_mediapipe else {}
    # the config's run and report settings go through by name (EvaluateConfig's fields are evaluate_aflw2000's keywords)
    run_settings = cfg.model_dump(exclude={"peer_landmarks", "peer_mediapipe", "compare_models"})
    result = evaluation.evaluate_aflw2000(
        predict, args.data, args.out, image_size=image_size, frame_peers=frame_peers, crop_notes=crop_notes,
        model_labels=labels, **run_settings,
        title=f"AFLW2000-3D: {'peer 2D landmark network' if args.peer_only else args.model or 'the pretrained model'}",
    )
    _write_summary(args.out, args, result.metrics, cfg.model_dump(mode="json"), time.time() - start)
    _print_headline(result.metrics)
    print(f"report: {result.report_paths['report.md']}")
    return 0


def run_arrays(args: argparse.Namespace) -> int:
    from facepgn import evaluation

    start = time.time()
    result = evaluation.evaluate_arrays(
        args.pred, args.gt, args.pose, pred_pose=args.pred_pose, roi_boxes=args.roi,
        crop_size=args.crop_size, out_dir=args.out,
    )
    if args.out:
        _write_summary(args.out, args, result.metrics, {}, time.time() - start)
    _print_headline(result.metrics)
    if args.out:
        print(f"report: {result.report_paths['report.md']}")
    return 0


def _print_metrics(metrics: dict) -> None:
    """One line per landmark set (headline NME of each metric) and the pose MAE."""
    for set_name, entry in metrics["landmarks"].items():
        parts = [f"{key} {100 * v['mean']:.2f}%" for key, v in entry.items()]
        print(f"{set_name}: " + ", ".join(parts) + " (mean of |yaw| bucket means)")
    if metrics.get("pose_mae_deg"):
        p = metrics["pose_mae_deg"]
        print(f"pose MAE: yaw {p['yaw']:.2f}, pitch {p['pitch']:.2f}, roll {p['roll']:.2f} degrees")
    for name, p in (metrics.get("pose_mae_deg_compared") or {}).items():
        print(f"pose MAE of {name}: yaw {p['yaw']:.2f}, pitch {p['pitch']:.2f}, roll {p['roll']:.2f} degrees")
