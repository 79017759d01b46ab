"""What ``fit`` shows while it trains: a bar per epoch and one line after it."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .callbacks import Callback


def compile_with_progress(work, show: bool = True, console=None) -> int:
    """``nnjit.compile_ahead(work)``, showing "compiling kernels (first run only)
    N of M" while the workers compile, when ``show`` and the console shows
    bars; nothing at all when the kernel cache already holds everything.
    Returns what compile_ahead returns (signatures given to the workers)."""
    from .cli import console as default_console
    from .kernels.precompile import compile_ahead

    console = console or default_console
    if not (show and (console.is_terminal or console.is_jupyter)):
        return compile_ahead(work)
    bar = Progress(TextColumn("compiling kernels (first run only, then cached)"), BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = None

    def on_progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("", total=total)
        bar.update(task, completed=done)

    try:
        return compile_ahead(work, on_progress=on_progress)
    finally:
        bar.stop()


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, images_per_second: float) -> str:
    """``epoch 3/10  train loss 0.2817  val loss ... val accuracy ...  test loss ...
    test accuracy ...  4.1s  9,390 img/s`` for an epoch (from 0) and its logs:
    the validation and test figures where the logs hold them."""
    parts = [f"epoch {epoch + 1}/{epochs}", f"train loss {logs['loss']:.4f}"]
    for prefix, name in (("val", "val"), ("test", "test")):
        if logs.get(f"{prefix}_loss") is not None:
            parts += [f"{name} loss {logs[f'{prefix}_loss']:.4f}",
                      f"{name} accuracy {logs[f'{prefix}_accuracy']:.2%}"]
    return "  ".join(parts + [f"{seconds:.1f}s", f"{images_per_second:,.0f} img/s"])


class ProgressBar(Callback):
    """A bar of the epoch's batches (loss, running accuracy, img/s, time left)
    when ``bar`` and the console shows one (a terminal or Jupyter), then the
    epoch's line (``epoch_line``) when ``lines``."""

    def __init__(self, bar: bool = True, lines: bool = True, console=None):
        from .cli import console as default_console
        self.console = console or default_console
        self.bar = bar and (self.console.is_terminal or self.console.is_jupyter)
        self.lines = lines
        self._progress = self._task = None

    def on_epoch_begin(self, epoch, logs=None):
        if not self.bar:
            return
        columns = [TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                              "{task.fields[ips]:,.0f} img/s"), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("", total=self.params["steps"],
                                             epoch=f"{epoch + 1}/{self.params['epochs']}",
                                             loss=float("nan"), acc=0.0, ips=0.0)

    def on_batch_end(self, batch, logs=None):
        if self._progress is not None:
            self._progress.update(self._task, completed=batch + 1, loss=logs["loss"],
                                  acc=logs.get("accuracy", 0.0),
                                  ips=logs.get("images_per_second", 0.0))

    def close(self):
        """Stop the live bar, if one is shown."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_epoch_end(self, epoch, logs=None):
        self.close()
        if self.lines:
            r = self.epoch_result
            self.console.print(epoch_line(epoch, self.params["epochs"], logs, r.seconds,
                                          r.images_per_second))

    def on_train_end(self, logs=None):
        self.close()
