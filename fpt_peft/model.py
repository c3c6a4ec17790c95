"""The FPT tuner: injects the layers of :mod:`fpt_peft.layer` into a Hugging Face model."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.constants import DUMMY_TARGET_MODULES
from torch import nn
from transformers.utils import ModelOutput

from .config import FPTConfig
from .discovery import POSITION_NAMES, discover, position_capacity
from .layer import FPTInputLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer
from .registration import PREFIX

logger = logging.getLogger("fpt_peft")

OUTPUT_LAYER_NAME = "output_adapter"  # child of the HF model holding FPT output layers (no "fpt_" in module paths)
_HOOKS_ATTR = "_fpt_forward_hooks"
_CAPACITY_ATTR = "_fpt_position_capacity"  # longest input the learned positions can index (None: unbounded)


@dataclass
class FPTOutput(ModelOutput):
    """Output of a backbone with an FPT output layer: ``logits`` (and ``loss`` when ``labels`` were given)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def hidden_size_of(model: nn.Module) -> int | None:
    """Width of the residual stream of ``model``, or None when it cannot be told."""
    config = getattr(model, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name in ("hidden_size", "n_embd", "d_model", "dim"):
            value = getattr(text_config, name, None)
            if isinstance(value, int):
                return value
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
    weight = getattr(embedding, "weight", None)
    return None if weight is None else int(weight.shape[-1])


class FPTModel(BaseTuner):
    """Frozen Pretrained Transformer tuner (Lu et al., 2021, https://arxiv.org/abs/2103.05247).

    Trains layer norms, learned positional embeddings, a new input layer and an output layer of a frozen
    pretrained transformer. Created by ``peft.get_peft_model(model, FPTConfig(...))`` after ``import fpt_peft``.

    Example:

        ```py
        >>> import fpt_peft
        >>> from peft import get_peft_model
        >>> from transformers import AutoModelForSequenceClassification
        >>> base = AutoModelForSequenceClassification.from_pretrained("gpt2", num_labels=10)
        >>> model = get_peft_model(base, fpt_peft.FPTConfig(task_type="SEQ_CLS", input_dim=48))
        >>> model(inputs_embeds=patches).logits  # patches: (batch, tokens, 48)
        ```
    """

    prefix: str = PREFIX
    tuner_layer_cls = BaseTunerLayer
    target_module_mapping: dict[str, list[str]] = {}  # noqa: RUF012 - discovery is structural

    # ------------------------------------------------------------------ configuration
    def _prepare_adapter_config(self, peft_config: FPTConfig, model_config: dict) -> FPTConfig:  # type: ignore[override]
        model = self.model
        hidden = hidden_size_of(model)
        model_type = model_config.get("model_type")
        new_layers = peft_config.input_dim or peft_config.input_vocab_size or peft_config.output_dim
        if hidden is None and new_layers:
            raise ValueError(
                f"FPT cannot tell the width of {type(model).__name__} (no config.hidden_size and no input embedding), "
                "so it cannot size a new input or output layer."
            )
        if peft_config.base_hidden_size is not None and peft_config.base_hidden_size != hidden:
            raise ValueError(
                f"This FPT adapter was made for a base model of width {peft_config.base_hidden_size} "
                f"({peft_config.base_model_type}); the model it is loaded onto has width {hidden} ({model_type})."
            )
        if peft_config.base_model_type is not None and model_type and peft_config.base_model_type != model_type:
            raise ValueError(
                f"This FPT adapter was made for a {peft_config.base_model_type!r} model; the model it is loaded onto "
                f"is a {model_type!r} model. Load it onto the architecture it was trained on."
            )
        peft_config.base_hidden_size = hidden
        peft_config.base_model_type = model_type
        if peft_config.output_dim is not None and getattr(model, "base_model", model) is not model:
            raise ValueError(
                f"FPTConfig.output_dim adds an output layer on top of a backbone, but {type(model).__name__} already "
                "has a task head. Load the backbone with AutoModel, or use task_type='SEQ_CLS' without output_dim."
            )
        if peft_config.target_modules is None:
            self._resolve_targets(peft_config)
        for qualified in peft_config.position_parameters or []:
            owner_name, _, param_name = qualified.rpartition(".")
            try:
                owner = model.get_submodule(owner_name)
            except AttributeError:
                owner = None
            if owner is None or not isinstance(getattr(owner, param_name, None), torch.Tensor):
                raise ValueError(
                    f"FPTConfig.position_parameters names {qualified!r}, which is not a parameter of "
                    f"{type(model).__name__}."
                )
        return peft_config

    def _resolve_targets(self, config: FPTConfig) -> None:
        """Fill ``target_modules`` / ``position_parameters`` with exact names found in the model."""
        model = self.model
        skip = [self._input_embedding_name()]
        skip += [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("score", "classifier", "lm_head")]
        skip.append(OUTPUT_LAYER_NAME)
        found = discover(model, skip=tuple(n for n in skip if n))
        names: list[str] = []
        if config.train_layer_norms:
            names += found.norms
        if config.train_positions:
            names += found.position_modules
            config.position_parameters = found.position_parameters
            if not found.position_modules and not found.position_parameters:
                logger.warning(
                    "FPT: %s has no learned positional embeddings (searched for modules or parameters named %s; "
                    "rotary or relative positions have no parameters), so none are trained.",
                    type(model).__name__,
                    ", ".join(POSITION_NAMES),
                )
        else:
            config.position_parameters = []
        if config.train_attention:
            names += found.attention
        if config.train_feedforward:
            names += found.feedforward
        wants_groups = config.train_layer_norms or config.train_attention or config.train_feedforward
        has_io = config.input_dim or config.input_vocab_size or config.output_dim or config.modules_to_save
        if not names and not config.position_parameters and wants_groups and not has_io:
            raise ValueError(
                f"FPT found nothing to train in {type(model).__name__}: searched for norm modules (LayerNorm, "
                "RMSNorm, *Norm classes with parameters), learned positional embeddings, and block linears. Pass "
                "FPTConfig(target_modules=[...]) with the names of the modules to train."
            )
        config.target_modules = names if names else DUMMY_TARGET_MODULES

    def _input_embedding_name(self) -> str:
        model = self.model
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
        if embedding is None:
            return ""
        for name, module in model.named_modules():
            if module is embedding:
                return name
        return ""

    # ------------------------------------------------------------------ injection
    def _create_and_replace(  # type: ignore[override]
        self,
        peft_config: FPTConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, FPTModuleLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if isinstance(target, BaseTunerLayer):
            raise ValueError(f"{current_key} is already wrapped by another adapter type ({type(target).__name__}).")
        new_module = FPTModuleLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(  # type: ignore[override]
        self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs: Any
    ) -> None:
        """Inject norms / positions through peft, then add the parameter, input and output layers."""
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)
        config = self.peft_config[adapter_name]
        assert isinstance(config, FPTConfig)
        for qualified in config.position_parameters or []:
            owner_name, _, param_name = qualified.rpartition(".")
            owner = model.get_submodule(owner_name)
            if isinstance(owner, FPTParameterLayer):
                owner.update_layer(adapter_name, config)
            else:
                parent_name, _, child = owner_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, FPTParameterLayer(owner, param_name, adapter_name, config))
        hidden = config.base_hidden_size or 0
        if config.input_dim is not None or config.input_vocab_size is not None:
            self._add_input_layer(model, adapter_name, config, hidden)
        if config.output_dim is not None:
            reference = next(p for p in model.parameters() if p.is_floating_point())
            head = getattr(model, OUTPUT_LAYER_NAME, None)
            if isinstance(head, FPTOutputLayer):
                head.update_layer(adapter_name, config, reference)
            else:
                model.add_module(OUTPUT_LAYER_NAME, FPTOutputLayer(adapter_name, config, hidden, reference))
        _install_forward_hooks(model)
        model.__dict__[_CAPACITY_ATTR] = position_capacity(model, discover(model).position_modules)
        # Only the active adapter trains; the new layers follow the same rule as the injected ones.
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _add_input_layer(self, model: nn.Module, adapter_name: str, config: FPTConfig, hidden: int) -> None:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
        if isinstance(embedding, FPTInputLayer):
            embedding.update_layer(adapter_name, config)
        else:
            model.set_input_embeddings(FPTInputLayer(embedding, adapter_name, config, hidden))  # type: ignore[operator]
        model_config: Any = model.config
        if config.input_vocab_size is not None or getattr(model_config, "pad_token_id", None) is None:
            # Sequence-classification heads find the last real token through config.pad_token_id (GPT-2 refuses
            # batches > 1 without one); with a new vocabulary only the new padding id is meaningful.
            model_config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # Adapter copies keep the base model's dtype: up-casting norms of a bf16 model breaks its forward.
        pass

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if PREFIX not in name:
                param.requires_grad = False
        super()._mark_only_adapters_as_trainable(model)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name``: only its weights train, and the model computes with them."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        names = [adapter_name] if isinstance(adapter_name, str) else adapter_name
        config = self.peft_config.get(names[0]) if names else None
        if isinstance(config, FPTConfig) and config.input_vocab_size is not None:
            self.model.config.pad_token_id = config.pad_token_id

    # ------------------------------------------------------------------ merge / unload
    def _unload_and_optionally_merge(  # type: ignore[override]
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            configs = {n: self.peft_config[n] for n in adapter_names or self.active_adapters}
            new_layers = [
                n
                for n, c in configs.items()
                if isinstance(c, FPTConfig) and (c.input_dim or c.input_vocab_size or c.output_dim)
            ]
            if new_layers:
                raise ValueError(
                    f"Adapter(s) {sorted(set(new_layers))} have a new FPT input or output layer, which has no place "
                    "in the base architecture, so merge_and_unload cannot produce a plain base model. Keep the "
                    "PeftModel (merge_adapter() writes norms and positions into the base and keeps the new layers in "
                    "use)."
                )
        model: nn.Module = super()._unload_and_optionally_merge(  # type: ignore[func-returns-value,assignment]
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        if hasattr(model, OUTPUT_LAYER_NAME):
            delattr(model, OUTPUT_LAYER_NAME)
        for handle in model.__dict__.get(_HOOKS_ATTR, []):
            handle.remove()
        for attr in (_HOOKS_ATTR, _CAPACITY_ATTR, "forward"):  # "forward": see _expose_labels_argument
            model.__dict__.pop(attr, None)
        return model

    # ------------------------------------------------------------------ save / load
    @classmethod
    def _remap_adapter_state_dict_for_load(  # type: ignore[override]
        cls, model: nn.Module, config: FPTConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        remapped: dict[str, torch.Tensor] = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        prefix = "base_model.model."
        own = (f".{adapter_name}.", f".{adapter_name}")
        expected = {
            k.removeprefix(prefix)
            for k in model.state_dict()
            if (own[0] in k or k.endswith(own[1])) and (f".{PREFIX}" in k or ".modules_to_save." in k)
        }
        given = {k.removeprefix(prefix) for k in remapped}
        if given != expected:
            raise ValueError(
                "The FPT adapter weights do not match its config for this model: missing "
                f"{_first(expected - given)}, unexpected {_first(given - expected)}. The adapter file is incomplete "
                "or belongs to another adapter or model."
            )
        return remapped


def _first(names: set[str], count: int = 5) -> str:
    ordered = sorted(names)
    return str(ordered[:count]) + (" ..." if len(ordered) > count else "")


# ---------------------------------------------------------------------- forward hooks on the HF model
def _install_forward_hooks(model: nn.Module) -> None:
    """Hooks that apply the FPT input layer to ``inputs_embeds`` and the FPT output layer to the outputs."""
    if model.__dict__.get(_HOOKS_ATTR):
        return
    handles = [
        model.register_forward_pre_hook(_before_forward, with_kwargs=True),
        model.register_forward_hook(_after_forward, with_kwargs=True),
    ]
    model.__dict__[_HOOKS_ATTR] = handles
    _expose_labels_argument(model)


def _expose_labels_argument(model: nn.Module) -> None:
    """Let ``labels`` appear in a backbone's forward signature (the FPT output layer consumes them).

    ``transformers.Trainer`` drops dataset columns that the model's forward signature does not name.
    """
    original = model.forward
    signature = inspect.signature(original)
    if "labels" in signature.parameters:
        return

    def forward(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    params = list(signature.parameters.values())
    labels = inspect.Parameter("labels", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    if any(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[at:]):
        return
    forward.__signature__ = signature.replace(parameters=[*params[:at], labels, *params[at:]])  # type: ignore[attr-defined]
    forward.__doc__ = original.__doc__
    model.forward = forward  # type: ignore[method-assign]


def _input_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """(batch, tokens) of the call's inputs; empty inputs are refused here, before any layer sees them."""
    candidates = (("inputs_embeds", kwargs.get("inputs_embeds")), ("input_ids", kwargs.get("input_ids", *args[:1])))
    for name, value in candidates:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            batch, tokens = int(value.shape[0]), int(value.shape[1])
            if batch == 0 or tokens == 0:
                raise ValueError(f"{name} is empty: shape {tuple(value.shape)} (batch and tokens must be >= 1).")
            return batch, tokens
    return None


def _active_output_layer(model: nn.Module) -> FPTOutputLayer | None:
    head = getattr(model, OUTPUT_LAYER_NAME, None)
    return head if isinstance(head, FPTOutputLayer) and head.active_name() is not None else None


def _before_forward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if isinstance(embedding, FPTInputLayer) and kwargs.get("inputs_embeds") is not None:
        kwargs["inputs_embeds"] = embedding.embed_features(kwargs["inputs_embeds"])
    shape = _input_shape(args, kwargs)
    tokens = shape[1] if shape is not None else None
    mask = kwargs.get("attention_mask")
    if shape is not None and isinstance(mask, torch.Tensor) and mask.dim() == 2 and tuple(mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; the inputs are (batch, tokens) = {shape}.")
    capacity: int | None = model.__dict__.get(_CAPACITY_ATTR)
    if tokens is not None and capacity is not None and tokens > capacity:
        raise ValueError(
            f"The input has {tokens} tokens but {type(model).__name__}'s learned positional embeddings hold "
            f"{capacity} positions. Use fewer or larger patches, or truncate the sequences."
        )
    head = _active_output_layer(model)
    if head is not None:
        head.pending = (kwargs.pop("labels", None), kwargs.get("attention_mask"))
    return args, kwargs


def _after_forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    head = _active_output_layer(model)
    if head is None:
        return output
    labels, attention_mask = head.pending
    head.pending = (None, None)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"The FPT output layer needs last_hidden_state; {type(model).__name__} returned none.")
    logits = head(hidden, attention_mask)
    loss = None
    if labels is not None:
        labels = labels.to(logits.device)
        if labels.numel() * logits.shape[-1] != logits.numel():
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)} "
                "(one class index per predicted value)."
            )
        classes = logits.shape[-1]
        message = f"labels must be integer class indices in [0, {classes}) (or -100 to ignore)"
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{message}; got dtype {labels.dtype}.")
        try:  # no range check up front: it would cost a device sync per step (CUDA asserts on its own)
            loss = nn.functional.cross_entropy(logits.reshape(-1, classes).float(), labels.reshape(-1))
        except IndexError as exc:
            raise ValueError(
                f"{message}; got values in [{labels.min().item()}, {labels.max().item()}] ({exc})."
            ) from exc
    return FPTOutput(
        loss=loss,
        logits=logits,
        last_hidden_state=hidden,
        hidden_states=getattr(output, "hidden_states", None),
        attentions=getattr(output, "attentions", None),
    )
