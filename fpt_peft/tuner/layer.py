"""The layers an FPT adapter adds to a model.

- :class:`FPTModuleLayer`: per adapter, a trainable copy of a small module (a norm, a positional embedding or, in
  ablations, a block linear); the frozen original stays in ``base_layer``.
- :class:`FPTParameterLayer`: the same for a positional embedding that is a bare parameter (ViT).
- :class:`FPTInputLayer`: wraps the input embedding; per adapter a new ``Linear(input_dim, hidden)`` for continuous
  tokens or a new ``Embedding(vocab, hidden)`` for symbols.
- :class:`FPTOutputLayer`: per adapter a new ``Linear`` read from the last tokens of a backbone.

Adapter weights live in attributes whose names start with ``fpt_``, so peft saves only them. On a float16/bfloat16
base peft keeps them in float32 (``autocast_adapter_dtype``); copies of base modules then compute in the base's dtype
(their weights cast on the fly, so the float32 weights take the updates), new layers in their own dtype with results
handed to the base in its dtype. Every layer takes peft's ``adapter_names`` (one adapter name per row of the batch,
``"__base__"`` for the plain base) and computes each row with that row's adapter.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from torch import nn
from torch.func import functional_call

from .. import tuner_checks
from .config import FPTConfig


def _check_finite(adapter_name: str, tensors: Iterable[torch.Tensor]) -> None:
    """``safe_merge``: refuse non-finite weights, with peft's own message."""
    if not all(torch.isfinite(t).all() for t in tensors):
        raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken")


def _float_dtype(module: nn.Module | None) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (the dtype the base computes in), or None."""
    params = [] if module is None else [p for p in module.parameters() if p.is_floating_point()]
    return params[0].dtype if params else None


def _rows(value: Any, index: torch.Tensor, batch: int) -> Any:
    """``value`` restricted to the rows ``index`` when it is a tensor with ``batch`` rows (else unchanged)."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
        return value[index.to(value.device)]
    return value


class FPTLayer(nn.Module, BaseTunerLayer):
    """Common base of FPT's layers: one active adapter at a time, requires_grad as the adapter's config says, and
    per-row adapters (``adapter_names``) for every layer through :meth:`forward_with`."""

    def __init__(self, base_layer: nn.Module | None, adapter_name: str) -> None:
        super().__init__()
        if base_layer is not None:
            self.base_layer = base_layer
        self._active_adapter = adapter_name
        self.merged_adapters: list[str] = []
        self.frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # peft warns about module types it does not know (norms)
            features = _get_in_out_features(base_layer) if base_layer is not None else (None, None)
        self.in_features: int | None = features[0]
        self.out_features: int | None = features[1]

    def _register(self, adapter_name: str, config: FPTConfig, trainable: bool = True) -> None:
        """Book-keeping after ``adapter_name``'s weights were added: frozen by config, trainable only if active."""
        if not trainable:
            self.frozen_peft_weight_names[adapter_name] = self.adapter_layer_names
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def adapters_here(self) -> Any:
        """The container of this layer's adapter weights (name -> module or parameter)."""
        return getattr(self, self.adapter_layer_names[0])

    def adapter_for_forward(self) -> str | None:
        """The one active adapter with weights in this layer, or None for the base (disabled, or none here)."""
        if self._disable_adapters:
            return None
        present = [name for name in self.active_adapters if name in self.adapters_here()]
        if len(present) > 1:
            raise ValueError(f"FPT runs one adapter at a time; {present} are active. Call set_adapter(name).")
        return present[0] if present else None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        pass  # adapter weights are created beside the base weights, or loaded in place (assign=True)

    def forward_with(self, name: str | None, *args: Any, **kwargs: Any) -> Any:
        """This layer's output computed with adapter ``name`` (None: the base)."""
        raise NotImplementedError

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        if adapter_names is None:
            return self.forward_with(self.adapter_for_forward(), *args, **kwargs)
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, call `unmerge_adapter` first."
            )
        first = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        batch, rows = len(adapter_names), first.shape[0]
        groups: dict[str, list[int]] = {}
        for row, name in enumerate(adapter_names):
            groups.setdefault(name, []).append(row)
        here = {name: name if name in self.adapters_here() else None for name in groups}  # "__base__": the base
        if rows == 1 and batch > 1:  # an input the batch shares (position ids): one result per adapter, per row
            shared = {name: self.forward_with(here[name], *args, **kwargs) for name in groups}
            return torch.cat([shared[name] for name in adapter_names])
        if rows != batch:
            raise ValueError(f"adapter_names has {batch} names, but the input has {rows} rows; give one per row.")
        parts, order = [], []
        for name, members in groups.items():
            index = torch.tensor(members)
            part_args = [_rows(a, index, batch) for a in args]
            part_kwargs = {k: _rows(v, index, batch) for k, v in kwargs.items()}
            parts.append(self.forward_with(here[name], *part_args, **part_kwargs))
            order += members
        out = torch.cat(parts)
        return out[torch.argsort(torch.tensor(order, device=out.device))]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Mark the adapter merged; its new layer stays in use (a base model has no place for it)."""
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.adapters_here()]
        for name in names if safe_merge else []:
            _check_finite(name, self.adapters_here()[name].parameters())
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        self.merged_adapters.clear()

    def __getattr__(self, name: str) -> Any:
        # Model code reads attributes of the modules it owns (e.g. `wpe.weight.dtype`, OPT's `offset`).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer" or "base_layer" not in self._modules:
                raise
            return getattr(self._modules["base_layer"], name)

    def __repr__(self) -> str:
        return "fpt." + super().__repr__()


class _CopyLayer(FPTLayer):
    """A layer whose adapter holds copies of base tensors: merge copies them into the base in place, unmerge restores
    the base's own values (kept aside while merged); forward computes in the base's dtype."""

    def __init__(self, base_layer: nn.Module, adapter_name: str) -> None:
        super().__init__(base_layer, adapter_name)
        self._originals: dict[str, torch.Tensor] = {}

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors by the base module's parameter names."""
        raise NotImplementedError

    def _as_base(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors in the base's dtype (differentiable casts, so float32 weights get the gradients)."""
        dtype = _float_dtype(self.get_base_layer())
        return {n: t if dtype is None else t.to(dtype) for n, t in self.adapter_tensors(adapter_name).items()}

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Copy the adapter's weights into the base module; the base computes with them until :meth:`unmerge`."""
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.adapters_here()]
        if not names:
            return
        if len(names) > 1:
            raise ValueError(f"FPT merges one adapter at a time; asked for {names}.")
        if self.merged:
            warnings.warn(f"Already merged with {self.merged_adapters}. Unmerging first.", stacklevel=2)
            self.unmerge()
        source = self.adapter_tensors(names[0])
        if safe_merge:
            _check_finite(names[0], source.values())
        base = {name: getattr(self.get_base_layer(), name) for name in source}
        self._originals = {name: tensor.detach().clone() for name, tensor in base.items()}
        with torch.no_grad():
            for name, tensor in base.items():
                tensor.copy_(source[name])
        self.merged_adapters.append(names[0])

    def unmerge(self) -> None:
        """Restore the base module's own weights."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        with torch.no_grad():
            for name, tensor in self._originals.items():
                getattr(self.get_base_layer(), name).copy_(tensor)
        self._originals = {}
        self.merged_adapters.pop()

    def adapter_for_forward(self) -> str | None:
        """As :meth:`FPTLayer.adapter_for_forward`; a merged adapter computes in the base (disabling unmerges it)."""
        if self._disable_adapters and self.merged:
            self.unmerge()
        return None if self.merged else super().adapter_for_forward()

    def forward_with(self, name: str | None, *args: Any, **kwargs: Any) -> Any:
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self._as_base(name), args, kwargs)


class FPTModuleLayer(_CopyLayer):
    """Routes a module's forward through an adapter's trainable copy of its parameters."""

    adapter_layer_names = ("fpt_copies",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: FPTConfig, on_meta: bool = False) -> None:
        super().__init__(base_layer, adapter_name)
        self.fpt_copies = nn.ModuleDict({})
        self.update_layer(adapter_name, config, on_meta)

    def update_layer(self, adapter_name: str, config: FPTConfig, on_meta: bool = False) -> None:
        """Add ``adapter_name``'s copy of the base module (on the meta device for ``low_cpu_mem_usage``)."""
        layer = copy.deepcopy(self.get_base_layer())
        self.fpt_copies[adapter_name] = layer.to("meta") if on_meta else layer
        self._register(adapter_name, config)

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return dict(self.fpt_copies[adapter_name].named_parameters())

    def forward_with(self, name: str | None, *args: Any, **kwargs: Any) -> Any:
        if name is not None and _float_dtype(self.fpt_copies[name]) == _float_dtype(self.get_base_layer()):
            return self.fpt_copies[name](*args, **kwargs)  # same dtype: the copy itself (no re-binding per call)
        return super().forward_with(name, *args, **kwargs)


class FPTParameterLayer(_CopyLayer):
    """Runs a module with one of its parameters (e.g. ViT's position embeddings) replaced by the adapter's."""

    adapter_layer_names = ("fpt_parameters",)

    def __init__(
        self, base_layer: nn.Module, parameter_name: str, adapter_name: str, config: FPTConfig, on_meta: bool = False
    ) -> None:
        super().__init__(base_layer, adapter_name)
        self.parameter_name = parameter_name
        self.fpt_parameters = nn.ParameterDict({})
        self.update_layer(adapter_name, config, on_meta)

    def update_layer(self, adapter_name: str, config: FPTConfig, on_meta: bool = False) -> None:
        """Add ``adapter_name``'s copy of the parameter."""
        original = getattr(self.get_base_layer(), self.parameter_name)
        value = torch.empty_like(original, device="meta") if on_meta else original.detach().clone()
        self.fpt_parameters[adapter_name] = nn.Parameter(value)
        self._register(adapter_name, config)

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return {self.parameter_name: self.fpt_parameters[adapter_name]}


class FPTInputLayer(FPTLayer):
    """Wraps the input embedding; adds a new input layer (continuous or symbolic) per adapter.

    Symbols pass through ``forward(input_ids)`` (the model calls its input embedding as usual); continuous tokens
    through ``forward(inputs_embeds, features=True)``, which the tuner's forward pre-hook calls on the model's
    ``inputs_embeds``. A continuous layer is followed, in training mode, by dropout with the adapter's
    ``input_dropout``. ``merge_and_unload`` of a symbolic adapter puts the new vocabulary in place of the base
    embedding; a continuous layer cannot be merged.
    """

    adapter_layer_names = ("fpt_input",)
    other_param_names = ("input_dropout",)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: FPTConfig, hidden_size: int, on_meta: bool = False
    ) -> None:
        super().__init__(base_layer, adapter_name)
        self.hidden_size = hidden_size
        self.fpt_input = nn.ModuleDict({})
        self.input_dropout: dict[str, float] = {}
        self.update_layer(adapter_name, config, on_meta)

    def update_layer(self, adapter_name: str, config: FPTConfig, on_meta: bool = False) -> None:
        """Create ``adapter_name``'s input layer as its config asks (nothing if it asks for none)."""
        base_weight: torch.Tensor | None = getattr(self.get_base_layer(), "weight", None)
        device = "meta" if on_meta else (base_weight.device if base_weight is not None else None)
        layer: nn.Module
        if config.input_dim is not None:
            layer = nn.Linear(config.input_dim, self.hidden_size, device=device)
            if not on_meta:
                nn.init.orthogonal_(layer.weight, gain=config.input_init_gain)
                nn.init.zeros_(layer.bias)
            self.input_dropout[adapter_name] = float(config.input_dropout)
        elif config.input_vocab_size is not None:
            layer = nn.Embedding(config.input_vocab_size, self.hidden_size, device=device)
            if not on_meta:
                scaled = config.embedding_init == "scaled" and base_weight is not None
                nn.init.normal_(layer.weight, std=float(base_weight.float().std()) if scaled else 1.0)  # type: ignore[union-attr]
        else:
            return
        dtype = _float_dtype(self.get_base_layer())
        self.fpt_input[adapter_name] = layer if dtype is None else layer.to(dtype)  # peft's autocast may up-cast it
        self._register(adapter_name, config, trainable=config.train_input)

    def forward_with(
        self, name: str | None, inputs: torch.Tensor, *args: Any, features: bool = False, **kwargs: Any
    ) -> Any:
        layer = None if name is None else self.fpt_input[name]
        if layer is None:
            return inputs if features else self.base_layer(inputs, *args, **kwargs)
        dtype = _float_dtype(self.get_base_layer())
        if isinstance(layer, nn.Linear):
            if not features:
                raise ValueError(
                    f"The active FPT adapter takes continuous inputs: pass inputs_embeds of shape (batch, tokens, "
                    f"{layer.in_features}), not input_ids."
                )
            tuner_checks.check_features(inputs, layer.in_features)
            out = layer(inputs.to(layer.weight.dtype))
            rate = self.input_dropout.get(name, 0.0)  # type: ignore[arg-type]
            if rate > 0:  # skipped at 0 so that the random stream (and every result) stays as without the option
                out = nn.functional.dropout(out, p=rate, training=self.training)
            return out if dtype is None else out.to(dtype)
        if features:
            return inputs  # a symbolic adapter leaves ready embeddings to the base, as the base embedding does
        assert isinstance(layer, nn.Embedding)
        tuner_checks.check_ids(inputs, layer.num_embeddings)
        out = layer(inputs)
        return out if dtype is None else out.to(dtype)

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """The module that replaces this wrapper on unload: the new vocabulary when merging a symbolic adapter."""
        names = [a for a in (adapter_names or self.active_adapters) if a in self.fpt_input]
        if not merge or not names:
            return self.get_base_layer()
        layer = self.fpt_input[names[0]]
        if not isinstance(layer, nn.Embedding):
            raise ValueError("A continuous FPT input layer cannot be merged into a base model.")
        if safe_merge:
            _check_finite(names[0], [layer.weight])
        merged = nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx)
        weight = layer.weight.detach()
        dtype = _float_dtype(self.get_base_layer()) or weight.dtype
        merged.weight = nn.Parameter(weight.to(dtype).clone(), requires_grad=False)
        return merged


class FPTOutputLayer(FPTLayer):
    """A new output layer per adapter, read from the last (non-padding) tokens of a backbone's final hidden states."""

    adapter_layer_names = ("fpt_output",)
    other_param_names = ("output_shapes",)

    def __init__(
        self, adapter_name: str, config: FPTConfig, hidden_size: int, reference: torch.Tensor, on_meta: bool = False
    ) -> None:
        super().__init__(None, adapter_name)
        self.hidden_size = self.in_features = hidden_size
        self.fpt_output = nn.ModuleDict({})
        self.output_shapes: dict[str, tuple[int, int, int]] = {}
        self.update_layer(adapter_name, config, reference, on_meta)

    def update_layer(
        self, adapter_name: str, config: FPTConfig, reference: torch.Tensor, on_meta: bool = False
    ) -> None:
        """Create ``adapter_name``'s output layer (nothing if its config has no ``output_dim``) on the device and in
        the dtype of ``reference``, a weight where the last hidden state is computed."""
        if config.output_dim is None:
            return
        width = config.output_dim * config.values_per_token
        device = "meta" if on_meta else reference.device
        self.fpt_output[adapter_name] = nn.Linear(self.hidden_size, width, device=device, dtype=reference.dtype)
        self.output_shapes[adapter_name] = (config.output_tokens, config.values_per_token, config.output_dim)
        self._register(adapter_name, config, trainable=config.train_output)

    def forward_with(self, name: str | None, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        """Logits of adapter ``name`` from the final hidden states, in the output layer's dtype."""
        if name is None:
            raise ValueError("No FPT output layer for these rows: the plain base has no output layer to compute.")
        tokens, values, classes = self.output_shapes[name]
        if hidden.shape[1] < tokens:
            raise ValueError(f"The output layer reads the last {tokens} tokens; the input has {hidden.shape[1]}.")
        if attention_mask is not None and attention_mask.dim() == 2:
            # The last real tokens of each row (right padding); gathering always avoids a data-dependent branch.
            mask = attention_mask.to(hidden.device)
            last = mask.shape[1] - 1 - mask.flip(1).to(torch.int64).argmax(1)
            index = last[:, None] - torch.arange(tokens - 1, -1, -1, device=hidden.device)[None, :]
            picked = hidden.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        else:
            picked = hidden[:, -tokens:]
        if tokens * values == 1:
            picked = picked[:, 0]  # one value: the layer's output is already (batch, classes)
        layer = self.fpt_output[name]
        assert isinstance(layer, nn.Linear)
        logits = layer(picked.to(device=layer.weight.device, dtype=layer.weight.dtype))
        if values == 1:
            return logits
        # (batch, tokens, values * classes) -> (batch, tokens * values, classes). The logits leave the model, so they
        # are a tensor of their own, not a view: FSDP2 drops its pre-backward hook from a root output that is a view
        # once it is changed in place.
        return logits.reshape(hidden.shape[0], tokens * values, classes).clone()
