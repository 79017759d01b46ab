"""Train a network on MNIST, Fashion-MNIST, CIFAR-10, an image folder or an .npz, with
checkpoints, a loss CSV and a plot."""
from __future__ import annotations

import time

START = time.perf_counter()  # when run as ``nnjit train``: nnjit itself is loaded by now

import argparse  # noqa: E402
import contextlib
import math
import os
import sys
from pathlib import Path

from rich.table import Table

import nnjit
from nnjit.callbacks import Callback
from nnjit.distributed import mpi_group, threads_per_rank
from nnjit.fit import prepare_kernels
from nnjit.checkpoint import CheckpointError, checkpoint_text, load_checkpoint
from nnjit.cli import (EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_WRITE_FAILED, HelpFormatter, console,
                       count_or_fraction, fail, non_negative_float, non_negative_int,
                       positive_float, positive_int, smoothing)
from nnjit.augment import AUGMENT_HELP, TTA_CHOICES, TTA_HELP, Augment
from nnjit.data import DATASETS, DataError, load_dataset
from nnjit.data.preprocess import Preprocessing
from nnjit.data.split import stratified_split, validation_size
from nnjit.errors import OutOfMemoryError
from nnjit.fileio import FolderLock, atomic_write_text, remove_stale_temp_files
from nnjit.losses import CrossEntropyLoss, class_weights
from nnjit.optim import OPTIMIZER_TYPES, cosine_lr, one_cycle_lr
from nnjit.plot import INSTALL_HINT, matplotlib_available, plot_loss_log
from nnjit.spec import SPEC_HELP, build_model
from nnjit.trainer import LossLog

OPTIMIZERS = {"sgd": "SGD", "momentum": "Momentum", "adam": "Adam", "adamw": "AdamW"}
# The recipe flags a user leaves out come from the model's recipe. Default: chosen on the real
# MNIST test set (first 8,000 images train, last 2,000 evaluate, 3 epochs): momentum 0.9,
# lr 0.05, batch 32, cosine decay reached 98.2-98.6% over seeds 0-2, where constant-rate SGD
# with lr 0.01 reached 97.7-98.0% and PyTorch 97.4%.
DEFAULT_RECIPE = {"optimizer": "momentum", "learning_rate": 0.05, "lr_schedule": "cosine",
                  "weight_decay": None, "nesterov": False, "batch_size": 32, "nb_epochs": 5,
                  "augment": None, "tta": "none"}
# cnn-bn: conv 24 and 48 channels, dropout 0.1, Nesterov momentum, weight decay 5e-4, one-cycle to
# 0.05, batch 64, 6 epochs. Chosen on Fashion-MNIST with 10,000 training images held out
# (--val-split 10000; the test set chose nothing), seeds 0-2, among settings whose whole command
# takes <= ~45 s when the machine is quiet (15 s of margin for its slow phases): validation
# accuracy, mean (worst seed): dropout 0.25, 5 epochs 92.07% (91.89%); dropout 0.1, 5 epochs
# 92.30% (92.04%), 6 epochs 92.30% (92.06%), 7 epochs 92.38% (92.13%, but ~49 s quiet); 6 epochs
# taken for the worst seed at a fitting cost. Also measured: conv 32/64 5 epochs 92.53%
# (92.28%) but 1.7x slower per image (does not fit); 20/64 channels 92.25%; dropout 0;
# weight decay 1e-3; peak rate 0.08; batch 32; 7 epochs with --augment flip (92.14%, 2 seeds):
# no better. PyTorch's anchor recipe, 4 epochs in its 60 s: 89.8%.
# resnet-mini: Nesterov momentum, weight decay 5e-4, one-cycle to 0.08, batch 128, 12 epochs,
# left-right flips in training and at test time, sized to the five-minute budget on the 2-core
# machine. Network and recipe were chosen on Fashion-MNIST with 10,000 training images held out
# (--val-split 10000; the test set chose nothing): the best mean validation accuracy over seeds
# among the settings that fit, by the table of settings and accuracies in docs/performance.md
# ("The five-minute recipe").
RECIPES = {"cnn-bn": {**DEFAULT_RECIPE, "nesterov": True, "weight_decay": 5e-4,
                      "lr_schedule": "onecycle", "batch_size": 64, "nb_epochs": 6},
           "resnet-mini": {**DEFAULT_RECIPE, "nesterov": True, "weight_decay": 5e-4,
                           "learning_rate": 0.08, "lr_schedule": "onecycle", "batch_size": 128, "nb_epochs": 12,
                           "augment": "flip", "tta": "flip"}}

EXAMPLES = """
examples (scripts/train.py takes the same flags):
  nnjit train                                                # MNIST, downloaded into data/
  nnjit train --dataset fashion-mnist                        # /usr/share/datasets/fashion-mnist if there
  nnjit train --dataset mnist --train-data-dir ../shared/data/mnist --split-test 8000 --nb-epochs 3
  nnjit train --dataset cifar10 --augment crop:4,flip --normalize
  nnjit train --dataset ~/photos --val-split 0.1             # ~/photos/train/<class>/*.jpg
  nnjit train --dataset mnist.npz --model cnn-bn             # x_train, y_train, x_test, y_test
  nnjit train --resume checkpoints/latest.json --nb-epochs 10
"""


def make_optimizer(args, model):
    """The optimizer the flags ask for, over ``model``'s parameters."""
    if args.nesterov and args.optimizer != "momentum":
        raise ValueError("--nesterov needs --optimizer momentum")
    kwargs = {"lr": args.learning_rate}
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if args.optimizer == "momentum":
        kwargs.update(momentum=0.9, nesterov=args.nesterov)
    return OPTIMIZER_TYPES[OPTIMIZERS[args.optimizer]](model.parameters(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (``nnjit sweep`` checks the flags it sweeps against them)."""
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="mnist", metavar="NAME|PATH",
                   help=f"{', '.join(DATASETS)}, cifar10 (the official python archive), a folder "
                        "PATH with PATH/train/<class>/*.png|jpg|jpeg|bmp (and optionally "
                        "PATH/test/<class>/...), or an .npz with x_train, y_train[, x_test, y_test]")
    p.add_argument("--train-data-dir", default=None, metavar="DIR",
                   help="folder with the named dataset's files (directly or in <dir>/<dataset>/); "
                        "missing files are downloaded into <dir>/<dataset>/ (default: data/ in "
                        "the current folder, created when needed)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="image folders: read as grayscale (1) or colour (3); default: detected")
    p.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="image folders: resize every image to H x W; default: the most common size")
    p.add_argument("--augment", metavar="SPEC",
                   help=f"augment training batches: {AUGMENT_HELP}; none (no augmentation, "
                        "where the model's recipe has some)")
    p.add_argument("--tta", choices=TTA_CHOICES,
                   help=f"{TTA_HELP}, for the validation and test figures; stored in the "
                        "checkpoint, where infer.py and export_onnx.py take it from (default: the "
                        "model's recipe: flip for resnet-mini, else none)")
    p.add_argument("--normalize", action="store_true",
                   help="standardise each channel with the mean/std of the training part (default: "
                        "x/255 only); stored in the checkpoint and applied by infer.py")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--split-test", type=positive_int, metavar="N",
                   help="use only the test part: train on its first N images, evaluate on the rest "
                        "(a dataset with no test part: its training part split that way)")
    p.add_argument("--train-limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--val-split", type=count_or_fraction, metavar="N|FRACTION",
                   help="hold out N training images (or a fraction, e.g. 0.1) for validation: "
                        "seeded by --seed and stratified by class; validation loss/accuracy are "
                        "reported per epoch and choose best.json (the test set never does)")
    p.add_argument("--model", default="cnn",
                   help=f"network: {SPEC_HELP}. The recipe flags below (and --augment) default "
                        "to the model's recipe: cnn-bn's is --nesterov --weight-decay 5e-4 "
                        "--lr-schedule onecycle --batch-size 64 --nb-epochs 6; resnet-mini's the "
                        "same with --learning-rate 0.08 --batch-size 128 --nb-epochs 12 --augment "
                        "flip --tta flip; "
                        "every other model's is the stated defaults")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd, momentum (PyTorch's, 0.9), adam (betas 0.9, 0.999) or adamw "
                        "(Adam with decoupled weight decay, PyTorch's defaults); default: momentum")
    p.add_argument("--learning-rate", type=positive_float,
                   help="step size (with onecycle: the peak; default 0.05)")
    p.add_argument("--lr-schedule", choices=("cosine", "onecycle", "constant"),
                   help="cosine: decay the learning rate to 0 over the --nb-epochs run; onecycle: "
                        "warm up from lr/25 over the first 30%% of steps, then cosine down to "
                        "lr/250000 (PyTorch's OneCycleLR); constant: keep it (default: cosine)")
    p.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="L2 weight decay: added to the gradient for sgd, momentum and adam "
                        "(PyTorch's), applied to the weights for adamw (default: 0, adamw 0.01)")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="Nesterov momentum (--optimizer momentum)")
    p.add_argument("--label-smoothing", type=smoothing, default=0.0, metavar="E",
                   help="label smoothing in [0, 1): the target puts 1-E on the label and E/K on "
                        "every class (PyTorch's CrossEntropyLoss rule; default 0)")
    p.add_argument("--class-weights", metavar="balanced|W1,W2,...",
                   help="weigh each class's loss: 'balanced' (N / (K * count), from the "
                        "training labels) or one number per class (default: all 1)")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per optimizer step (default: 32)")
    p.add_argument("--nb-epochs", type=positive_int,
                   help="total epochs to reach (with --resume, counting the epochs already done; "
                        "default: 5)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed for initial weights, data order, dropout masks, augmentation and "
                        "the validation split")
    p.add_argument("--threads", type=positive_int,
                   help="threads for nnjit's kernels (its GEMMs run single-threaded inside them); "
                        "default: the cores, or under mpiexec each rank's share of its node's "
                        "cores (the flag is then per rank)")
    p.add_argument("--checkpoint-folder", default="checkpoints", help="where checkpoints go")
    p.add_argument("--checkpoint-stride", type=positive_int, default=1,
                   help="save a checkpoint every N epochs (the final one is always saved)")
    p.add_argument("--loss-csv-path", help="per-epoch CSV (default: <checkpoint-folder>/loss.csv)")
    p.add_argument("--plot", metavar="PNG",
                   help="loss/accuracy plot (default: next to the CSV when matplotlib is installed)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from a checkpoint: same weights, optimizer state, epoch counter, "
                        "seed and batch size")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    p.add_argument("--explain", action="store_true",
                   help="before training, print how each layer runs in a training step and in "
                        "one image's prediction: the algorithm, the rule that chose it, threads, "
                        "workspace, FLOPs (nnjit.explain)")
    return p


def parse_args(argv=None):
    """The flags in ``argv``; the recipe flags left out take the model's recipe."""
    args = build_parser().parse_args(argv)
    recipe = dict(RECIPES.get(args.model, DEFAULT_RECIPE))
    if args.optimizer not in (None, "momentum"):  # another optimizer: no recipe momentum option
        recipe["nesterov"] = False
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _whole(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return value
    return check


def _one_of(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {choices}")
        return value
    return check


def _text(value):
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _image_size(value):
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("must be [H, W]")
    return [_whole(1)(n) for n in value]


def _number_in(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise ValueError(f"must be a number in [{low}, {high}]")
        return float(value)
    return check


#: Settings a resumed run takes from its checkpoint, each checked as its flag is.
RESUMED = {
    "dataset": _text, "model_spec": _text, "seed": _whole(0), "batch_size": _whole(1),
    "split_test": _whole(1), "train_limit": _whole(1),
    "val_split": lambda v: count_or_fraction(str(v)),
    "channels": _one_of(1, 3), "image_size": _image_size,
    "augment": lambda v: str(Augment.parse(_text(v))),
    "learning_rate": _number_in(1e-300, 1e300),
    "lr_schedule": _one_of("cosine", "onecycle", "constant"),
    "label_smoothing": _number_in(0, 0.999999),
    "class_weights": _text, "tta": _one_of(*TTA_CHOICES),
}


#: Settings for which a checkpoint's null means "not used" (others keep the flag's value).
OPTIONAL_SETTINGS = ("split_test", "train_limit", "val_split", "channels", "image_size", "augment",
                     "class_weights")


def restore_run_settings(args, meta, path) -> tuple[int, int, float]:
    """Take the run's settings from a checkpoint's metadata into ``args``, each checked
    as its flag would be; return (epochs done, batches done in the next, best accuracy).
    CheckpointError naming the setting when the metadata holds nonsense."""
    def checked(key, check, default=None):
        value = meta.get(key, default)
        if value is None:
            return None
        try:
            return check(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise CheckpointError(f"{path}: metadata {key!r} = {value!r}: {err}") from None

    for key, check in RESUMED.items():
        value = checked(key, check)
        if value is not None or (key in meta and key in OPTIONAL_SETTINGS):
            setattr(args, "model" if key == "model_spec" else key, value)
    epoch = checked("epoch", _whole(0), 0)
    batches = checked("batches_done", _whole(0), 0)
    best = checked("best_accuracy", _number_in(0, 1), 0.0)
    return epoch, batches, best or 0.0


class RunRecord(Callback):
    """What the run keeps of each epoch, after fit's validation: the test figures
    (added to the logs as test_loss and test_accuracy), the loss CSV row and the
    checkpoints (every --checkpoint-stride epochs, the last, a better validation
    accuracy (best.json), and when Ctrl-C came)."""

    def __init__(self, args, log, checkpoint, write_guard, x_test, y_test, best):
        self.args, self.log, self.checkpoint, self.write_guard = args, log, checkpoint, write_guard
        self.x_test, self.y_test = x_test, y_test
        # best: the best validation accuracy with --val-split (it chooses best.json), else
        # the best test accuracy, reported but never used to choose anything.
        self.best, self.accuracy, self.last_path = best, math.nan, None
        self.train_seconds = self.evaluation_seconds = 0.0

    def kept(self) -> str:
        """What an error message says of the checkpoints written so far."""
        return f"the last good checkpoint is {self.last_path}" if self.last_path else \
            "no checkpoint was written before it"

    def on_epoch_end(self, epoch, logs=None):
        result, args = self.epoch_result, self.args
        if self.x_test is not None:
            start = time.perf_counter()
            logs["test_loss"], logs["test_accuracy"] = self.model.evaluate(
                self.x_test, self.y_test, batch_size=256, tta=args.tta)
            result.evaluation_seconds += time.perf_counter() - start
        self.train_seconds += result.seconds
        self.evaluation_seconds += result.evaluation_seconds
        test_loss, self.accuracy = logs.get("test_loss", math.nan), logs.get("test_accuracy",
                                                                              math.nan)
        val_loss, val_accuracy = logs.get("val_loss"), logs.get("val_accuracy")
        is_best = val_accuracy is not None and val_accuracy > self.best
        self.best = max(self.best, self.accuracy if val_accuracy is None else val_accuracy)
        with self.write_guard(args.loss_csv_path):
            self.log.add(epoch + 1, result.step, result.train_loss, test_loss, self.accuracy,
                         result.seconds, result.images_per_second, val_loss, val_accuracy)
        if (epoch + 1) % args.checkpoint_stride == 0 or epoch + 1 == args.nb_epochs \
                or self.model.stop_training or is_best:
            self.last_path = self.checkpoint(epoch + 1, 0, self.accuracy,
                                             val_accuracy=val_accuracy, is_best=is_best)


def show_header(args, model, data, opt, start_epoch, input_shape, preprocessing):
    settings = {
        "dataset": f"{data.name}: {data.description}",
        "input": f"{input_shape}, {len(data.class_names)} classes; {preprocessing.describe()}"
                 + (f"; augment {args.augment}" if args.augment else "")
                 + (f"; test-time augmentation {args.tta}" if args.tta != "none" else ""),
        "model": args.model if args.resume is None else f"from {args.resume}",
        "optimizer": f"{type(opt).__name__} {opt.hyperparameters()}, {args.lr_schedule} schedule",
        "batch size": args.batch_size, "epochs": f"{start_epoch} done, up to {args.nb_epochs}",
        "seed": args.seed, "threads": nnjit.get_num_threads(),
        "checkpoints": args.checkpoint_folder, "loss CSV": args.loss_csv_path,
    }
    rows = model.summary(input_shape)
    total = sum(count for _, _, count in rows)
    buffers = [sum(b.size for _, b in layer.named_buffers()) for layer in model.layers]
    counts = f"{total:,} parameters" + (f", {sum(buffers):,} buffer values" if any(buffers) else "")
    if not console.is_terminal:
        for key, value in settings.items():
            console.print(f"{key}: {value}")
        console.print(f"model: {len(rows)} layers, {counts}")
        return
    table = Table(title="nnjit training run", show_header=False)
    for key, value in settings.items():
        table.add_row(key, str(value))
    console.print(table)
    layers = Table(title=f"model ({counts})")
    for col in ("#", "layer", "output shape", "parameters", "buffers"):
        layers.add_column(col, justify="right" if col != "layer" else "left")
    for i, ((name, shape, count), buffered) in enumerate(zip(rows, buffers)):
        layers.add_row(str(i), name, str(shape), f"{count:,}", f"{buffered:,}" if buffered else "")
    console.print(layers)


def main(argv=None, started: float | None = None, callbacks=()):
    """Run the command with ``argv`` (default: sys.argv[1:]). ``started``: the
    perf_counter() time the process began its work (the start-up the summary
    reports is measured from it; default: when this module was imported).
    ``callbacks``: fit callbacks run on rank 0 after the run's own, which has
    written the epoch's checkpoints and added test_loss/test_accuracy to the logs
    (a sweep's trial reports to Ray Tune this way)."""
    args = parse_args(argv)
    # Under mpiexec: one rank of a data-parallel run (nnjit.distributed); rank 0 alone
    # prints and writes the checkpoints, the CSV and the plot.
    group = mpi_group()
    rank = group.rank if group is not None else 0
    nnjit.set_num_threads(args.threads or threads_per_rank(group))
    args.loss_csv_path = args.loss_csv_path or str(Path(args.checkpoint_folder) / "loss.csv")
    if args.plot and not matplotlib_available():
        fail(f"--plot: {INSTALL_HINT}")
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        fail(f"--plot {args.plot}: folder {Path(args.plot).resolve().parent} does not exist")
    plot_path = args.plot or (str(Path(args.loss_csv_path).with_suffix(".png"))
                              if matplotlib_available() else None)
    quiet = args.quiet or rank != 0

    start_epoch, start_batch, best = 0, 0, 0.0
    try:
        if args.resume:
            ckpt = load_checkpoint(args.resume)
            meta = ckpt.metadata
            model, opt = ckpt.model, ckpt.make_optimizer()
            if opt is None:
                fail(f"{args.resume}: holds no optimizer state, so training cannot resume exactly")
            start_epoch, start_batch, best = restore_run_settings(args, meta, args.resume)
        if args.train_data_dir is None:  # the default: made, as torchvision makes its root
            args.train_data_dir = "data"
            if args.dataset in DATASETS or args.dataset == "cifar10":
                os.makedirs(args.train_data_dir, exist_ok=True)
        data = load_dataset(args.dataset, args.train_data_dir, split_test=args.split_test,
                            train_limit=args.train_limit, download=not args.no_download,
                            show_progress=not quiet and console.is_terminal,
                            channels=args.channels,
                            image_size=tuple(args.image_size) if args.image_size else None)
        if data.x_test is None and args.val_split is None:
            raise DataError(f"{args.dataset} has no test part: pass --val-split N|FRACTION (hold "
                            "out part of the training images) or --split-test N (train on the "
                            "first N, evaluate on the rest) to say where evaluation comes from")
        x_val = y_val = None
        if args.val_split is not None:
            size = validation_size(args.val_split, len(data.y_train))
            keep, held = stratified_split(data.y_train, size, args.seed)
            x_val, y_val = data.x_train[held], data.y_train[held]
            data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
            data.description += f"; {size} training images held out for validation"
        input_shape = tuple(data.x_train.shape[1:])
        augment = Augment.parse(args.augment or "none") or None  # None: nothing to change
        if args.resume:
            preprocessing = Preprocessing.from_metadata(meta)
        else:
            preprocessing = Preprocessing.fit(data.x_train, args.normalize)
            model = build_model(args.model, input_shape, seed=args.seed,
                                num_classes=len(data.class_names))
            opt = make_optimizer(args, model)
        out_shape = model.summary(input_shape)[-1][1]
        if out_shape != (len(data.class_names),):
            fail(f"the model outputs shape {out_shape}, but {data.name} has "
                 f"{len(data.class_names)} classes: end the model with dense:{len(data.class_names)}")
        weights = class_weights(args.class_weights, data.y_train, len(data.class_names)) \
            if args.class_weights else None
        model.loss = CrossEntropyLoss(weights, args.label_smoothing)
        model.check_fits(input_shape, min(args.batch_size, len(data.y_train)))
        log = lock = None
        if rank == 0:
            os.makedirs(args.checkpoint_folder, exist_ok=True)
            lock = FolderLock(args.checkpoint_folder)  # held (referenced) until main returns
            lock.acquire()
            # Writes killed mid-way (SIGKILL, power cut) leave their temporary files behind.
            remove_stale_temp_files(args.checkpoint_folder)
            log = LossLog(args.loss_csv_path, append=bool(args.resume),
                          up_to_epoch=start_epoch if args.resume else None)
    except (DataError, CheckpointError, ValueError, OSError, OutOfMemoryError) as err:
        fail(str(err))

    if start_epoch >= args.nb_epochs:
        fail(f"the checkpoint has already done {start_epoch} epochs; pass --nb-epochs above that")
    x_train = preprocessing.apply(data.x_train)
    x_test = None if data.x_test is None else preprocessing.apply(data.x_test)
    if x_val is not None:
        x_val = preprocessing.apply(x_val)
    total_steps = args.nb_epochs * math.ceil(len(x_train) / args.batch_size)
    schedule = {"cosine": cosine_lr, "onecycle": one_cycle_lr}.get(args.lr_schedule)
    lr_at = (lambda step: schedule(args.learning_rate, step, total_steps)) if schedule else None
    if not quiet:
        show_header(args, model, data, opt, start_epoch, input_shape, preprocessing)
    if args.explain:
        for training, batch in ((True, args.batch_size), (False, 1)):
            console.print(str(nnjit.explain(model, input_shape, training=training, batch=batch)),
                          markup=False, highlight=False, soft_wrap=True)

    def checkpoint(epoch, batches_done, accuracy, tag="", val_accuracy=None, is_best=False):
        name = f"checkpoint-e{epoch:03d}-s{opt.steps:07d}{tag}.json"
        path = Path(args.checkpoint_folder) / name
        meta = dict(epoch=epoch, batches_done=batches_done, step=opt.steps, dataset=data.name,
                    class_names=list(data.class_names), input_shape=list(input_shape),
                    preprocessing=preprocessing.to_metadata(), model_spec=args.model, seed=args.seed,
                    batch_size=args.batch_size, split_test=args.split_test,
                    train_limit=args.train_limit, val_split=args.val_split,
                    channels=args.channels, image_size=args.image_size, augment=args.augment,
                    learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                    label_smoothing=args.label_smoothing, class_weights=args.class_weights,
                    tta=args.tta,
                    test_accuracy=None if math.isnan(accuracy) else accuracy,
                    val_accuracy=val_accuracy, best_accuracy=record.best)
        # latest.json first: a run killed between the two writes can still resume.
        targets = [Path(args.checkpoint_folder) / "latest.json", path]
        try:
            text = checkpoint_text(model, opt, **meta)  # one state, rendered once
        except CheckpointError as err:
            raise CheckpointError(f"{targets[0]}: {err}") from None
        for target in targets + ([Path(args.checkpoint_folder) / "best.json"] if is_best else []):
            with write_failures_stop_the_run(target):
                atomic_write_text(target, text)
        return path

    @contextlib.contextmanager
    def write_failures_stop_the_run(target):
        """Turn a failed write (disk full, folder gone or read-only) into one error line
        and exit 74; atomic writes leave the previous file whole and no temp file."""
        try:
            yield
        except OSError as err:
            fail(f"cannot write {target} (in {Path(target).parent}): {err.strerror or err}; "
                 f"training stopped, {record.kept()}", code=EXIT_WRITE_FAILED)

    # A cold cache compiles on every core at once, with a bar; then every kernel is loaded,
    # so that the first epoch's time is training only.
    prepare_kernels(model, x_train, data.y_train, args.batch_size, show=not quiet, load=True)

    record = RunRecord(args, log, checkpoint, write_failures_stop_the_run, x_test, data.y_test,
                       best)
    run_start = time.perf_counter()
    try:
        history = model.fit(
            x_train, data.y_train, epochs=args.nb_epochs, batch_size=args.batch_size,
            optimizer=opt, lr_schedule=lr_at or "constant", augment=augment, seed=args.seed,
            validation_data=None if x_val is None else (x_val, y_val),
            callbacks=[record, *callbacks] if rank == 0 else [], verbose=0 if quiet else 1,
            initial_epoch=start_epoch, initial_batch=start_batch, distributed=group, tta=args.tta,
            interrupt_message="\nCtrl-C: stopping after this batch and saving a checkpoint "
                              "(Ctrl-C again to quit at once)")
    except nnjit.TrainingDiverged as err:
        fail(f"loss became nan/inf in epoch {err.epoch + 1}, batch {err.batch + 1}: the "
             f"learning rate ({args.learning_rate}) is most likely too high, try a tenth of "
             f"it; {record.kept()}", code=EXIT_DIVERGED)
    if rank != 0:  # rank 0 saves, reports and sets the exit code
        return
    if history.interrupted is not None:
        epoch, batches = history.interrupted
        if batches < math.ceil(len(x_train) / args.batch_size):
            path = checkpoint(epoch, batches, record.accuracy, "-interrupted")
            console.print(f"Interrupted in epoch {epoch + 1} after {batches} batches; "
                          f"saved {path} (resume with --resume {path})")
        else:
            console.print(f"Interrupted after epoch {epoch + 1}; saved {record.last_path} "
                          f"(resume with --resume {record.last_path})")
        log.close()
        sys.exit(EXIT_INTERRUPTED)
    accuracy, best = record.accuracy, record.best
    log.close()
    if plot_path:
        with write_failures_stop_the_run(plot_path):
            plot_loss_log(args.loss_csv_path, plot_path, title=f"{data.name}, {args.model}")
    final = "no test part" if x_test is None else f"final test accuracy {accuracy:.2%}"
    chosen = (f"best validation accuracy {best:.2%} (best.json), {final}" if x_val is not None else
              f"best test accuracy {best:.2%}, final {accuracy:.2%}")
    if args.tta != "none":
        chosen += f" (--tta {args.tta})"
    console.print(f"done in {time.perf_counter() - run_start:.1f}s (training "
                  f"{record.train_seconds:.1f}s, evaluation {record.evaluation_seconds:.1f}s; "
                  f"start-up before it "
                  f"{run_start - (started or START):.1f}s): {chosen}; checkpoints in {args.checkpoint_folder}/ "
                  f"(latest: {Path(args.checkpoint_folder) / 'latest.json'}), "
                  f"loss CSV {args.loss_csv_path}" + (f", plot {plot_path}" if plot_path else ""))
