"""A PNG of the loss and accuracy curves of a training CSV (needs matplotlib)."""
from __future__ import annotations

import math

from .trainer import read_loss_log

INSTALL_HINT = "plots need matplotlib: pip install 'nnjit[plot]'"


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_loss_log(csv_path, png_path, title: str = "") -> None:
    """Draw train/validation/test loss and accuracy per epoch from ``csv_path`` into ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    log = read_loss_log(csv_path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(log["epoch"], log["train_loss"], "o-", label="train")
    has_val = not all(math.isnan(v) for v in log["val_loss"])
    if has_val:
        ax_loss.plot(log["epoch"], log["val_loss"], "o-", label="validation")
        ax_acc.plot(log["epoch"], [100 * a for a in log["val_accuracy"]], "o-", label="validation")
    ax_loss.plot(log["epoch"], log["test_loss"], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(log["epoch"], [100 * a for a in log["test_accuracy"]], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
