"""fpt-peft: the Frozen Pretrained Transformer (Lu et al., 2021) as a PEFT method.

``import fpt_peft`` writes FPT into peft's three lookup tables (config, tuner, state-dict prefix) and changes nothing
else; after it ``peft.get_peft_model(model, FPTConfig(...))``, ``PeftModel.from_pretrained`` and transformers'
``load_adapter`` handle FPT adapters like any other.
"""

from peft import mapping

from .tuner import (
    PREFIX,
    AdapterIntegrityError,
    FPTConfig,
    FPTInputLayer,
    FPTLayer,
    FPTModel,
    FPTModuleLayer,
    FPTOutput,
    FPTOutputLayer,
    FPTParameterLayer,
    FPTPeftType,
)

__version__ = "0.1.0"


def register() -> None:
    """Make peft resolve ``peft_type="FPT"`` to :class:`FPTConfig` and :class:`FPTModel` (idempotent).

    peft's own ``register_peft_method`` accepts only members of its closed ``PeftType`` enum, so the three tables are
    written directly, with :class:`FPTPeftType` (a ``str`` enum equal to ``"FPT"``) as the key.
    """
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[FPTPeftType.FPT] = FPTConfig  # type: ignore[index]
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[FPTPeftType.FPT] = FPTModel  # type: ignore[index]
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[FPTPeftType.FPT] = PREFIX  # type: ignore[index]


def is_registered() -> bool:
    """Whether peft currently resolves ``"FPT"`` to this package's classes."""
    return mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(FPTPeftType.FPT) is FPTConfig  # type: ignore[call-overload]


register()

__all__ = [
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
    "__version__",
    "is_registered",
    "register",
]
