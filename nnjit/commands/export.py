"""Export a checkpoint to ONNX (opset 13, standard operators), optionally checked with onnxruntime."""
from __future__ import annotations

import argparse
import os

import numpy as np

from nnjit.augment import TTA_CHOICES, TTA_HELP
from nnjit.checkpoint import CheckpointError, load_checkpoint
from nnjit.cli import HelpFormatter, console, fail
from nnjit.data import DataError
from nnjit.data.preprocess import Preprocessing
from nnjit.onnx_export import OPSET, export_onnx, onnxruntime_max_difference


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint-path", required=True, help="checkpoint JSON written by nnjit train (scripts/train.py)")
    p.add_argument("--onnx-path", required=True, help="where to write the .onnx file")
    p.add_argument("--tta", choices=TTA_CHOICES,
                   help=f"{TTA_HELP}, as part of the exported graph (default: the checkpoint's, "
                        "as it was trained with --tta)")
    p.add_argument("--verify", action="store_true",
                   help="run the exported file in onnxruntime at batch 1 and 64 and print the "
                        "largest difference from nnjit (fails above 1e-5)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint_path)
        shape = ckpt.input_shape()
        tta = args.tta or ckpt.tta()
    except CheckpointError as err:
        fail(str(err))
    folder = os.path.dirname(os.path.abspath(args.onnx_path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        fail(f"{args.onnx_path}: cannot write there (folder {folder} is missing or not writable)")
    try:
        preprocessing = Preprocessing.from_metadata(ckpt.metadata)
    except DataError as err:
        fail(f"{args.checkpoint_path}: {err}")
    k = ckpt.model.summary(shape)[-1][1][0]
    meta = {"class_names": ckpt.class_names(k),
            "preprocessing": preprocessing.describe(),
            "dataset": str(ckpt.metadata.get("dataset", "")), "tta": tta}
    try:
        with console.status("exporting"):
            export_onnx(ckpt.model, args.onnx_path, shape, meta, tta)
    except OSError as err:
        fail(f"{args.onnx_path}: cannot write: {err.strerror or err}")
    console.print(f"wrote {args.onnx_path} (opset {OPSET}, input 'input' (batch, {', '.join(map(str, shape))}), "
                  f"{os.path.getsize(args.onnx_path):,} bytes"
                  + ("; the mean of each image's output and its mirror's: --tta flip" if tta == "flip"
                     else "") + ")")
    if args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            fail("--verify needs onnxruntime: pip install onnxruntime")
        x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
        diff = max(onnxruntime_max_difference(args.onnx_path, ckpt.model, x[:1], tta),
                   onnxruntime_max_difference(args.onnx_path, ckpt.model, x, tta))
        console.print(f"onnxruntime vs nnjit, batch 1 and 64: max |difference| = {diff:.2e}")
        if diff > 1e-5:
            fail(f"onnxruntime disagrees with nnjit by {diff:.2e} (> 1e-5)", code=1)
