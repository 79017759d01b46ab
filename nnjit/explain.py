"""``nnjit.explain``: how each layer of a model runs, and why."""
from __future__ import annotations

from dataclasses import dataclass

from . import planner


@dataclass
class Step:
    """One layer's line: ``index`` in the model, ``layer`` (its repr), ``output``
    (one sample's shape), ``runs`` (the algorithm, or how the layer is absorbed),
    ``rule`` (why), ``threads``, ``workspace`` (bytes of scratch), ``flops``
    (forward, for the whole batch; None where negligible)."""

    index: int
    layer: str
    output: tuple[int, ...]
    runs: str
    rule: str
    threads: int
    workspace: int
    flops: int | None


class Explanation(list):
    """The :class:`Step` of every layer, in order; ``str()`` is a table."""

    def __init__(self, steps, input_shape, batch, training):
        super().__init__(steps)
        self.input_shape, self.batch, self.training = input_shape, batch, training

    def __str__(self):
        host = planner.host()
        head = (f"{'training' if self.training else 'inference'} on {self.batch} x "
                f"{tuple(self.input_shape)}; host: AVX-512 tiles {host.tiles}, BLAS AVX-512 "
                f"kernels {host.blas_avx512}, {host.cores} cores")
        rows = [("#", "layer", "output", "runs", "threads", "workspace", "MFLOP", "why")]
        for s in self:
            rows.append((str(s.index), s.layer, "x".join(map(str, s.output)), s.runs,
                         str(s.threads), _bytes(s.workspace),
                         "" if s.flops is None else f"{s.flops / 1e6:.1f}", s.rule))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                          for r in rows]
        return "\n".join(line.rstrip() for line in lines)


def _bytes(n: int) -> str:
    if n == 0:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def explain(model, input_shape, training: bool = False, batch: int = 1) -> Explanation:
    """How ``model`` runs a batch of ``batch`` samples of ``input_shape`` (C, H, W):
    per layer, the algorithm the planner chose and the rule that chose it, the
    threads its kernel splits into, its scratch workspace and its forward FLOPs;
    layers whose work another does say which (fused into a conv's epilogue,
    folded into the layer before, skipped at inference). Runs nothing.

    Raises ValueError naming the first layer that does not fit ``input_shape``,
    and PlanError where an algorithm forced by ``nnjit.using`` cannot run a conv.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    summary = model.summary(input_shape)
    training_plan, inference = model._pass()
    in_shapes = model.input_shapes(input_shape)
    if training:
        executing = [(i, layer, (i,)) for i, layer in enumerate(model.layers)]
        absorbed, heads, skipped = training_plan.absorbed, training_plan.heads, set()
        training_plan.apply()
    else:
        executing = [(i, layer, sources) for i, (layer, sources)
                     in enumerate(zip(inference.layers, inference.sources))]
        absorbed, heads = inference.fusion.absorbed, inference.fusion.heads
        skipped = inference.skipped - absorbed
        inference.fusion.apply()
    try:
        steps = []
        for i, layer, sources in executing:
            first = sources[0]
            in_shape = (batch, *in_shapes[first])
            for j in sources:
                original = model.layers[j]
                out = summary[j][1]
                if i in absorbed:
                    head = executing[heads[i]][2][0]
                    steps.append(Step(j, summary[j][0], out, f"fused into {head}",
                                      "an epilogue of the layer's output pass", 0, 0, None))
                elif j != first:
                    steps.append(Step(j, summary[j][0], out, f"folded into {first}",
                                      "its affine map folded into the weights", 0, 0, None))
                elif i in skipped:
                    what = "in a Dense stack" if not original.identity_at_inference() \
                        else "skipped"
                    rule = ("consecutive Dense layers run as one kernel" if what != "skipped"
                            else "the identity at inference")
                    steps.append(Step(j, summary[j][0], out, what, rule, 0, 0, None))
                elif hasattr(layer, "describe"):
                    d = layer.describe(in_shape, training)
                    steps.append(Step(j, summary[j][0], out, d["algorithm"], d["rule"],
                                      d["threads"], d["workspace"], d["flops"]))
                else:
                    steps.append(Step(j, summary[j][0], out, "kernel", "its own kernel", 1, 0,
                                      None))
    finally:
        training_plan.apply()
    return Explanation(steps, input_shape, batch, training)
