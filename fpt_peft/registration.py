"""Registration of FPT in peft's lookup tables.

peft's own ``register_peft_method`` only accepts members of its closed ``PeftType`` enum. PEFT resolves a
method through three dictionaries keyed by the ``peft_type`` value, so a ``str``-valued enum of our own whose
member equals the string ``"FPT"`` (and hashes like it) works everywhere peft, transformers' ``load_adapter``
and ``adapter_config.json`` round trips look a method up.
"""

from __future__ import annotations

import enum


class FPTPeftType(str, enum.Enum):
    """The peft type of the Frozen Pretrained Transformer method (``adapter_config.json``: ``"FPT"``)."""

    FPT = "FPT"

    def __str__(self) -> str:
        return self.value


PEFT_TYPE = FPTPeftType.FPT
PREFIX = "fpt_"


def register() -> None:
    """Make peft resolve ``peft_type="FPT"`` to :class:`FPTConfig` and :class:`FPTModel`. Idempotent.

    Also routes ``PeftModel.save_pretrained`` / ``from_pretrained`` / ``load_adapter`` / ``push_to_hub`` (and
    transformers' ``load_adapter``) through :mod:`fpt_peft.safe_io` and :mod:`fpt_peft.hub` for models that hold an
    FPT adapter (atomic, verified files; model card kept); other adapters pass through untouched.
    """
    from peft import mapping

    from .config import FPTConfig
    from .model import FPTModel

    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = FPTConfig  # type: ignore[index]
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = FPTModel  # type: ignore[index]
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX  # type: ignore[index]
    from . import hub, safe_io

    hub.install()
    safe_io.install()


def is_registered() -> bool:
    """Whether peft currently resolves ``"FPT"`` to this package's classes."""
    from peft import mapping

    from .config import FPTConfig

    return mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is FPTConfig  # type: ignore[call-overload]
