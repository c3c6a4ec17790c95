"""Structural discovery of the parameter groups FPT trains or keeps frozen.

Nothing here is keyed by architecture name: norms are found by module type, learned positional embeddings by
the names every Hugging Face family uses for them, attention and feed-forward linears by their place inside the
repeated blocks. That covers GPT-2, BERT, RoBERTa, OPT, GPT-NeoX, Llama, ViT and most other families.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..blocks import text_config_of

POSITION_NAMES = ("wpe", "position_embeddings", "embed_positions", "position_embedding", "pos_embed")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)
_NORM_CLASS_NAME = re.compile(r"(LayerNorm|RMSNorm|Norm)$")
_BLOCK = re.compile(r"\.\d+\.")
# A linear inside a block is attention when a part of its path names attention: attn, self_attn, encoder_attn (BART),
# attention, self_attention, crossattention, SelfAttention / EncDecAttention (T5); otherwise feed-forward.
_ATTENTION = re.compile(r"(^|\.)[^.]*(attn|attention)[^.]*(\.|$)", re.IGNORECASE)


@dataclass
class FPTTargets:
    """What discovery found in a model: module and parameter names per group."""

    norms: list[str] = field(default_factory=list)
    position_modules: list[str] = field(default_factory=list)
    position_parameters: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    feedforward: list[str] = field(default_factory=list)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer with trainable (affine) parameters."""
    norm_like = isinstance(module, _NORM_TYPES) or bool(_NORM_CLASS_NAME.search(type(module).__name__))
    return norm_like and any(True for _ in module.parameters(recurse=False))


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a linear layer with transposed weights.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def discover(model: nn.Module, skip: tuple[str, ...] = ()) -> FPTTargets:
    """Find norms, learned positional embeddings and the attention / feed-forward linears of ``model``.

    ``skip`` holds module names (and their subtrees) to leave out, e.g. the input embedding or the heads.
    """
    targets = FPTTargets()
    skipped = tuple(skip)
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in skipped):
            continue
        if isinstance(module, BaseTunerLayer):
            # Already wrapped by an earlier adapter: classify what it wraps, never its internals.
            skipped += (name,)
            module = module.get_base_layer()
        leaf = name.rsplit(".", 1)[-1]
        if is_norm(module):
            targets.norms.append(name)
        elif leaf in POSITION_NAMES and isinstance(module, nn.Embedding):
            targets.position_modules.append(name)
        elif _is_linear(module) and _BLOCK.search(f".{name}."):
            (targets.attention if _ATTENTION.search(name) else targets.feedforward).append(name)
        for param_name, _ in module.named_parameters(recurse=False):
            if param_name in POSITION_NAMES and not isinstance(module, nn.Embedding):
                targets.position_parameters.append(f"{name}.{param_name}")
    return targets


def position_capacity(model: nn.Module, position_modules: list[str]) -> int | None:
    """Longest input (in tokens) the learned positional embeddings can index, or None when unbounded/unknown."""
    capacities = []
    for name in position_modules:
        module = model.get_submodule(name)
        base = getattr(module, "base_layer", module)
        if not isinstance(base, nn.Embedding):
            continue
        offset = getattr(base, "offset", 0)  # OPT reserves two rows
        if base.padding_idx is not None:  # RoBERTa-style positions start after the padding index
            offset = max(offset, base.padding_idx + 1)
        capacities.append(base.num_embeddings - offset)
    return min(capacities) if capacities else None


def hidden_size_of(model: nn.Module) -> int | None:
    """Width of the residual stream of ``model``, or None when it cannot be told."""
    text_config = text_config_of(model)
    if text_config is not None:
        for name in ("hidden_size", "n_embd", "d_model", "dim"):
            value = getattr(text_config, name, None)
            if isinstance(value, int):
                return value
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
    weight = getattr(embedding, "weight", None)
    return None if weight is None else int(weight.shape[-1])


def base_fingerprint(model: nn.Module, tensors: int = 2, values: int = 8) -> list[float] | None:
    """``values`` evenly spaced values of each of the first ``tensors`` frozen base matrices of ``model``, those of the
    first transformer block first (the weights an FPT adapter computes with; never cut), by name with adapter
    wrappers left out (wrapping does not change the choice) and positions left out (merging writes into them); None
    when they cannot be read (meta or sharded weights)."""
    chosen = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if param.dim() < 2 or any(p.startswith("fpt_") or p in ("modules_to_save", *POSITION_NAMES) for p in parts):
            continue
        if param.device.type == "meta" or type(param.data) is not torch.Tensor:
            return None
        chosen.append((".".join(p for p in parts if p != "base_layer"), param))
    sample: list[float] = []
    first_block = re.compile(r"(^|\.)0\.")
    for _, param in sorted(chosen, key=lambda item: (not first_block.search(item[0]), item[0]))[:tensors]:
        flat = param.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, values).long().to(flat.device)
        sample += [float(f"{v:.6g}") for v in flat[index].float().cpu().tolist()]
    return sample or None
