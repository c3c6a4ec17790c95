"""The FPT method, shaped like ``peft/tuners/<method>/``: config, layers, tuner, structural discovery."""

# peft first: importing it registers FPT (see fpt_peft.register), which imports this package's modules whole.
import peft  # noqa: F401

from .config import FPTConfig, FPTPeftType
from .layer import FPTInputLayer, FPTLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer
from .model import PREFIX, FPTModel, FPTOutput

__all__ = [
    "PREFIX",
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
