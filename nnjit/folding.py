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

import numpy as np

from .fusion import Node, plan_fusion
from .graph import MODEL_INPUT
from .kernels.batchnorm import fold_batchnorm
from .layers import BatchNorm1D, Conv2D, Dense, Layer
from .layers.dense import DenseStack

#: Layers whose weight is (out channels, ...) and bias (out channels,).
FOLDS_A_NORM = (Conv2D, Dense)


class InferenceLayers:
    """The graph ``predict`` runs: every Conv2D/Dense whose output only a
    BatchNorm reads replaced by a copy of it (its own parameters and buffers)
    that computes both, the BatchNorm dropped (what read the norm reads the
    copy); the fusion pass over the result (``nnjit.fusion``); layers that are
    the identity at inference (Dropout) skipped; then each chain of Dense layers
    (with only fused or skipped layers between them, each output read once)
    replaced by one ``DenseStack``. With ``fold`` False (the reference path:
    fusion turned off) the layers as they are, none skipped but the identities.

    ``nodes`` (layers with the indices they read) and ``skipped`` (indices:
    they pass their input on) are what the model runs, after
    ``fusion.apply()``; ``layers`` the nodes' layers; ``sources[i]`` the
    indices of the given nodes that node i computes. :meth:`refresh`
    recomputes the copies' weights from the originals and the norms' current
    statistics, so call it before each inference call. A conv copy that Winograd
    may run takes the norm's scale instead (``Conv2D.take_norm_scale``): its
    weight is then scaled in its own call, where Winograd reads it anyway.
    """

    def __init__(self, nodes: list[Node], fold: bool = True):
        self.pairs: list[tuple[Layer, BatchNorm1D, Layer]] = []
        # per pair: where its fold writes the norm's scale, and whether the copy
        # scales its weight itself
        self._folds: list[tuple[np.ndarray, bool]] = []
        self.nodes: list[Node] = []
        self.sources: list[tuple[int, ...]] = []
        readers = _readers(nodes)
        moved = {MODEL_INPUT: MODEL_INPUT}  # given index -> index in self.nodes
        folded: dict[int, int] = {}  # a folded norm -> the layer it folds into
        for i, node in enumerate(nodes):
            if i in folded:
                moved[i] = moved[folded[i]]
                continue
            layer, source = node.layer, (i,)
            norm = _norm_to_fold(nodes, readers, i) if fold else None
            if norm is not None:
                # With a bias of its own (the default): the norm's shift goes there.
                config = layer.config()
                config.pop("bias", None)
                copy = type(layer)(**config, dtype=layer.dtype)
                self.pairs.append((layer, nodes[norm].layer, copy))
                by_copy = isinstance(copy, Conv2D) and copy.may_run_winograd()
                self._folds.append(
                    (copy.take_norm_scale(layer), True) if by_copy else
                    (np.empty(layer.weight.shape[0], layer.dtype), False))
                folded[norm] = i
                layer, source = copy, (i, norm)
            self.nodes.append(Node(layer, tuple(moved[j] for j in node.inputs)))
            self.sources.append(source)
            moved[i] = len(self.nodes) - 1
        self.layers = [node.layer for node in self.nodes]
        # Its own list: stacking replaces entries of self.nodes, while the plan
        # keeps giving epilogues to the Dense layers a stack reads.
        self.fusion = plan_fusion(list(self.nodes), (len(self.nodes) - 1,), training=False,
                                  enabled=fold)
        self.skipped = set(self.fusion.absorbed)
        self.skipped.update(i for i, layer in enumerate(self.layers)
                            if layer.identity_at_inference())
        if fold:
            self._stack_dense_chains()

    def _stack_dense_chains(self) -> None:
        readers = _readers(self.nodes)
        chains: dict[int, list[int]] = {}  # the last Dense of a chain -> the chain
        for i, node in enumerate(self.nodes):
            if i in self.skipped or not isinstance(node.layer, Dense):
                continue
            source = node.inputs[0]
            while source != MODEL_INPUT and source in self.skipped and readers[source] == 1:
                # a skipped layer passes on its input, an absorbed one its head's output
                source = self.fusion.heads.get(source, self.nodes[source].inputs[0])
            before = chains.pop(source, None)
            if before is not None and readers[source] == 1 \
                    and node.layer.dtype == self.layers[before[0]].dtype:
                chains[i] = before + [i]
            else:
                chains[i] = [i]
                if before is not None:
                    chains[source] = before
        for run in (r for r in chains.values() if len(r) > 1):
            self.layers[run[0]] = DenseStack([self.layers[i] for i in run])
            self.nodes[run[0]] = Node(self.layers[run[0]], self.nodes[run[0]].inputs)
            self.skipped.update(run[1:])

    def refresh(self) -> None:
        """Fold each norm's current statistics into its copy's bias and weight
        (or scale, for a copy that scales its weight itself)."""
        for (source, norm, copy), (scale, by_copy) in zip(self.pairs, self._folds):
            has_bias = source.bias is not None
            fold_batchnorm(norm.weight.value, norm.bias.value, norm.running_mean,
                           norm.running_var, norm.eps, source.weight.value.reshape(-1),
                           source.bias.value if has_bias else copy.bias.value, has_bias,
                           scale, scale[:0] if by_copy else copy.weight.value.reshape(-1),
                           copy.bias.value)


def _readers(nodes: list[Node]) -> list[int]:
    """How many nodes read each node's output."""
    readers = [0] * len(nodes)
    for node in nodes:
        for j in node.inputs:
            if j != MODEL_INPUT:
                readers[j] += 1
    return readers


def _norm_to_fold(nodes: list[Node], readers: list[int], i: int) -> int | None:
    """The index of the BatchNorm that folds into node i (a Conv2D or Dense whose
    output it alone reads, over as many channels), or None."""
    layer = nodes[i].layer
    if not isinstance(layer, FOLDS_A_NORM) or readers[i] != 1:
        return None
    reader = next(k for k in range(i + 1, len(nodes)) if i in nodes[k].inputs)
    norm = nodes[reader].layer
    if isinstance(norm, BatchNorm1D) and nodes[reader].inputs == (i,) \
            and norm.num_features == layer.weight.shape[0]:
        return reader
    return None
