"""fpt-peft: the Frozen Pretrained Transformer (Lu et al., 2021) as a PEFT method.

``import fpt_peft`` makes peft resolve ``peft_type="FPT"``: FPT is written into peft's three lookup tables (config,
tuner, state-dict prefix) as soon as peft is imported (at once if it already is), and nothing else changes. After it
``peft.get_peft_model(model, FPTConfig(...))``, ``PeftModel.from_pretrained`` and transformers' ``load_adapter``
handle FPT adapters like any other.

The import itself is light: the tuner classes load on first use (``fpt_peft.FPTConfig``), and peft, transformers
and torch only when something needs them, so command lines built on :mod:`fpt_peft.arguments` answer ``--help``
at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import wrapt

if TYPE_CHECKING:
    from .adapter_files import AdapterIntegrityError
    from .tuner import (
        PREFIX,
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
    "__version__",
    "is_registered",
    "register",
]
_FROM_TUNER = frozenset(__all__) - {"__version__", "is_registered", "register"}


def register() -> None:
    """Make peft resolve ``peft_type="FPT"`` to :class:`FPTConfig` and :class:`FPTModel` (idempotent).

    peft's own ``register_peft_method`` accepts only members of its closed ``PeftType`` enum, so the three tables are
    written directly, with :class:`FPTPeftType` (a ``str`` enum equal to ``"FPT"``) as the key.
    """
    from peft import mapping

    # The submodules, not the `tuner` package: this also runs while the package itself is being imported.
    from .tuner.config import FPTConfig, FPTPeftType
    from .tuner.model import PREFIX, FPTModel

    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[FPTPeftType.FPT] = FPTConfig  # type: ignore[index]
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[FPTPeftType.FPT] = FPTModel  # type: ignore[index]
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[FPTPeftType.FPT] = PREFIX  # type: ignore[index]


def is_registered() -> bool:
    """Whether peft currently resolves ``"FPT"`` to this package's classes."""
    from peft import mapping

    from .tuner.config import FPTConfig, FPTPeftType

    return mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(FPTPeftType.FPT) is FPTConfig  # type: ignore[call-overload]


# Registers right after peft finishes importing, or now if it already has (wrapt's post-import hooks, as used by
# tracing libraries; it wraps only the loader of the module `peft` while that one import runs).
wrapt.register_post_import_hook(lambda _peft: register(), "peft")


def __getattr__(name: str) -> Any:
    """The tuner's classes, imported on first use (after peft, so that FPT is registered by then)."""
    if name == "AdapterIntegrityError":
        return importlib.import_module(".adapter_files", __name__).AdapterIntegrityError
    if name in _FROM_TUNER:
        import peft  # noqa: F401  # fires the registration above before the tuner is needed

        return getattr(importlib.import_module(".tuner", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
