"""Search hyperparameters on Ray Tune: many ``nnjit train`` runs with sampled flags,
compared on validation accuracy, the trailing ones stopped early (ASHA)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.table import Table

from nnjit.cli import EXIT_INTERRUPTED, HelpFormatter, console, fail, non_negative_int, positive_int
from nnjit.sweep import DISTRIBUTIONS, TRIAL_FLAGS, SweepError, best_trial, read_space, sweep

EXAMPLES = """
SPACE.json maps train flags (long names without dashes) to distributions:
  {"learning-rate": {"loguniform": [0.001, 0.1]},
   "weight-decay": {"choice": [0, 0.0005]},
   "model": {"choice": ["cnn", "cnn-bn"]}}
distributions: """ + "; ".join(f"{k}: {v}" for k, v in DISTRIBUTIONS.items()) + """.
A switch (nesterov, normalize) takes {"choice": [true, false]}. The flags after -- are
every trial's; they must include --val-split. A trial's own folder, threads and
resumption are set by the sweep (""" + ", ".join(f"--{f}" for f in TRIAL_FLAGS) + """).

Rerunning the same command (same --storage and --name) resumes an interrupted sweep.

examples:
  nnjit sweep space.json --trials 8 -- --dataset fashion-mnist --val-split 10000 --nb-epochs 4
  nnjit sweep space.json --trials 32 --cpus-per-trial 4 --address ray://head:10001 \\
      --storage /shared/sweeps -- --dataset cifar10 --val-split 5000 --model resnet20
  nnjit infer sweeps/best.json --data ~/photos          # the best trial's best checkpoint
"""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=HelpFormatter,
                                usage="%(prog)s SPACE.json --trials N [flags] -- TRAIN_FLAGS...")
    p.add_argument("space", metavar="SPACE.json", help="the flags to sweep and their distributions")
    p.add_argument("--trials", type=positive_int, required=True, help="how many runs to sample")
    p.add_argument("--cpus-per-trial", type=positive_int, default=1, metavar="C",
                   help="CPUs Ray reserves for each trial, and the trial's kernel threads")
    p.add_argument("--storage", default="sweeps", metavar="DIR",
                   help="folder for the experiment (DIR/NAME), trials.csv and best.json; on a "
                        "cluster, a folder every node mounts (URIs such as s3:// are not "
                        "supported)")
    p.add_argument("--name", default="sweep",
                   help="the experiment's name: the same name in the same storage resumes it")
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="a running Ray cluster (ray://host:10001, or host:6379 on one of its "
                        "nodes); default: $RAY_ADDRESS, else a local Ray for this sweep")
    p.add_argument("--max-failures", type=non_negative_int, default=2,
                   help="restarts of a trial whose process dies, each from its last checkpoint")
    p.add_argument("--grace-period", type=positive_int, default=1, metavar="EPOCHS",
                   help="epochs every trial runs before ASHA may stop it")
    if "--" in argv:
        cut = argv.index("--")
        own, train_flags = argv[:cut], argv[cut + 1:]
    else:
        own, train_flags = argv, []
    args = p.parse_args(own)
    if not train_flags:
        p.error("give the training flags after --, with --val-split (e.g. -- --dataset "
                "fashion-mnist --val-split 10000)")
    args.train_flags = train_flags
    return args


def show(rows, dimensions, best):
    """Print the trials as a table, best validation accuracy first."""
    table = Table(title=f"{len(rows)} trials, by validation accuracy")
    for col in ("trial", *(d.flag for d in dimensions), "val accuracy", "epochs", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    ordered = sorted(rows, key=lambda r: -r.val_accuracy if not math.isnan(r.val_accuracy)
                     else math.inf)
    shown = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    for row in ordered:
        table.add_row(row.trial_id, *(shown(row.values[d.flag]) for d in dimensions),
                      "-" if math.isnan(row.val_accuracy) else f"{row.val_accuracy:.2%}",
                      str(row.epochs), row.status + (", best" if row is best else ""),
                      style="bold" if row is best else None)
    console.print(table)


def main(argv=None):
    args = parse_args(argv)
    try:
        dimensions = read_space(args.space)
        rows = sweep(dimensions, args.train_flags, trials=args.trials,
                     cpus_per_trial=args.cpus_per_trial, storage=args.storage, name=args.name,
                     address=args.address, max_failures=args.max_failures,
                     grace_period=args.grace_period)
    except SweepError as err:
        fail(str(err))
    storage = Path(args.storage)
    best = best_trial(rows)
    show(rows, dimensions, best)
    console.print(f"trials: {storage / 'trials.csv'}")
    if best is not None:
        console.print(f"best: trial {best.trial_id}, validation accuracy {best.val_accuracy:.2%} "
                      f"with " + ", ".join(f"{k} {v}" for k, v in best.values.items())
                      + f"; its best checkpoint is {storage / 'best.json'}")
    if any(r.status == "unfinished" for r in rows):
        console.print(f"interrupted: run the same command again to resume "
                      f"({storage / args.name})")
        sys.exit(EXIT_INTERRUPTED)
    if best is None:
        fail("no trial finished an epoch; see the errors above", code=1)
