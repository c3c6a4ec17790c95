"""fpt-peft: the Frozen Pretrained Transformer (Lu et al., 2021) as a PEFT method.

``import fpt_peft`` registers the method with peft, after which ``peft.get_peft_model(model, FPTConfig(...))``,
``PeftModel.from_pretrained`` and transformers' ``load_adapter`` handle FPT adapters like any other.
"""

from .config import FPTConfig
from .layer import FPTInputLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer
from .model import FPTModel, FPTOutput
from .registration import FPTPeftType, register
from .safe_io import AdapterIntegrityError, PickledAdapterError, allow_pickled_adapters

__version__ = "0.1.0"

register()

__all__ = [
    "AdapterIntegrityError",
    "FPTConfig",
    "FPTInputLayer",
    "FPTModel",
    "FPTModuleLayer",
    "FPTOutput",
    "FPTOutputLayer",
    "FPTParameterLayer",
    "FPTPeftType",
    "PickledAdapterError",
    "__version__",
    "allow_pickled_adapters",
    "register",
]
