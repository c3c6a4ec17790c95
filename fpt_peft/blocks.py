"""The transformer blocks of a Hugging Face model: finding them, taking the later ones off and putting them back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


def text_config_of(model: nn.Module) -> Any:
    """The config that holds ``model``'s text settings (``num_hidden_layers``, ``vocab_size``)."""
    config: Any = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the list of the transformer blocks of ``model``: its one ``ModuleList`` of
    ``config.num_hidden_layers`` modules."""
    depth = getattr(text_config_of(model), "num_hidden_layers", None)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n and len(m) == depth]
    if not isinstance(depth, int) or len(found) != 1:
        raise ValueError(
            f"FPTConfig.num_layers: cannot tell the transformer blocks of {type(model).__name__} (looked for one "
            f"ModuleList of config.num_hidden_layers={depth!r} modules, found {[n for n, _ in found]})."
        )
    return found[0]


@dataclass
class BlockCut:
    """The blocks after the first ``keep`` of a model, held aside while they are off it, with the config values
    (``num_hidden_layers``, ``layer_types``) they came with."""

    blocks_name: str
    blocks: list[nn.Module]
    depth: int
    layer_types: list[str] | None
    applied: bool = False

    @classmethod
    def of(cls, model: nn.Module, keep: int) -> BlockCut:
        """The cut of ``model`` after its first ``keep`` blocks (not applied yet)."""
        name, blocks = block_list(model)
        return cls(name, list(blocks[keep:]), len(blocks), getattr(text_config_of(model), "layer_types", None))

    def apply(self, model: nn.Module, cut: bool) -> None:
        """Take the blocks off ``model`` (``cut``) or put them back, with the config's layer count."""
        if self.applied == cut:
            return
        blocks: Any = model.get_submodule(self.blocks_name)
        text_config = text_config_of(model)
        keep = self.depth - len(self.blocks)
        if cut:
            del blocks[keep:]
        else:
            # the model may have moved or switched mode while the blocks were off it; they are frozen base weights
            reference = next(p for p in blocks.parameters() if p.is_floating_point())
            moved = [b.to(device=reference.device, dtype=reference.dtype) for b in self.blocks]
            blocks.extend(b.train(model.training).requires_grad_(False) for b in moved)
        text_config.num_hidden_layers = keep if cut else self.depth
        if isinstance(self.layer_types, list):
            text_config.layer_types = self.layer_types[:keep] if cut else self.layer_types
        self.applied = cut
