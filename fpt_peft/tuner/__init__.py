"""The FPT method, shaped like ``peft/tuners/<method>/``: config, layers, tuner, structural discovery."""

from .config import FPTConfig, FPTPeftType
from .integrity import AdapterIntegrityError
from .layer import FPTInputLayer, FPTLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer
from .model import PREFIX, FPTModel, FPTOutput

__all__ = [
    "PREFIX",
    "AdapterIntegrityError",
    "FPTConfig",
    "FPTInputLayer",
    "FPTLayer",
    "FPTModel",
    "FPTModuleLayer",
    "FPTOutput",
    "FPTOutputLayer",
    "FPTParameterLayer",
    "FPTPeftType",
]
