"""Hyperparameter sweeps over ``nnjit train``'s own flags on Ray Tune.

Each trial is an ordinary training run (``nnjit.commands.train.main``) inside a
Ray worker, in the folder Tune gives it, with the sampled flags added to the
fixed ones. After every epoch the trial reports its validation figures to Tune
with that epoch's nnjit checkpoint (``checkpoint.json`` in a Tune checkpoint);
ASHA stops the trials that trail; a trial whose worker dies is started again
from its last checkpoint (``--resume``); an interrupted sweep resumes with
``Tuner.restore``. Ray is an optional extra: ``pip install "nnjit[ray]"``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .callbacks import Callback
from .cli import EXIT_DIVERGED
from .errors import NnjitError
from .ray_cluster import start_ray

#: The nnjit checkpoint's name inside each Tune checkpoint.
CHECKPOINT_NAME = "checkpoint.json"
#: SPACE.json's distributions (each the Ray Tune function of that name) -> what they take.
DISTRIBUTIONS = {"choice": "a non-empty list of values",
                 "uniform": "[low, high], numbers with low < high",
                 "loguniform": "[low, high], numbers with 0 < low < high",
                 "randint": "[low, high], integers with low < high (high excluded, as in Ray)"}
#: Flags a trial sets itself: its folder, its threads and its resumption.
TRIAL_FLAGS = ("checkpoint-folder", "checkpoint-stride", "loss-csv-path", "plot", "resume",
               "threads", "quiet", "explain")
#: The metric trials are compared and early-stopped on (a fraction, higher is better).
METRIC = "val_accuracy"
RAY_HINT = "sweeps need Ray Tune: pip install 'nnjit[ray]'"


class SweepError(NnjitError):
    """A sweep that cannot start: a bad SPACE.json, bad fixed flags, Ray missing."""


def ray_tune():
    """Ray Tune's module; SweepError with the install command when Ray is missing."""
    try:
        from ray import tune
    except ImportError:
        raise SweepError(RAY_HINT) from None
    return tune


@dataclass(frozen=True)
class Dimension:
    """One swept flag: its long name without dashes, the distribution and its arguments."""
    flag: str
    kind: str
    args: tuple

    def domain(self):
        """The Ray Tune search domain (``tune.choice([...])`` and so on)."""
        tune = ray_tune()
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def extremes(self) -> list:
        """The values every trial's flags must accept: each choice, or both bounds."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)


def _train_parser():
    from .commands.train import build_parser

    return build_parser()


def _long_options() -> dict[str, object]:
    """train's long flag name without dashes -> its argparse action."""
    return {option[2:]: action for action in _train_parser()._actions
            for option in action.option_strings if option.startswith("--")}


def read_space(path) -> list[Dimension]:
    """The dimensions of a SPACE.json: ``{"learning-rate": {"loguniform": [0.001, 0.1]},
    "model": {"choice": ["cnn", "cnn-bn"]}, ...}``. SweepError naming the entry
    for an unknown flag, an unknown distribution or bad bounds."""
    try:
        with open(path, encoding="utf-8") as f:
            space = json.load(f)
    except OSError as err:
        raise SweepError(f"{path}: cannot read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SweepError(f"{path}: not JSON ({err})") from None
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{path}: must map flag names to distributions, e.g. "
                         '{"learning-rate": {"loguniform": [0.001, 0.1]}}')
    options = _long_options()
    dimensions = []
    for flag, spec in space.items():
        where = f"{path}: {flag!r}"
        if flag not in options or flag in TRIAL_FLAGS or flag == "help":
            why = "is set by the sweep for each trial" if flag in TRIAL_FLAGS else \
                "is not a flag of nnjit train (its long name without dashes)"
            raise SweepError(f"{where} {why}")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise SweepError(f"{where}: must be one of " + ", ".join(
                f'{{"{name}": {what}}}' for name, what in DISTRIBUTIONS.items()))
        kind, args = next(iter(spec.items()))
        dimensions.append(Dimension(flag, kind, _checked_arguments(where, kind, args)))
    return dimensions


def _checked_arguments(where, kind, args) -> tuple:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) \
        and math.isfinite(v)  # noqa: E731
    if kind == "choice":
        ok = isinstance(args, list) and len(args) > 0
    else:
        ok = isinstance(args, list) and len(args) == 2 and all(map(number, args)) \
            and args[0] < args[1] and (kind != "loguniform" or args[0] > 0) \
            and (kind != "randint" or all(isinstance(v, int) for v in args))
    if not ok:
        raise SweepError(f"{where}: {kind} takes {DISTRIBUTIONS[kind]}, got {json.dumps(args)}")
    return tuple(args)


def flag_arguments(config: dict) -> list[str]:
    """train's argv words for sampled flag values: ``--flag value`` (a list as
    several words; True/False for a switch: the flag or nothing)."""
    words = []
    for flag, value in config.items():
        if isinstance(value, bool):
            words += [f"--{flag}"] if value else []
        elif isinstance(value, list):
            words += [f"--{flag}", *map(str, value)]
        else:
            words += [f"--{flag}", repr(value) if isinstance(value, float) else str(value)]
    return words


def _parse_train_flags(argv: list[str], what: str):
    """train's parsed flags for ``argv``; SweepError with argparse's message."""
    from .commands.train import parse_args

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_args(argv)
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        message = lines[-1].split("error: ", 1)[-1] if lines else "not accepted"
        raise SweepError(f"{what}: {message}") from None


def check_flags(fixed: list[str], dimensions: list[Dimension], root: str | os.PathLike):
    """The fixed train flags with their paths made absolute against ``root``
    (trials run in their own folders), after checking that they parse, hold
    ``--val-split`` and none of the flags the sweep sets, and that every swept
    value parses with them. Returns (fixed flags, their parsed args)."""
    names = {d.flag for d in dimensions}
    # --flag=value as two words, so that paths given either way are found below
    fixed = [part for word in fixed for part in
             (word.split("=", 1) if word.startswith("--") and "=" in word else [word])]
    for word in fixed:
        name = word[2:] if word.startswith("--") else None
        if name in TRIAL_FLAGS:
            raise SweepError(f"--{name} is set by the sweep for each trial; leave it out of the "
                             "flags after --")
        if name in names:
            raise SweepError(f"--{name} is both swept (SPACE.json) and fixed (after --)")
    args = _parse_train_flags(fixed, "the flags after --")
    if args.val_split is None:
        raise SweepError("the flags after -- must include --val-split N|FRACTION: trials are "
                         "compared on validation accuracy, never on the test set")
    for d in dimensions:
        for value in d.extremes():
            _parse_train_flags(fixed + flag_arguments({d.flag: value}),
                               f"{d.flag} = {json.dumps(value)}")
    root = Path(root)
    if args.train_data_dir is None:
        fixed += ["--train-data-dir", str(root / "data")]
    for i, word in enumerate(fixed[:-1]):
        value = fixed[i + 1]
        if word == "--train-data-dir" or (word == "--dataset" and (root / value).exists()):
            fixed[i + 1] = str((root / value).resolve())
    return fixed, args


class ReportToTune(Callback):
    """Reports each epoch's figures to Tune with the checkpoint the run has just
    written (``latest.json`` of ``folder``, linked into a Tune checkpoint)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        tune = ray_tune()
        metrics = {"epoch": epoch + 1, "nb_epochs": self.params["epochs"],
                   **{k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}}
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".tune-") as staging:
            target = Path(staging) / CHECKPOINT_NAME
            try:
                os.link(self.folder / "latest.json", target)
            except OSError:
                shutil.copyfile(self.folder / "latest.json", target)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(staging))


def run_trial(config: dict, fixed: list[str], cpus: int, callbacks=()) -> None:
    """Ray Tune's function trainable: one ``nnjit train`` run with ``fixed`` +
    ``config``'s flags on ``cpus`` threads, in the trial's folder (``run-<trial id>/``),
    resumed from the trial's last Tune checkpoint when Tune restarts it.
    ``callbacks``: more fit callbacks (after the reporting one)."""
    tune = ray_tune()
    from .commands import train

    # Tune runs each trial in its own working folder; the id keeps trials apart
    # even where it does not (RAY_CHDIR_TO_TRIAL_DIR=0)
    folder = Path.cwd() / f"run-{tune.get_context().get_trial_id()}"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [*fixed, *flag_arguments(config), "--checkpoint-folder", str(folder),
            "--checkpoint-stride", "1", "--threads", str(cpus), "--quiet"]
    previous = tune.get_checkpoint()
    if previous is not None:
        resumed = folder / "resumed-from.json"
        with previous.as_directory() as where:
            shutil.copyfile(Path(where) / CHECKPOINT_NAME, resumed)
        argv += ["--resume", str(resumed)]
    try:
        train.main(argv, callbacks=[ReportToTune(folder), *callbacks])
    except SystemExit as err:  # train's errors: one line printed, then its exit code
        # A diverged run ends the trial with what it reported (it would diverge
        # again from its checkpoint); anything else is an error Tune may retry.
        if err.code not in (0, None, EXIT_DIVERGED):
            raise RuntimeError(f"nnjit train {' '.join(argv)} exited with code {err.code}") \
                from None


@dataclass
class TrialRow:
    """One trial in the sweep's table: its id, swept values, best validation
    accuracy (fraction; nan before any epoch), epochs done, status, best checkpoint."""
    trial_id: str
    values: dict
    val_accuracy: float
    epochs: int
    status: str
    checkpoint: object  # the best epoch's tune.Checkpoint, or None


def trial_rows(results, dimensions: list[Dimension]) -> list[TrialRow]:
    """A row per trial of a Tune ResultGrid. status: done (all its epochs),
    stopped (by ASHA, or its loss diverged), failed (an error after its retries)
    or unfinished."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        scores = history[METRIC].dropna() if history is not None and METRIC in history else []
        best = float(scores.max()) if len(scores) else math.nan
        metrics = result.metrics or {}
        epochs, planned = int(metrics.get("epoch", 0)), metrics.get("nb_epochs")
        if result.error is not None:
            status = "failed"
        elif planned is not None and epochs >= planned:
            status = "done"
        elif metrics.get("done"):
            status = "stopped"
        else:
            status = "unfinished"
        kept = [(m.get(METRIC, -math.inf), c) for c, m in (result.best_checkpoints or [])]
        checkpoint = max(kept, key=lambda pair: pair[0])[1] if kept else None
        rows.append(TrialRow(metrics.get("trial_id") or _trial_id(result.path),
                             {d.flag: (result.config or {}).get(d.flag) for d in dimensions},
                             best, epochs, status, checkpoint))
    return rows


def _trial_id(trial_dir) -> str:
    """The trial id in the name Tune gives a trial's folder (run_trial_<id>_<index>_...,
    the id itself <experiment>_<number>): for a trial that reported nothing."""
    name = Path(trial_dir).name.removeprefix(f"{run_trial.__name__}_")
    return "_".join(name.split("_")[:2])


def write_trials_csv(path, rows: list[TrialRow], dimensions: list[Dimension]) -> None:
    """``trials.csv``: trial_id, one column per swept flag (SPACE.json's names),
    val_accuracy (the best epoch's, a fraction; empty before any epoch), status."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *(d.flag for d in dimensions), METRIC, "status"])
        for row in rows:
            writer.writerow([row.trial_id, *(row.values[d.flag] for d in dimensions),
                             "" if math.isnan(row.val_accuracy) else repr(row.val_accuracy),
                             row.status])
    os.replace(tmp, path)


def best_trial(rows: list[TrialRow]) -> TrialRow | None:
    """The trial with the best validation accuracy and a checkpoint, or None."""
    ranked = [r for r in rows if r.checkpoint is not None and not math.isnan(r.val_accuracy)]
    return max(ranked, key=lambda r: r.val_accuracy) if ranked else None


def copy_checkpoint(row: TrialRow, path) -> None:
    """Copy ``row``'s best checkpoint to ``path``: an nnjit checkpoint, as infer.py takes."""
    tmp = Path(f"{path}.tmp")
    with row.checkpoint.as_directory() as where:
        shutil.copyfile(Path(where) / CHECKPOINT_NAME, tmp)
    os.replace(tmp, path)


def sweep(space, train_flags: list[str], *, trials: int, cpus_per_trial: int = 1,
          storage="sweeps", name: str = "sweep", address: str | None = None,
          max_failures: int = 2, grace_period: int = 1, callbacks=(),
          verbose: int = 1) -> list[TrialRow]:
    """Search ``space`` (a SPACE.json path, or the dimensions ``read_space`` gives)
    with ``trials`` training runs of ``nnjit train train_flags + sampled flags``
    on Ray Tune, ``cpus_per_trial`` CPUs (and kernel threads) each; ASHA stops
    trailing trials after ``grace_period`` epochs; a dead trial restarts from its
    last checkpoint up to ``max_failures`` times.

    The experiment lives in ``storage/name`` (a sweep found there unfinished is
    resumed with ``Tuner.restore``); ``trials.csv`` and ``best.json`` (the best
    trial's best checkpoint) are written in ``storage``. ``address``: a Ray
    cluster's (default: the one ray.init finds, else a local Ray started and
    shut down here). ``callbacks``: fit callbacks added to every trial. Returns
    one TrialRow per trial.
    """
    tune = ray_tune()
    import ray
    from ray.tune.schedulers import ASHAScheduler

    dimensions = read_space(space) if isinstance(space, (str, os.PathLike)) else list(space)
    fixed, args = check_flags(list(train_flags), dimensions, Path.cwd())
    if "://" in str(storage):
        raise SweepError(f"--storage {storage}: give a folder (on a cluster, one every node "
                         "mounts); URIs such as s3:// are not supported")
    storage = Path(storage).resolve()  # Tune takes an absolute path
    storage.mkdir(parents=True, exist_ok=True)
    experiment = str(storage / name)
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(address, log_to_driver=verbose > 0)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, fixed=fixed, cpus=cpus_per_trial,
                                 callbacks=list(callbacks)), {"cpu": cpus_per_trial})
        if tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
        else:
            epochs = [v for d in dimensions if d.flag == "nb-epochs" for v in d.extremes()]
            scheduler = ASHAScheduler(max_t=max(epochs or [args.nb_epochs]),
                                      grace_period=grace_period, reduction_factor=2)
            tuner = tune.Tuner(
                trainable, param_space={d.flag: d.domain() for d in dimensions},
                tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=trials,
                                            scheduler=scheduler),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=1, checkpoint_score_attribute=METRIC,
                        checkpoint_score_order="max")))
        rows = trial_rows(tuner.fit(), dimensions)
        write_trials_csv(storage / "trials.csv", rows, dimensions)
        best = best_trial(rows)
        if best is not None:
            copy_checkpoint(best, storage / "best.json")
        return rows
    finally:
        if started_here:
            ray.shutdown()
