"""Layer classes: one module per layer family."""
from .activation import ReLU, Softmax
from .base import LAYER_TYPES, Layer
from .batchnorm import BatchNorm1D, BatchNorm2D
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .shape import Flatten

__all__ = ["Layer", "LAYER_TYPES", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dense", "Dropout",
           "BatchNorm1D", "BatchNorm2D",
           "Flatten", "ReLU", "Softmax"]
