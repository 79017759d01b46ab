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

from .fusion import chain, plan_fusion
from .layers import BatchNorm1D, Conv2D, Dense, Layer
from .layers.dense import DenseStack

#: Layers whose weight is (out channels, ...) and bias (out channels,).
FOLDS_A_NORM = (Conv2D, Dense)


class InferenceLayers:
    """The layer list ``predict`` runs: every Conv2D/Dense followed by a
    BatchNorm replaced by a copy of it (its own parameters and buffers) that
    computes both, the BatchNorm dropped; the fusion pass over the result
    (``nnjit.fusion``); layers that are the identity at inference (Dropout)
    skipped; then each run of Dense layers (with only fused or skipped layers
    between them) replaced by one ``DenseStack``. With ``fold`` False (the
    reference path: fusion turned off) the layers as they are, none skipped
    but the identities.

    ``layers`` and ``skipped`` (indices) are what the container runs, after
    ``fusion.apply()``; :meth:`refresh` recomputes the copies' weights from the
    originals and the norms' current statistics, so call it before each
    inference call.
    """

    def __init__(self, layers: list[Layer], fold: bool = True):
        self.pairs: list[tuple[Layer, BatchNorm1D, Layer]] = []
        self.layers: list[Layer] = []
        #: For each entry of ``layers``, the indices of the given layers it computes.
        self.sources: list[tuple[int, ...]] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if fold and isinstance(layer, FOLDS_A_NORM) and isinstance(following, BatchNorm1D) \
                    and following.num_features == layer.weight.shape[0]:
                copy = type(layer)(**layer.config(), dtype=layer.dtype)
                self.pairs.append((layer, following, copy))
                self.layers.append(copy)
                self.sources.append((i, i + 1))
                i += 2
            else:
                self.layers.append(layer)
                self.sources.append((i,))
                i += 1
        self.fusion = plan_fusion(chain(self.layers), (len(self.layers) - 1,), training=False,
                                  enabled=fold)
        self.skipped = set(self.fusion.absorbed)
        self.skipped.update(i for i, layer in enumerate(self.layers) if layer.identity_at_inference())
        if fold:
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
