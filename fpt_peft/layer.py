"""The layers an FPT adapter adds to a model.

- :class:`FPTModuleLayer`: a per-adapter trainable copy of a small module (a norm, a positional embedding, or,
  in ablations, an attention / feed-forward linear). The frozen original stays untouched in ``base_layer``.
- :class:`FPTParameterLayer`: the same for a positional embedding that is a bare parameter (ViT).
- :class:`FPTInputLayer`: wraps the model's input embedding and adds a new input layer per adapter: a
  ``Linear(input_dim, hidden)`` for continuous tokens or an ``Embedding(vocab, hidden)`` for symbols.
- :class:`FPTOutputLayer`: a new ``Linear`` read from the last tokens of a backbone model.

Adapter weights live in attributes whose names start with ``fpt_`` so that peft saves only them.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call

from .config import FPTConfig


class _FPTLayerMixin(BaseTunerLayer):
    """Shared bookkeeping: adapters that exist but are configured frozen stay frozen when activated."""

    def _init_bookkeeping(self) -> None:
        self.merged_adapters: list[str] = []
        self.frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}

    def _register_frozen(self, adapter_name: str, frozen: bool) -> None:
        if frozen:
            self.frozen_peft_weight_names[adapter_name] = self.adapter_layer_names
        else:
            self.frozen_peft_weight_names.pop(adapter_name, None)

    def _single_active(self) -> str | None:
        """The one active adapter that has weights here, or None (disabled, merged away, or absent).

        Runs on every forward of every wrapped module, so it reads the attributes directly rather than through
        peft's ``active_adapters`` / ``_get_available_adapters`` (which build lists and sets on each call).
        """
        if self._disable_adapters:
            return None
        # Every FPT layer has one adapter container (a ModuleDict or ParameterDict: both answer `in`).
        container = self._modules[self.adapter_layer_names[0]]  # type: ignore[attr-defined]
        active = self._active_adapter
        if isinstance(active, str) or len(active) == 1:  # peft stores a one-element list after set_adapter
            name = active if isinstance(active, str) else active[0]
            return name if name in container else None
        present = [a for a in active if a in container]
        if len(present) > 1:
            raise ValueError(f"FPT runs one adapter at a time; {present} are active. Call set_adapter(name).")
        return present[0] if present else None


class FPTModuleLayer(nn.Module, _FPTLayerMixin):
    """Routes a module's forward through the active adapter's trainable copy of it."""

    adapter_layer_names = ("fpt_copies",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: FPTConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fpt_copies = nn.ModuleDict({})
        self._init_bookkeeping()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: FPTConfig) -> None:
        """Add ``adapter_name``'s copy of the base module."""
        self.fpt_copies[adapter_name] = copy.deepcopy(self.get_base_layer())
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def __getattr__(self, name: str) -> Any:
        # Model code reads attributes of the modules it owns (e.g. `wpe.weight.dtype`, OPT's `offset`).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Swap the adapter's copy into ``base_layer`` (the base then computes with the trained weights)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if len(adapter_names) > 1 or self.merged:
            raise ValueError(
                f"FPT merges one adapter at a time; asked for {adapter_names}, merged {self.merged_adapters}."
            )
        name = adapter_names[0]
        if name not in self.fpt_copies:
            return
        if safe_merge and not all(torch.isfinite(p).all() for p in self.fpt_copies[name].parameters()):
            raise ValueError(f"Adapter {name!r} holds non-finite weights in {type(self.base_layer).__name__}.")
        self.base_layer, self.fpt_copies[name] = self.fpt_copies[name], self.base_layer
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        name = self.merged_adapters.pop()
        self.base_layer, self.fpt_copies[name] = self.fpt_copies[name], self.base_layer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Hot path (every norm and positional embedding, every forward): submodules are read from `_modules`
        # directly, skipping nn.Module's and this class's `__getattr__` fallbacks.
        modules = self._modules
        active = None if self.merged_adapters else self._single_active()
        module = modules["base_layer"] if active is None else modules["fpt_copies"]._modules[active]  # type: ignore[union-attr]
        return module(*args, **kwargs)  # type: ignore[misc]

    def __repr__(self) -> str:
        return "fpt." + super().__repr__()


class FPTParameterLayer(nn.Module, _FPTLayerMixin):
    """Runs a module with one of its parameters (e.g. ViT's position embeddings) replaced by the adapter's."""

    adapter_layer_names = ("fpt_parameters",)

    def __init__(self, base_layer: nn.Module, parameter_name: str, adapter_name: str, config: FPTConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.parameter_name = parameter_name
        self.fpt_parameters = nn.ParameterDict({})
        self._init_bookkeeping()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: FPTConfig) -> None:
        """Add ``adapter_name``'s copy of the parameter."""
        original = getattr(self.get_base_layer(), self.parameter_name)
        self.fpt_parameters[adapter_name] = nn.Parameter(original.detach().clone())
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Swap the adapter's parameter into the base module."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names or adapter_names[0] not in self.fpt_parameters:
            return
        if len(adapter_names) > 1 or self.merged:
            raise ValueError(f"FPT merges one adapter at a time; asked for {adapter_names}.")
        self._swap(adapter_names[0])
        self.merged_adapters.append(adapter_names[0])

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        self._swap(self.merged_adapters.pop())

    def _swap(self, adapter_name: str) -> None:
        base = self.base_layer
        base_param = getattr(base, self.parameter_name)
        setattr(base, self.parameter_name, self.fpt_parameters[adapter_name])
        self.fpt_parameters[adapter_name] = base_param

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        active = None if self.merged else self._single_active()
        if active is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, {self.parameter_name: self.fpt_parameters[active]}, args, kwargs)

    def __repr__(self) -> str:
        return "fpt." + super().__repr__()


class FPTInputLayer(nn.Module, _FPTLayerMixin):
    """Wraps the input embedding; adds a new input layer (continuous or symbolic) per adapter.

    Symbols pass through ``forward(input_ids)`` (the model calls its input embedding as usual); continuous
    features are mapped by :meth:`embed_features`, which the model's forward pre-hook applies to
    ``inputs_embeds``.
    """

    adapter_layer_names = ("fpt_input",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: FPTConfig, hidden_size: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hidden_size = hidden_size
        self.fpt_input = nn.ModuleDict({})
        self._init_bookkeeping()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: FPTConfig) -> None:
        """Create ``adapter_name``'s input layer as its config asks (nothing if it asks for none)."""
        base_weight: torch.Tensor | None = getattr(self.get_base_layer(), "weight", None)
        device = base_weight.device if base_weight is not None else None
        dtype = base_weight.dtype if base_weight is not None and base_weight.is_floating_point() else None
        layer: nn.Module
        if config.input_dim is not None:
            layer = nn.Linear(config.input_dim, self.hidden_size, device=device)
            nn.init.orthogonal_(layer.weight, gain=config.input_init_gain)  # in fp32: QR has no bf16 kernel
            nn.init.zeros_(layer.bias)
        elif config.input_vocab_size is not None:
            layer = nn.Embedding(config.input_vocab_size, self.hidden_size, device=device)
            # Start at the scale of the pretrained token embeddings, so the residual stream looks familiar.
            std = float(base_weight.float().std()) if base_weight is not None else 0.02
            nn.init.normal_(layer.weight, std=std)
        else:
            return
        self.fpt_input[adapter_name] = layer if dtype is None else layer.to(dtype=dtype)
        self._register_frozen(adapter_name, not config.train_input)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def active_layer(self) -> nn.Module | None:
        """The active adapter's input layer, or None (the base embedding is then used)."""
        active = self._single_active()
        return None if active is None or active not in self.fpt_input else self.fpt_input[active]

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer = self.active_layer()
        if layer is None:
            return self.base_layer(input_ids, *args, **kwargs)  # type: ignore[no-any-return]
        if isinstance(layer, nn.Linear):
            raise ValueError(
                f"The active FPT adapter takes continuous inputs: pass inputs_embeds of shape (batch, tokens, "
                f"{layer.in_features}), not input_ids."
            )
        assert isinstance(layer, nn.Embedding)
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be integer ids of shape (batch, tokens); got {input_ids.dtype} of shape "
                f"{tuple(input_ids.shape)}."
            )
        if input_ids.numel():
            # One reduction and one host read (a GPU sync) for both bounds.
            low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())
            if high >= layer.num_embeddings or low < 0:
                raise ValueError(
                    f"input_ids must lie in [0, input_vocab_size={layer.num_embeddings}); got values in "
                    f"[{low}, {high}]."
                )
        return layer(input_ids)  # type: ignore[no-any-return]

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Map continuous tokens (batch, tokens, input_dim) to the model width with the active input layer."""
        layer = self.active_layer()
        if not isinstance(layer, nn.Linear):
            return features
        if features.dim() != 3 or features.shape[-1] != layer.in_features:
            raise ValueError(
                f"inputs_embeds must have shape (batch, tokens, input_dim={layer.in_features}); got "
                f"{tuple(features.shape)}."
            )
        return layer(features.to(layer.weight.dtype))  # type: ignore[no-any-return]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """The new input layer has no counterpart in the base model: it stays in use while merged."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        self.merged_adapters.extend(a for a in adapter_names if a in self.fpt_input)

    def unmerge(self) -> None:
        """Undo :meth:`merge` (bookkeeping only)."""
        self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "fpt." + super().__repr__()


class FPTOutputLayer(nn.Module, _FPTLayerMixin):
    """A new output layer read from the last (non-padding) tokens of a backbone's final hidden states."""

    adapter_layer_names = ("fpt_output",)

    def __init__(self, adapter_name: str, config: FPTConfig, hidden_size: int, reference: torch.Tensor) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.fpt_output = nn.ModuleDict({})
        self.output_shapes: dict[str, tuple[int, int, int]] = {}
        # (labels, attention_mask) of the current call, handed from the model's pre-forward hook to its post hook.
        self.pending: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._init_bookkeeping()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, reference)

    def update_layer(self, adapter_name: str, config: FPTConfig, reference: torch.Tensor) -> None:
        """Create ``adapter_name``'s output layer (nothing if its config has no ``output_dim``)."""
        if config.output_dim is None:
            return
        width = config.output_dim * config.values_per_token
        self.fpt_output[adapter_name] = nn.Linear(
            self.hidden_size, width, device=reference.device, dtype=reference.dtype
        )
        self.output_shapes[adapter_name] = (config.output_tokens, config.values_per_token, config.output_dim)
        self._register_frozen(adapter_name, not config.train_output)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name``'s output layer."""
        self.output_shapes.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def active_name(self) -> str | None:
        """The active adapter if it has an output layer here."""
        active = self._single_active()
        return active if active is not None and active in self.fpt_output else None

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        name = self.active_name()
        if name is None:
            raise RuntimeError("No active FPT output layer.")
        tokens, values, classes = self.output_shapes[name]
        if hidden.shape[1] < tokens:
            raise ValueError(f"The output layer reads the last {tokens} tokens; the input has {hidden.shape[1]}.")
        if attention_mask is not None and attention_mask.dim() == 2:
            # Read the last real tokens of each row (right padding). Without padding this picks the last tokens,
            # as the slice below does; always gathering avoids a data-dependent branch (a GPU sync per forward).
            last = attention_mask.shape[1] - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)
            index = last[:, None] - torch.arange(tokens - 1, -1, -1, device=hidden.device)[None, :]
            picked = hidden.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        else:
            picked = hidden[:, -tokens:]
        layer = self.fpt_output[name]
        assert isinstance(layer, nn.Linear)
        logits = layer(picked.to(layer.weight.dtype))
        logits = logits.reshape(hidden.shape[0], tokens * values, classes)
        return logits[:, 0] if tokens * values == 1 else logits

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """The output layer has no counterpart in the base model: it stays in use while merged."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        self.merged_adapters.extend(a for a in adapter_names if a in self.fpt_output)

    def unmerge(self) -> None:
        """Undo :meth:`merge` (bookkeeping only)."""
        self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "fpt." + super().__repr__()
