"""Models from a compact text spec, and the named presets.

A spec is comma-separated layers; channel and feature counts coming in are
inferred from the input shape:

- ``conv:OC:K[:S[:P]]``  Conv2D with OC output channels, kernel K, stride S, padding P
  (P may be ``same``; ``conv:OC:K:same`` is stride 1 with "same" padding)
- ``pool:K[:S[:P]]``     MaxPool2D (P: implicit -inf padding)
- ``avgpool:K[:S]``      AvgPool2D
- ``gap``                GlobalAvgPool2D ((C, H, W) -> (C,): a dense may follow directly)
- ``dropout:P``          Dropout with probability P (a number in [0, 1))
- ``bn``                 BatchNorm2D on images, BatchNorm1D on features
- ``dense:N``            Dense with N outputs (a Flatten is inserted before it on image input)
- ``res:OC[:S]``         a basic residual block (He et al. 2016): conv 3x3 (stride S) -
  BN - ReLU - conv 3x3 - BN, plus the input (through a 1x1 conv with stride S and a
  BN when the shape changes), then ReLU; convs before a BN have no bias
- ``dwsep:OC[:S]``       a depthwise-separable block (MobileNet): a depthwise 3x3 conv
  (stride S) - BN - ReLU, then a 1x1 conv to OC channels - BN - ReLU
- ``relu``, ``leaky[:SLOPE]``, ``sigmoid``, ``tanh``, ``gelu[:tanh]``, ``silu``,
  ``relu6``, ``hardswish``, ``flatten``, ``softmax``

A spec with a residual block builds a ``Model`` (a graph); one without, a ``Sequential``.
"""
from __future__ import annotations

import math

from .errors import SpecError
from .graph import Input, trace
from .layers import (GELU, Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout,
                     Flatten, GlobalAvgPool2D, Hardswish, LeakyReLU, MaxPool2D, ReLU, ReLU6, Sigmoid,
                     SiLU, Softmax, Tanh)
from .model import Model, Sequential

#: Most parameter and buffer values a spec may build (1 GiB of float32):
#: a larger request is refused before anything is allocated.
MAX_VALUES = 1 << 28

#: resnet-mini's layers up to its last pool (``PRESETS``).
_RESNET_MINI_BODY = "conv:32:3:same,bn,relu,pool:2,res:32,conv:64:3,bn,relu,pool:2,"

#: Named networks; ``{classes}`` becomes the dataset's class count. A name maps
#: to its spec, or to its specs from the one that needs the largest images to
#: the one that fits the smallest (``build_model`` takes the first that fits).
PRESETS = {
    "cnn": "conv:32:3,relu,pool:2,conv:64:3,relu,pool:2,flatten,dense:{classes},softmax",
    "mlp": "flatten,dense:128,relu,dense:{classes},softmax",
    "cnn-bn": "conv:24:3:same,bn,relu,pool:2,conv:48:3,bn,relu,pool:2,dropout:0.1,"
              "dense:{classes},softmax",
    # He et al. 2016's CIFAR ResNet-20: three stages of three basic blocks.
    "resnet20": "conv:16:3:same,bn,relu,res:16,res:16,res:16,res:32:2,res:32,res:32,res:64:2,"
                "res:64,res:64,gap,dense:{classes},softmax",
    # Small and fast: the stem pools first, so the residual block runs at 14x14;
    # a 128-channel conv on the pooled 6x6 map, then a dense head over its 4x4
    # output keeps where things are. Images under 16x16 leave too small a map
    # for that conv: they get the network without it.
    "resnet-mini": (_RESNET_MINI_BODY + "conv:128:3,bn,relu,dropout:0.4,dense:{classes},softmax",
                    _RESNET_MINI_BODY + "dropout:0.4,dense:{classes},softmax"),
    "mobilenet": "conv:16:3:same,bn,relu,dwsep:32,dwsep:64:2,dwsep:64,dwsep:128:2,dwsep:128,"
                 "gap,dense:{classes},softmax",
}

#: Activation tokens without arguments.
ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "silu": SiLU, "relu6": ReLU6,
               "hardswish": Hardswish}

SPEC_HELP = ("conv:OC:K[:S[:P]] (P may be 'same'; conv:OC:K:same), pool:K[:S[:P]], "
             "avgpool:K[:S], gap, dropout:P, bn, dense:N, res:OC[:S], dwsep:OC[:S], relu, "
             "leaky[:SLOPE], "
             "sigmoid, tanh, gelu[:tanh], silu, relu6, hardswish, flatten, softmax "
             "(comma-separated), or a preset: " + ", ".join(PRESETS))


def _ints(token: str, args: list[str], low: int, high: int) -> list[int]:
    if not low <= len(args) <= high:
        raise ValueError(f"{token!r} takes {low} to {high} numbers")
    try:
        return [int(a) for a in args]
    except ValueError:
        raise ValueError(f"{token!r}: {args} are not all integers") from None


def build_model(spec: str, input_shape=(1, 28, 28), seed: int | None = None,
                num_classes: int = 10) -> Model:
    """Build a model from a preset name or a spec string: a ``Sequential``, or a
    ``Model`` when it holds residual blocks.

    input_shape: one sample's shape (C, H, W); a preset ends in ``num_classes``
    outputs (a spec is taken literally), in the first of its variants that fits
    the input (``PRESETS``). Raises SpecError naming the first token that is
    unknown, malformed or does not fit its input (for a preset: in its last
    variant).
    """
    if spec not in PRESETS:
        return _built(spec, spec, input_shape, seed)
    variants = PRESETS[spec] if isinstance(PRESETS[spec], tuple) else (PRESETS[spec],)
    for text in variants[:-1]:
        try:
            return _built(spec, text.format(classes=num_classes), input_shape, seed)
        except SpecError:
            continue  # needs larger images: the next variant
    return _built(spec, variants[-1].format(classes=num_classes), input_shape, seed)


def _built(spec: str, text: str, input_shape, seed) -> Model:
    """The model the spec text describes (``spec``: the name errors give)."""
    total = [0]

    def make(layer_type, **config):
        """The layer, once its arrays are known to fit in MAX_VALUES with the rest."""
        total[0] += sum(math.prod(s) for s in layer_type.array_shapes(**config).values())
        if total[0] > MAX_VALUES:
            raise ValueError(f"the model would hold {total[0]:,} parameter and buffer values "
                             f"by this layer, over the limit of {MAX_VALUES:,}")
        return layer_type(**config)

    inputs = y = Input(tuple(input_shape))
    graph = False
    tokens = [t.strip() for t in text.split(",")]
    if tokens == [""]:
        raise SpecError(f"model spec {spec!r} is empty")
    for token in tokens:
        kind, *args = token.split(":")
        try:
            if kind == "res":
                y, graph = _residual_block(make, y, token, args), True
            else:
                for layer in _layers(make, y.shape, token, kind, args):
                    y = layer(y)
        except (ValueError, IndexError) as err:
            raise SpecError(f"model spec {spec!r}: {err}; expected {SPEC_HELP}") from None
    if graph:
        return Model(inputs, y, seed=seed)
    layers, _ = trace(inputs, y)
    return Sequential(layers, seed=seed)


def _layers(make, shape, token, kind, args) -> list:
    """The layers one (non-residual) token stands for, on input samples of ``shape``."""
    if kind == "conv":
        same = args[-1:] == ["same"]
        if same and len(args) == 3:  # conv:OC:K:same
            args = args[:2] + ["1"]
        oc, k, *rest = _ints(token, args[:-1] if same else args, 2, 3 if same else 4)
        stride, padding = (rest + [1, 0][len(rest):])[:2]  # defaults: stride 1, padding 0
        return [make(Conv2D, in_channels=shape[0], out_channels=oc, kernel_size=k,
                     stride=stride, padding="same" if same else padding)]
    if kind == "dwsep":
        oc, *rest = _ints(token, args, 1, 2)
        if len(shape) != 3:
            raise ValueError(f"{token!r} needs images (C, H, W), got samples of shape {shape}")
        c = shape[0]
        return [make(Conv2D, in_channels=c, out_channels=c, kernel_size=3,
                     stride=rest[0] if rest else 1, padding=1, groups=c, bias=False),
                make(BatchNorm2D, num_features=c), ReLU(),
                make(Conv2D, in_channels=c, out_channels=oc, kernel_size=1, bias=False),
                make(BatchNorm2D, num_features=oc), ReLU()]
    if kind == "pool":
        k, *rest = _ints(token, args, 1, 3)
        return [MaxPool2D(k, rest[0] if rest else None, rest[1] if len(rest) > 1 else 0)]
    if kind == "avgpool":
        k, *s = _ints(token, args, 1, 2)
        return [AvgPool2D(k, s[0] if s else None)]
    if kind == "dense":
        (n,) = _ints(token, args, 1, 1)
        new = [Flatten()] if len(shape) > 1 else []
        flat = shape if not new else new[0].output_shape(shape)
        return new + [make(Dense, in_features=flat[0], out_features=n)]
    if kind == "dropout":
        return [Dropout(_number(token, args))]
    if kind == "leaky":
        return [LeakyReLU(_number(token, args)) if args else LeakyReLU()]
    if kind == "gelu" and args in ([], ["tanh"]):
        return [GELU("tanh" if args else "none")]
    if kind == "bn" and not args:
        return [make(BatchNorm2D if len(shape) == 3 else BatchNorm1D, num_features=shape[0])]
    if kind in ACTIVATIONS and not args:
        return [ACTIVATIONS[kind]()]
    if kind in ("flatten", "softmax", "gap") and not args:
        return [{"flatten": Flatten, "softmax": Softmax, "gap": GlobalAvgPool2D}[kind]()]
    raise ValueError(f"unknown layer {token!r}")


def _number(token, args) -> float:
    if len(args) != 1:
        raise ValueError(f"{token!r} takes one number")
    try:
        return float(args[0])
    except ValueError:
        raise ValueError(f"{token!r}: {args[0]!r} is not a number") from None


def _residual_block(make, x, token, args):
    """A basic block on symbolic tensor x: its output tensor."""
    oc, *rest = _ints(token, args, 1, 2)
    stride = rest[0] if rest else 1
    if len(x.shape) != 3:
        raise ValueError(f"{token!r} needs images (C, H, W), got samples of shape {x.shape}")
    c = x.shape[0]

    def conv_bn(t, out, kernel, stride_, padding):
        conv = make(Conv2D, in_channels=t.shape[0], out_channels=out, kernel_size=kernel,
                    stride=stride_, padding=padding, bias=False)
        return make(BatchNorm2D, num_features=out)(conv(t))

    y = ReLU()(conv_bn(x, oc, 3, stride, 1))
    y = conv_bn(y, oc, 3, 1, 1)
    shortcut = x if stride == 1 and c == oc else conv_bn(x, oc, 1, stride, 0)
    return ReLU()(Add()([y, shortcut]))
