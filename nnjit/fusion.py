"""The fusion pass: which layers' output passes take over the layers after them.

Layers know nothing of their neighbours. This pass walks a graph of layers
(nodes with inputs; a ``Sequential`` is the chain case) and gives each layer
that can apply post-ops (oneDNN's word) the ones that follow it: a conv then
applies bias, ReLU and max-pool in the pass that moves its product out, and
the ReLU and pool layers are not run. The pass is made once per model and
mode (training and inference differ: at inference a batch norm folds into the
conv before it, ``nnjit.folding``), and :meth:`FusionPlan.apply` hands each
layer its epilogue before a pass runs, since one layer object serves both.

To fuse a new pattern, add the head's layer type and the post-ops its
kernels apply to ``POST_OPS`` and give the layer a ``set_epilogue`` that
takes them (keyword arguments named after the post-ops).

At inference a residual sum is fused too: an ``Add`` of two tensors, one the
output of a Conv2D that nothing else reads, the other computed before that
conv, runs inside the conv's output pass (``add``: the container hands the
conv the other tensor, which its output pass adds, then the ReLU after the
Add, ``add_relu``). Training keeps the Add: its backward routes the gradient
to both branches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .graph import MODEL_INPUT
from .layers import Add, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Layer, MaxPool2D, ReLU

#: Layer type -> the post-ops its output pass applies, in the order they may
#: follow it (each optional): (keyword of ``set_epilogue``, layer type). The
#: measurements: conv -> ReLU -> max-pool as one pass (the cnn's convs 12.4 ->
#: 9.1 and 55.3 -> 49.1 ms per 1000 images); norm -> ReLU -> max-pool writing
#: only the pooled output (cnn-bn's first block 2.5 -> 1.3 ms fwd+bwd at batch 64);
#: a residual sum then ReLU as one pass over the block's output.
POST_OPS: dict[type, tuple[tuple[str, type], ...]] = {
    Conv2D: (("relu", ReLU), ("pool", MaxPool2D)),
    BatchNorm2D: (("relu", ReLU), ("pool", MaxPool2D)),
    BatchNorm1D: (("relu", ReLU),),
    Dense: (("relu", ReLU),),
    Add: (("relu", ReLU),),
}


def post_ops(layer) -> tuple[tuple[str, type], ...] | None:
    """The post-ops ``layer``'s type applies (its most derived entry of POST_OPS),
    those of them the layer takes (``post_op_names()``, where it says), or None
    when it takes none."""
    for cls in type(layer).__mro__:
        if cls in POST_OPS:
            taken = layer.post_op_names() if hasattr(layer, "post_op_names") else None
            return tuple(op for op in POST_OPS[cls] if taken is None or op[0] in taken)
    return None


@dataclass
class Node:
    """A layer of a graph and the indices of the nodes whose outputs it reads
    (``MODEL_INPUT``: the graph's input)."""

    layer: Layer
    inputs: tuple[int, ...]


def chain(layers) -> list[Node]:
    """The nodes of a straight stack: each reads the one before it (the first,
    the graph's input)."""
    return [Node(layer, (i - 1,)) for i, layer in enumerate(layers)]


@dataclass
class FusionPlan:
    """What the pass decided for one graph and mode.

    epilogues: for every node whose layer takes post-ops, (its index, keyword
    arguments of its ``set_epilogue``), empty ones included (the layer may
    hold another mode's). absorbed: indices of nodes whose work another
    node's epilogue does; the container does not run them (each passes on its
    head's output). heads: absorbed node -> the node that does its work.
    residuals: a head whose epilogue adds a residual -> the node whose output
    it adds (``MODEL_INPUT``: the graph's input), which the container passes it.
    """

    epilogues: list[tuple[int, dict]] = field(default_factory=list)
    absorbed: set[int] = field(default_factory=set)
    heads: dict[int, int] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    residuals: dict[int, int] = field(default_factory=dict)

    def apply(self) -> None:
        """Give each layer its epilogue of this plan (a few attribute sets)."""
        nodes = self.nodes
        for i, epilogue in self.epilogues:
            nodes[i].layer.set_epilogue(**epilogue)


def plan_fusion(nodes: list[Node], outputs: tuple[int, ...], training: bool,
                enabled: bool = True) -> FusionPlan:
    """Fuse ``nodes`` (in an order where inputs come first; ``outputs``: indices
    whose values leave the graph).

    A node is absorbed into the head before it when it is the next post-op the
    head's type applies, reads only the head's current output, and that output
    has no other reader and does not leave the graph. In training, a
    BatchNorm2D with a max-pool in its epilogue whose input is a Conv2D with an
    empty epilogue hands its input gradient back unevaluated
    (``PooledNormGrad``): the conv evaluates it while it reads it anyway.
    ``enabled`` False: every epilogue empty, nothing absorbed (the reference).
    """
    readers = [0] * len(nodes)
    for node in nodes:
        for j in node.inputs:
            if j != MODEL_INPUT:
                readers[j] += 1
    leaving = set(outputs)
    plan = FusionPlan(nodes=nodes)
    epilogue_of: dict[int, dict] = {}
    for i, node in enumerate(nodes):
        ops = post_ops(node.layer)
        if ops is None:
            continue
        epilogue = {name: (False if name == "relu" else None) for name, _ in ops}
        epilogue_of[i] = epilogue
        plan.epilogues.append((i, epilogue))
        if not enabled or i in plan.absorbed:
            continue
        tail, step = i, 0
        while step < len(ops) and readers[tail] == 1 and tail not in leaving:
            nxt = next((j for j in range(tail + 1, len(nodes)) if tail in nodes[j].inputs), None)
            if nxt is None or nodes[nxt].inputs != (tail,):
                break
            # Post-ops are optional: skip those the next node is not (a pool
            # straight after a conv leaves the ReLU out).
            while step < len(ops) and type(nodes[nxt].layer) is not ops[step][1]:
                step += 1
            if step == len(ops) or any(getattr(nodes[nxt].layer, "padding", ())):
                break  # (the output passes pool without padding only)
            name = ops[step][0]
            epilogue[name] = True if name == "relu" else nodes[nxt].layer
            plan.absorbed.add(nxt)
            plan.heads[nxt] = i
            tail, step = nxt, step + 1
    if enabled and not training:
        _fuse_residual_sums(plan, epilogue_of, readers, leaving)
    if enabled and training:
        for i, epilogue in epilogue_of.items():
            layer = nodes[i].layer
            if isinstance(layer, BatchNorm2D) and epilogue.get("pool") is not None \
                    and len(nodes[i].inputs) == 1:
                producer = nodes[i].inputs[0]
                if producer != MODEL_INPUT and isinstance(nodes[producer].layer, Conv2D) \
                        and producer not in plan.absorbed \
                        and epilogue_of[producer] == {"relu": False, "pool": None} \
                        and readers[producer] == 1:
                    epilogue["hand_back"] = True
    for i, epilogue in epilogue_of.items():
        if isinstance(nodes[i].layer, BatchNorm2D):
            epilogue.setdefault("hand_back", False)
    return plan


def _fuse_residual_sums(plan: FusionPlan, epilogue_of: dict[int, dict], readers: list[int],
                        leaving: set[int]) -> None:
    """Absorb each Add of two tensors into the Conv2D that computes one of them,
    where that conv's output is read by the Add alone, has nothing fused after
    it, and the other tensor is computed before it (of two such convs, the
    later); the Add's fused ReLU moves to the conv (``add_relu``)."""
    nodes = plan.nodes
    for a, node in enumerate(nodes):
        if not isinstance(node.layer, Add) or len(node.inputs) != 2 or a in plan.absorbed \
                or node.inputs[0] == node.inputs[1]:
            continue
        candidates = [h for h in node.inputs if h != MODEL_INPUT
                      and isinstance(nodes[h].layer, Conv2D) and h not in plan.absorbed
                      and readers[h] == 1 and h not in leaving
                      and epilogue_of.get(h) == {"relu": False, "pool": None}]
        head = max(candidates, default=None)
        if head is None:
            continue
        other = node.inputs[1] if node.inputs[0] == head else node.inputs[0]
        if other > head:  # not computed yet when the conv runs
            continue
        relu = bool(epilogue_of[a].get("relu"))
        epilogue_of[head].update(add=True, add_relu=relu)
        plan.residuals[head] = other
        plan.absorbed.add(a)
        plan.heads[a] = head
        for absorbed, h in list(plan.heads.items()):
            if h == a:  # the ReLU the Add had taken
                plan.heads[absorbed] = head
    for i, epilogue in epilogue_of.items():
        if isinstance(nodes[i].layer, Conv2D):
            epilogue.setdefault("add", False)
            epilogue.setdefault("add_relu", False)
