"""``facepgn export onnx``: the model's networks as ONNX, checked against torch.
``facepgn export release``: a model file as the float16 release file + sha256 (what ships in
``facepgn/data`` as the pretrained model; MODEL_CARD.md)."""

from __future__ import annotations

import argparse

from facepgn.cli import Command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx", "release"],
                        help="onnx: the networks for onnxruntime; release: float16 model file + sha256 into --out (a folder)")
    parser.add_argument("--model", "-m", default=None, help="model file or training checkpoint (default: the pretrained model)")
    parser.add_argument("--out", "-o", required=True, help="output .onnx path (local or s3://); release: a local folder")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime-vs-torch check")
    parser.add_argument("--atol", type=float, default=1e-3, help="largest allowed difference in the check (crop pixels)")
    parser.add_argument("--mirror-test", choices=["on", "off"], default=None,
                        help="set the model's test-time mirroring (ModelConfig.mirror_test) in what is written; default: keep the model's")


def run(args: argparse.Namespace) -> int:
    """Export the model's networks (coefficient regressor + PGN) to ONNX with a dynamic batch axis. The
    closed-form pose fit has no ONNX operator; `facepgn infer --runtime onnx` runs it in torch on
    the ONNX outputs. The export is checked against torch on random crops."""
    from facepgn import export, storage
    from facepgn.errors import FacepgnError
    from facepgn.model import load

    if args.format == "release":
        return _release(args)
    storage.check_file_writable(args.out)  # an output that cannot be written: one line before the model loads
    model = load(args.model)
    if args.mirror_test is not None:
        model.cfg = model.cfg.model_copy(update={"mirror_test": args.mirror_test == "on"})
    names = export.export_onnx(model, args.out, opset=args.opset)
    print(f"facepgn export: {args.model or 'the pretrained model'} -> {args.out} (outputs: {', '.join(names)})")
    if args.check:
        diffs = export.compare_onnx(model, args.out)
        worst = max(diffs[k] for k in export.ONNX_CHECKED_OUTPUTS if k in diffs)
        print("facepgn export: max |onnxruntime - torch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        if worst > args.atol:
            raise FacepgnError(f"{args.out}: ONNX outputs differ from torch by {worst:.2e} (> {args.atol})")
    return 0


def _release(args: argparse.Namespace) -> int:
    """``export release``: the float16 model file and its sha256 into the local folder ``--out``."""
    from facepgn import storage
    from facepgn.errors import InputError
    from facepgn.model import resolve_model_file, write_pretrained

    if storage.is_remote(args.out):
        raise InputError(args.out, "export release writes a local folder (copy it to S3 afterwards)")
    storage.check_writable(args.out)  # creates it; one that cannot be written: one line before the model loads
    model_file = resolve_model_file(args.model)
    mirror = None if args.mirror_test is None else args.mirror_test == "on"
    with storage.faults(args.out, writing=True):  # the model's own read faults arrive translated already
        info = write_pretrained(model_file, args.out, mirror_test=mirror)
    print(f"facepgn export: {args.model} -> {info['path']} ({info['bytes'] / 1e6:.1f} MB float16, sha256 {info['sha256']})")
    return 0


register = Command(
    "export", handler=run, arguments=_arguments, config=False, description=run.__doc__,
    help="export a model (ONNX) for onnxruntime and other runtimes",
)
