"""nnjit: convolutional networks from scratch, with Numba kernels for every hot loop.

Importing nnjit compiles nothing: kernels compile on first use and are cached
on disk, so later processes load them. It sets no environment variable and
needs no import order: every matrix product runs inside nnjit's own parallel
kernels with BLAS single-threaded (``nnjit.kernels.blas``), so how the user's
numpy configured its BLAS thread pool does not matter.
"""
from .layers import (GELU, Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Concatenate, Conv2D, Dense,
                     Dropout, Flatten, GlobalAvgPool2D, Hardswish, Layer, LeakyReLU, MaxPool2D,
                     ReLU, ReLU6, Sigmoid, SiLU, Softmax, Tanh)
from .losses import CrossEntropyLoss, softmax_cross_entropy
from .graph import Input
from .model import Model, Sequential
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError, DataError, NnjitError, SpecError, TrainingDiverged
from .optim import SGD, Adam, AdamW, Momentum, Optimizer
from .params import Parameter
from .kernels.precompile import compile_ahead
from .threads import get_num_threads, set_num_threads
from .planner import ConvAlgorithm, PlanError, using
from .explain import explain
from . import callbacks

__version__ = "0.1.0"

__all__ = [
    "Sequential", "Model", "Input", "Add", "Concatenate", "Conv2D", "MaxPool2D", "AvgPool2D",
    "GlobalAvgPool2D", "Flatten", "Dense", "Dropout",
    "BatchNorm1D", "BatchNorm2D", "ReLU", "Softmax", "Layer", "LeakyReLU", "Sigmoid", "Tanh",
    "GELU", "SiLU", "ReLU6", "Hardswish",
    "SGD", "Momentum", "Adam", "AdamW", "Optimizer", "Parameter", "softmax_cross_entropy",
    "CrossEntropyLoss",
    "save_checkpoint", "load_checkpoint", "NnjitError", "DataError", "CheckpointError", "SpecError",
    "TrainingDiverged", "callbacks",
    "set_num_threads", "get_num_threads", "compile_ahead", "using", "explain", "ConvAlgorithm",
    "PlanError",
    "__version__",
]
