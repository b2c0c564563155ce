"""Torch-free inference for the Simpsons classifier: ``from runtime import Classifier``."""

from runtime.classifier import Classifier, DeviceError, ModelError, Prediction, Result
from runtime.metadata import ModelInfo, Preprocessing

__all__ = ["Classifier", "DeviceError", "ModelError", "ModelInfo", "Prediction", "Preprocessing", "Result"]
