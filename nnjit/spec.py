"""Models from a compact text spec, and the named presets.

A spec is comma-separated layers; channel and feature counts coming in are
inferred from the input shape:

- ``conv:OC:K[:S[:P]]``  Conv2D with OC output channels, kernel K, stride S, padding P
  (P may be ``same``; ``conv:OC:K:same`` is stride 1 with "same" padding)
- ``pool:K[:S]``         MaxPool2D
- ``avgpool:K[:S]``      AvgPool2D
- ``gap``                GlobalAvgPool2D ((C, H, W) -> (C,): a dense may follow directly)
- ``dropout:P``          Dropout with probability P (a number in [0, 1))
- ``bn``                 BatchNorm2D on images, BatchNorm1D on features
- ``dense:N``            Dense with N outputs (a Flatten is inserted before it on image input)
- ``relu``, ``flatten``, ``softmax``
"""
from __future__ import annotations

import math

from .errors import SpecError
from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, MaxPool2D, ReLU, Softmax)
from .model import Sequential

#: Most parameter and buffer values a spec may build (1 GiB of float32):
#: a larger request is refused before anything is allocated.
MAX_VALUES = 1 << 28

#: Named networks; ``{classes}`` becomes the dataset's class count.
PRESETS = {
    "cnn": "conv:32:3,relu,pool:2,conv:64:3,relu,pool:2,flatten,dense:{classes},softmax",
    "mlp": "flatten,dense:128,relu,dense:{classes},softmax",
    "cnn-bn": "conv:24:3:same,bn,relu,pool:2,conv:48:3,bn,relu,pool:2,dropout:0.1,"
              "dense:{classes},softmax",
}

SPEC_HELP = ("conv:OC:K[:S[:P]] (P may be 'same'; conv:OC:K:same), pool:K[:S], avgpool:K[:S], "
             "gap, dropout:P, bn, dense:N, relu, flatten, softmax "
             "(comma-separated), or a preset: " + ", ".join(PRESETS))


def _ints(token: str, args: list[str], low: int, high: int) -> list[int]:
    if not low <= len(args) <= high:
        raise ValueError(f"{token!r} takes {low} to {high} numbers")
    try:
        return [int(a) for a in args]
    except ValueError:
        raise ValueError(f"{token!r}: {args} are not all integers") from None


def build_model(spec: str, input_shape=(1, 28, 28), seed: int | None = None,
                num_classes: int = 10) -> Sequential:
    """Build a Sequential from a preset name or a spec string.

    input_shape: one sample's shape (C, H, W); a preset ends in ``num_classes``
    outputs (a spec is taken literally). Raises ValueError naming the first
    token that is unknown, malformed or does not fit its input.
    """
    text = PRESETS[spec].format(classes=num_classes) if spec in PRESETS else spec
    shape = tuple(input_shape)
    layers = []
    total = [0]

    def make(layer_type, **config):
        """The layer, once its arrays are known to fit in MAX_VALUES with the rest."""
        total[0] += sum(math.prod(s) for s in layer_type.array_shapes(**config).values())
        if total[0] > MAX_VALUES:
            raise ValueError(f"the model would hold {total[0]:,} parameter and buffer values "
                             f"by this layer, over the limit of {MAX_VALUES:,}")
        return layer_type(**config)

    for token in (t.strip() for t in text.split(",")):
        kind, *args = token.split(":")
        try:
            if kind == "conv":
                same = args[-1:] == ["same"]
                if same and len(args) == 3:  # conv:OC:K:same
                    args = args[:2] + ["1"]
                oc, k, *rest = _ints(token, args[:-1] if same else args, 2, 3 if same else 4)
                stride, padding = (rest + [1, 0][len(rest):])[:2]  # defaults: stride 1, padding 0
                padding = "same" if same else padding
                new = [make(Conv2D, in_channels=shape[0], out_channels=oc, kernel_size=k,
                            stride=stride, padding=padding)]
            elif kind in ("pool", "avgpool"):
                k, *s = _ints(token, args, 1, 2)
                new = [(MaxPool2D if kind == "pool" else AvgPool2D)(k, s[0] if s else None)]
            elif kind == "dense":
                (n,) = _ints(token, args, 1, 1)
                new = [Flatten()] if len(shape) > 1 else []
                flat = shape if not new else new[0].output_shape(shape)
                new.append(make(Dense, in_features=flat[0], out_features=n))
            elif kind == "dropout":
                if len(args) != 1:
                    raise ValueError(f"{token!r} takes one probability")
                try:
                    p = float(args[0])
                except ValueError:
                    raise ValueError(f"{token!r}: {args[0]!r} is not a number") from None
                new = [Dropout(p)]
            elif kind == "bn" and not args:
                new = [make(BatchNorm2D if len(shape) == 3 else BatchNorm1D, num_features=shape[0])]
            elif kind in ("relu", "flatten", "softmax", "gap") and not args:
                new = [{"relu": ReLU, "flatten": Flatten, "softmax": Softmax,
                        "gap": GlobalAvgPool2D}[kind]()]
            else:
                raise ValueError(f"unknown layer {token!r}")
            for layer in new:
                shape = layer.output_shape(shape)
        except (ValueError, IndexError) as err:
            raise SpecError(f"model spec {spec!r}: {err}; expected {SPEC_HELP}") from None
        layers.extend(new)
    if not layers:
        raise SpecError(f"model spec {spec!r} is empty")
    return Sequential(layers, seed=seed)
