"""Run a trained checkpoint on one image, or evaluate it on a whole test set (IDX files,
an image folder or an .npz)."""
from __future__ import annotations

import argparse
import json

import numpy as np
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from nnjit.augment import TTA_CHOICES, TTA_HELP
from nnjit.checkpoint import CheckpointError, load_checkpoint
from nnjit.cli import HelpFormatter, console, fail, positive_int
from nnjit.data import DataError, load_split, read_idx
from nnjit.data.preprocess import Preprocessing
from nnjit.data.evaluation import load_test_part
from nnjit.images import load_image
from nnjit.progress import compile_with_progress

#: Images decoded at a time when classifying a folder in one process.
DECODED_PER_CHUNK = 8192

EXAMPLES = """
examples:
  nnjit infer checkpoints/latest.json image_sample.bin
  nnjit infer checkpoints/latest.json digit.png --json
  nnjit infer checkpoints/latest.json --idx data/mnist/t10k-images-idx3-ubyte.gz data/mnist/t10k-labels-idx1-ubyte.gz
  nnjit infer checkpoints/latest.json --data ~/photos    # ~/photos/test/<class>/*.jpg
  nnjit infer checkpoints/latest.json --data mnist.npz   # its x_test, y_test
  nnjit infer checkpoints/latest.json --data ~/photos --out results.csv          # a row per image
  nnjit infer checkpoints/latest.json --data ~/inbox --ray --out results.parquet # on Ray Data
  nnjit infer --save-sample 0 --idx data/mnist/t10k-images-idx3-ubyte.gz --output image_sample.bin
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="checkpoint JSON written by nnjit train (scripts/train.py)")
    p.add_argument("image", nargs="?",
                   help="a PNG/JPEG (grayscale or colour, as the model takes), a .npy array of one "
                        "(C, H, W) or (H, W, C) image, or raw bytes (784 for a 28x28 grayscale model)")
    p.add_argument("--idx", nargs="+", metavar="FILE",
                   help="IMAGES LABELS: evaluate on an IDX test set (with --save-sample: IMAGES [LABELS])")
    p.add_argument("--data", metavar="PATH",
                   help="evaluate on an image folder (PATH/test/<class>/*.png, or PATH/<class>/...) "
                        "or the x_test, y_test of an .npz; classes matched to the checkpoint's by name")
    p.add_argument("--tta", choices=TTA_CHOICES,
                   help=f"{TTA_HELP} (default: the checkpoint's, as it was trained with --tta)")
    p.add_argument("--top", type=positive_int, default=5, help="how many classes to list")
    p.add_argument("--json", action="store_true", help="print a machine-readable result instead")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="batch size for --idx and --data")
    p.add_argument("--out", metavar="FILE.csv|FILE.parquet",
                   help="with --data FOLDER: write one row per image (path, label for class "
                        "folders, predicted, probability, p_<class> for each class); FOLDER "
                        "may also be a flat folder of images")
    p.add_argument("--ray", action="store_true",
                   help="with --data FOLDER --out FILE: classify on Ray Data (files read and "
                        "decoded by its tasks, batches through a pool of actors each holding "
                        "the model once); for folders of any size, on one machine or a cluster")
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="--ray: a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--ray-actors", type=positive_int, metavar="N",
                   help="--ray: actors in the pool (default: one per CPU but one, which the "
                        "reading and decoding tasks keep)")
    p.add_argument("--save-sample", type=int, metavar="INDEX",
                   help="write image INDEX of the --idx images file as a raw 784-byte file and exit")
    p.add_argument("--output", default="image_sample.bin", help="file written by --save-sample")
    return p.parse_args(argv)


def draw(pixels: np.ndarray) -> Text:
    """The image (uint8 (C, H, W), C = 1 or 3) in the terminal: two pixel rows per line
    with half blocks (ASCII of the brightness when piped)."""
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels[:3]
    text = Text()
    if not console.is_terminal:
        ramp = " .:-=+*#%@"
        for row in rgb.mean(axis=0).astype(int):
            text.append("".join(ramp[int(v) * len(ramp) // 256] * 2 for v in row) + "\n")
        return text
    rows = rgb.transpose(1, 2, 0)
    for top, bottom in zip(rows[0::2], rows[1::2]):
        for (r, g, b), (r2, g2, b2) in zip(top, bottom):
            text.append("▀", style=f"rgb({r},{g},{b}) on rgb({r2},{g2},{b2})")
        text.append("\n")
    return text


def input_spec(ckpt) -> tuple[tuple[int, int, int], Preprocessing]:
    """The checkpoint's sample shape (C, H, W) and preprocessing."""
    try:
        return ckpt.input_shape(), Preprocessing.from_metadata(ckpt.metadata)
    except (CheckpointError, DataError) as err:
        fail(f"{ckpt.path}: {err}" if isinstance(err, DataError) else str(err))


def save_sample(args):
    if not args.idx or len(args.idx) > 2:
        fail("--save-sample needs --idx IMAGES [LABELS]")
    try:
        images = read_idx(args.idx[0])
        labels = read_idx(args.idx[1]) if len(args.idx) == 2 else None
    except DataError as err:
        fail(str(err))
    if images.ndim != 3 or not 0 <= args.save_sample < len(images):
        fail(f"--save-sample: index {args.save_sample} is outside 0..{len(images) - 1}")
    try:
        with open(args.output, "wb") as f:
            f.write(images[args.save_sample].tobytes())
    except OSError as err:
        fail(f"{args.output}: cannot write: {err.strerror}")
    label = f" (label {labels[args.save_sample]})" if labels is not None else ""
    console.print(f"wrote image {args.save_sample}{label} to {args.output} "
                  f"({images[args.save_sample].size} bytes)")


def predict_one(args, ckpt, shape, preprocessing):
    try:
        pixels, how = load_image(args.image, shape)
    except DataError as err:
        fail(str(err))
    x = preprocessing.apply(pixels[None])
    compile_with_progress(lambda: ckpt.model.predict(x, tta=args.tta), show=not args.json)
    probs = ckpt.model.predict(x, tta=args.tta)[0]
    names = ckpt.class_names(len(probs))
    order = np.argsort(-probs)[:args.top]
    best = int(order[0])
    if args.json:
        print(json.dumps({"image": args.image, "read_as": how, "class": best, "name": names[best],
                          "probabilities": {names[i]: float(probs[i]) for i in range(len(probs))}}))
        return
    console.print(draw(pixels))
    console.print(f"read as: {how}")
    label = f"{best}" + (f" ({names[best]})" if names[best] != str(best) else "")
    console.print(f"[bold]prediction: {label}[/]  probability {probs[best]:.2%}")
    table = Table(title=f"top {len(order)}")
    for col in ("class", "name", "probability"):
        table.add_column(col, justify="right" if col != "name" else "left")
    for i in order:
        table.add_row(str(i), names[i], f"{probs[i]:.2%}")
    console.print(table)


def test_set(args, ckpt, shape, k):
    """(images (N, C, H, W), labels as the checkpoint's class indices) from --idx or --data."""
    try:
        if args.idx:
            if len(args.idx) != 2:
                fail("--idx takes IMAGES LABELS")
            images, labels = load_split(args.idx[0], args.idx[1], k)
            return images[:, None], labels
        return load_test_part(args.data, shape, ckpt.class_names(k))
    except DataError as err:
        fail(str(err))


def model_classes(ckpt, shape) -> list[str]:
    """The checkpoint's class names, one per output of its model on ``shape`` samples."""
    return ckpt.class_names(ckpt.model.summary(shape)[-1][1][0])


def evaluate(args, ckpt, shape, preprocessing):
    names = model_classes(ckpt, shape)
    k = len(names)
    images, labels = test_set(args, ckpt, shape, k)
    if images.shape[1:] != shape:
        size = lambda s: f"{s[1]}x{s[2]}" + (f" with {s[0]} channels" if s[0] != 1 else "")  # noqa: E731
        fail(f"the images are {size(images.shape[1:])}, the checkpoint expects {size(shape)}")
    x = preprocessing.apply(images)
    preds = np.empty(len(x), np.int64)
    batches = {min(args.batch_size, len(x)), len(x) % args.batch_size or args.batch_size}
    compile_with_progress(lambda: [ckpt.model.predict(x[:n], args.batch_size, args.tta)
                                   for n in batches],
                          show=not args.json)
    with Progress(console=console, transient=True, disable=args.json or not console.is_terminal) as bar:
        task = bar.add_task("evaluating", total=len(x))
        for start in range(0, len(x), args.batch_size):
            probs = ckpt.model.predict(x[start:start + args.batch_size], args.batch_size, args.tta)
            preds[start:start + len(probs)] = probs.argmax(axis=1)
            bar.update(task, advance=len(probs))
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels.astype(np.int64), preds), 1)
    show_accuracy(args, confusion, names)


def show_accuracy(args, confusion: np.ndarray, names: list[str]):
    """Print the accuracy, per-class accuracy and confusion matrix (rows: true
    class) of an evaluation, or their JSON with --json."""
    k = len(names)
    total = int(confusion.sum())
    accuracy = float(np.trace(confusion) / max(total, 1))
    per_class = [float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
                 for i in range(k)]
    if args.json:
        print(json.dumps({"images": total, "accuracy": accuracy,
                          "per_class_accuracy": dict(zip(names, per_class)),
                          "confusion": confusion.tolist()}))
        return
    console.print(f"[bold]accuracy {accuracy:.2%}[/] on {total:,} images")
    table = Table(title="confusion matrix (rows: true class, columns: predicted)")
    table.add_column("true")
    for i in range(k):
        table.add_column(str(i), justify="right")
    table.add_column("acc", justify="right")
    for i in range(k):
        acc = "-" if per_class[i] is None else f"{per_class[i]:.1%}"
        table.add_row(f"{i} {names[i]}" if names[i] != str(i) else str(i),
                      *[str(v) if v else "." for v in confusion[i]], acc)
    console.print(table)


def classify_folder(args, ckpt, shape, preprocessing):
    """--data FOLDER --out FILE: every image's prediction as a table row, in one
    process or (--ray) on Ray Data; the confusion matrix for class folders."""
    from nnjit.data.evaluation import list_images
    from nnjit.predictions import PredictionWriter
    from nnjit.ray_inference import classify_on_ray

    names = model_classes(ckpt, shape)
    try:
        folder, paths, labels = list_images(args.data, names)
        paths = [p.resolve() for p in paths]
        with PredictionWriter(args.out, names, labels is not None) as writer:
            if args.ray:
                classify_on_ray(args.checkpoint, folder.resolve(), paths, labels, shape, writer,
                                args.batch_size, args.address, args.ray_actors, args.tta)
            else:
                classify_in_process(args, ckpt, shape, preprocessing, paths, labels, writer)
    except DataError as err:
        fail(str(err))
    if not args.json:
        console.print(f"wrote {writer.rows:,} predictions to {args.out}")
    if writer.confusion is not None:
        show_accuracy(args, writer.confusion, names)


def classify_in_process(args, ckpt, shape, preprocessing, paths, labels, writer):
    """The images at ``paths`` through the model in batches of --batch-size, written
    to ``writer``; decoded a few batches at a time (bounded memory; the decoding
    processes start once per chunk)."""
    from nnjit.data.folder import read_images

    compile_with_progress(lambda: ckpt.model.predict(
        np.zeros((min(args.batch_size, len(paths)), *shape), ckpt.model.dtype), args.batch_size,
        args.tta),
        show=not args.json)
    chunk = args.batch_size * max(1, DECODED_PER_CHUNK // args.batch_size)
    with Progress(console=console, transient=True,
                  disable=args.json or not console.is_terminal) as bar:
        task = bar.add_task("classifying", total=len(paths))
        for first in range(0, len(paths), chunk):
            x = preprocessing.apply(read_images(paths[first:first + chunk], shape[0], shape[1:],
                                                show_progress=False))
            for start in range(0, len(x), args.batch_size):
                rows = slice(first + start, first + start + args.batch_size)
                writer.write(paths[rows],
                             ckpt.model.predict(x[start:start + args.batch_size], args.batch_size,
                                                args.tta),
                             None if labels is None else labels[rows])
                bar.update(task, advance=len(paths[rows]))


def main(argv=None):
    args = parse_args(argv)
    if args.save_sample is not None:
        return save_sample(args)
    if not args.checkpoint:
        fail("a CHECKPOINT is needed (or --save-sample INDEX --idx IMAGES)")
    if (args.image is not None) + (args.idx is not None) + (args.data is not None) != 1:
        fail("give one of an IMAGE, --idx IMAGES LABELS or --data PATH")
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as err:
        fail(str(err))
    shape, preprocessing = input_spec(ckpt)
    try:
        args.tta = args.tta or ckpt.tta()
    except CheckpointError as err:
        fail(str(err))
    if args.ray and not args.out:
        fail("--ray writes a table: add --out results.csv (or .parquet)")
    if args.out and args.data is None:
        fail("--out needs --data FOLDER (one row per image file)")
    if args.out:
        classify_folder(args, ckpt, shape, preprocessing)
    elif args.image:
        predict_one(args, ckpt, shape, preprocessing)
    else:
        evaluate(args, ckpt, shape, preprocessing)
