"""The layer list inference runs: batch norms folded away, Dense layers stacked.

At inference a BatchNorm is an affine map per channel, y = x * scale + shift
with scale = weight / sqrt(running_var + eps), shift = bias - running_mean *
scale. After a Conv2D or Dense (whose weight has the output channel on axis 0)
it folds into that layer's weight and bias, so ``predict`` runs the layer
once, with any ReLU and max-pool after the norm fused into its output pass,
and the norm not at all. Dropout is skipped, and consecutive Dense layers
then run as one ``DenseStack``.
"""
from __future__ import annotations

from .layers import BatchNorm1D, Conv2D, Dense, Layer
from .layers.dense import DenseStack

#: Layers whose weight is (out channels, ...) and bias (out channels,).
FOLDS_A_NORM = (Conv2D, Dense)


def fuse_layers(layers: list[Layer]) -> set[int]:
    """Let each layer take over the ones after it it can fuse (``Layer.fuse_next``),
    then tell each layer that still runs which one runs before it (``Layer.follows``);
    return the indices of the layers taken over, which a container skips."""
    for layer in layers:
        layer.unfuse()
    taken, i = set(), 0
    while i < len(layers):
        j = i + 1
        while j < len(layers) and layers[i].fuse_next(layers[j]):
            taken.add(j)
            j += 1
        i = j
    running = [layer for i, layer in enumerate(layers) if i not in taken]
    for previous, layer in zip(running, running[1:]):
        layer.follows(previous)
    return taken


class InferenceLayers:
    """The layer list ``predict`` runs: every Conv2D/Dense followed by a
    BatchNorm replaced by a copy of it (its own parameters and buffers) that
    computes both, the BatchNorm dropped; layers that are the identity at
    inference (Dropout) skipped; then each run of Dense layers (with only
    fused or skipped layers between them) replaced by one ``DenseStack``.

    ``layers`` and ``skipped`` (fused indices) are what the container runs;
    :meth:`refresh` recomputes the copies' weights from the originals and the
    norms' current statistics, so call it before each inference call.
    """

    def __init__(self, layers: list[Layer]):
        self.pairs: list[tuple[Layer, BatchNorm1D, Layer]] = []
        self.layers: list[Layer] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, FOLDS_A_NORM) and isinstance(following, BatchNorm1D) \
                    and following.num_features == layer.weight.shape[0]:
                copy = type(layer)(**layer.config(), dtype=layer.dtype)
                self.pairs.append((layer, following, copy))
                self.layers.append(copy)
                i += 2
            else:
                self.layers.append(layer)
                i += 1
        # Layers shared with the training list meet the same successors here
        # (only a Conv2D/Dense's successor changes, and those are copies), so
        # fusing this list leaves their fusion state as the training list set it.
        self.skipped = fuse_layers(self.layers)
        self.skipped.update(i for i, layer in enumerate(self.layers) if layer.identity_at_inference())
        self._stack_dense_runs()

    def _stack_dense_runs(self) -> None:
        running = [i for i in range(len(self.layers)) if i not in self.skipped]
        runs, run = [], []
        for i in running:
            layer = self.layers[i]
            if isinstance(layer, Dense) and (not run or layer.dtype == self.layers[run[0]].dtype):
                run.append(i)
                continue
            runs.append(run)
            run = [i] if isinstance(layer, Dense) else []
        runs.append(run)
        for run in (r for r in runs if len(r) > 1):
            self.layers[run[0]] = DenseStack([self.layers[i] for i in run])
            self.skipped.update(run[1:])

    def refresh(self) -> None:
        """Fold each norm's current statistics into its copy's weight and bias."""
        for source, norm, copy in self.pairs:
            scale, shift = norm.inference_affine()
            axes = (-1,) + (1,) * (source.weight.value.ndim - 1)
            copy.weight.value[...] = source.weight.value * scale.reshape(axes)
            copy.bias.value[...] = source.bias.value * scale + shift
