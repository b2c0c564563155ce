"""Torch-free inference for the Simpsons classifier: ``from runtime import Classifier``."""

from runtime.classifier import UNKNOWN, Classifier, Prediction, Result
from runtime.errors import DeviceError, MetadataError, ModelError, SimpsonsError
from runtime.metadata import ModelInfo, Preprocessing

__all__ = [
    "UNKNOWN", "Classifier", "DeviceError", "MetadataError", "ModelError", "ModelInfo", "Prediction",
    "Preprocessing", "Result", "SimpsonsError",
]
