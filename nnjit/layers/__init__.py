"""Layer classes: one module per layer family."""
from .activation import (GELU, Hardswish, LeakyReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax,
                         Tanh)
from .base import LAYER_TYPES, Layer
from .batchnorm import BatchNorm1D, BatchNorm2D
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .merge import Add, Concatenate
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .shape import Flatten

__all__ = ["Layer", "LAYER_TYPES", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dense", "Dropout",
           "BatchNorm1D", "BatchNorm2D",
           "Flatten", "ReLU", "Softmax", "Add", "Concatenate",
           "LeakyReLU", "Sigmoid", "Tanh", "GELU", "SiLU", "ReLU6", "Hardswish"]
