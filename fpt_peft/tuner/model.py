"""The FPT tuner: injects the layers of :mod:`.layer` into a Hugging Face model."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.constants import DUMMY_TARGET_MODULES
from torch import nn
from transformers.utils import ModelOutput

from . import integrity
from .config import FPTConfig
from .discovery import POSITION_NAMES, discover, is_norm, position_capacity
from .layer import FPTInputLayer, FPTLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer

logger = logging.getLogger("fpt_peft")

PREFIX = "fpt_"
OUTPUT_LAYER_NAME = "output_adapter"  # child of the HF model holding FPT output layers
_CAPACITY = "_fpt_position_capacity"  # longest input the learned positions index (None: unbounded); static per model
_BASE_PAD = "_fpt_base_pad_token_id"  # the model's own pad_token_id, restored when FPT leaves
_DIGESTS = "_fpt_expected_digests"  # tuner attribute: adapter name -> digest its pending load must match
_CUT_BLOCKS = "_fpt_cut_blocks"  # the blocks num_layers took off the model, with the config values to restore
_HEADS = ("score", "classifier", "lm_head")


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

    Trains layer norms, learned positional embeddings, a new input layer and an output layer of a frozen pretrained
    transformer. Created by ``peft.get_peft_model(model, FPTConfig(...))`` after ``import fpt_peft``.

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
    tuner_layer_cls = FPTLayer
    target_module_mapping: dict[str, list[str]] = {}  # noqa: RUF012 - discovery is structural
    _on_meta = False  # low_cpu_mem_usage of the injection in progress

    # ------------------------------------------------------------------ configuration
    def _prepare_adapter_config(self, given: FPTConfig, model_config: dict) -> FPTConfig:  # type: ignore[override]
        """Check the model and resolve targets on a copy of ``given``, which replaces it when anything was filled in
        (a config saved with an adapter is complete, and stays the very object passed, as peft keeps it)."""
        model = self.model
        peft_config = copy.deepcopy(given)
        hidden = hidden_size_of(model)
        model_type = model_config.get("model_type")
        if hidden is None and (peft_config.has_new_layers or peft_config.input_vocab_size):
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
        if peft_config.output_dim is not None and getattr(model, "base_model", model) is not model:
            raise ValueError(
                f"FPTConfig.output_dim adds an output layer on top of a backbone, but {type(model).__name__} already "
                "has a task head. Load the backbone with AutoModel, or use task_type='SEQ_CLS' without output_dim."
            )
        peft_config.base_hidden_size = hidden
        peft_config.base_model_type = model_type
        if peft_config.num_layers is not None:
            _keep_blocks(model, peft_config.num_layers)  # before targets are found: cut blocks have none
        if peft_config.target_modules is None:
            self._resolve_targets(peft_config)
        for qualified in peft_config.position_parameters or []:
            owner_name, _, param_name = qualified.rpartition(".")
            owner = _submodule(model, owner_name)
            if owner is None or not isinstance(getattr(owner, param_name, None), torch.Tensor):
                raise ValueError(
                    f"FPTConfig.position_parameters names {qualified!r}, which is not a parameter of "
                    f"{type(model).__name__}."
                )
        if peft_config == given:
            return given
        for name, config in list(self.peft_config.items()):
            if config is given:
                self.peft_config[name] = peft_config
        return peft_config

    def _resolve_targets(self, config: FPTConfig) -> None:
        """Fill the adapter's own config with the exact module and parameter names found in the model."""
        model = self.model
        skip = [_input_embedding_name(model), OUTPUT_LAYER_NAME]
        skip += [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in _HEADS]
        found = discover(model, skip=tuple(n for n in skip if n))
        names: list[str] = found.norms if config.train_layer_norms else []
        config.position_parameters = found.position_parameters if config.train_positions else []
        if config.train_positions:
            names = names + found.position_modules
            if not found.position_modules and not found.position_parameters:
                logger.warning(
                    "FPT: %s has no learned positional embeddings (searched for modules or parameters named %s; "
                    "rotary or relative positions have no parameters), so none are trained.",
                    type(model).__name__,
                    ", ".join(POSITION_NAMES),
                )
        names += (found.attention if config.train_attention else []) + (
            found.feedforward if config.train_feedforward else []
        )
        wants_groups = config.train_layer_norms or config.train_attention or config.train_feedforward
        has_io = config.has_new_layers or config.input_vocab_size or config.modules_to_save
        if not names and not config.position_parameters and wants_groups and not has_io:
            raise ValueError(
                f"FPT found nothing to train in {type(model).__name__}: searched for norm modules (LayerNorm, "
                "RMSNorm, *Norm classes with parameters), learned positional embeddings, and block linears. Pass "
                "FPTConfig(target_modules=[...]) with the names of the modules to train."
            )
        config.target_modules = names if names else DUMMY_TARGET_MODULES

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
            target.update_layer(adapter_name, peft_config, self._on_meta)
            return
        if isinstance(target, BaseTunerLayer):
            raise ValueError(f"{current_key} is already wrapped by another adapter type ({type(target).__name__}).")
        new_module = FPTModuleLayer(target, adapter_name, peft_config, self._on_meta)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(  # type: ignore[override]
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Inject norms and positions through peft, then add the parameter, input and output layers and the hooks.

        The config the caller passed is never changed (see :meth:`_prepare_adapter_config`).
        """
        self._on_meta = low_cpu_mem_usage
        try:
            super().inject_adapter(
                model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
                state_dict=state_dict,
            )
            config = self.peft_config[adapter_name]
            assert isinstance(config, FPTConfig)
            self._add_parameter_layers(model, adapter_name, config)
            self._add_input_layer(model, adapter_name, config)
            self._add_output_layer(model, adapter_name, config)
        finally:
            self._on_meta = False
        # The digest of a loaded config belongs to the load in progress: it moves off the config (never stale there)
        # to the tuner, and is checked once against the weights in _remap_adapter_state_dict_for_load.
        config = self.peft_config[adapter_name]
        digest, config.weights_sha256 = config.weights_sha256, None  # type: ignore[attr-defined]
        self.__dict__.setdefault(_DIGESTS, {})[adapter_name] = digest
        if not _hooks_installed(model):
            model.register_forward_pre_hook(_before_forward, with_kwargs=True)
            model.register_forward_hook(_after_forward, with_kwargs=True)
        model.__dict__[_CAPACITY] = position_capacity(model, discover(model).position_modules)

    def _add_parameter_layers(self, model: nn.Module, adapter_name: str, config: FPTConfig) -> None:
        for qualified in config.position_parameters or []:
            owner_name, _, param_name = qualified.rpartition(".")
            owner = model.get_submodule(owner_name)
            if isinstance(owner, FPTParameterLayer):
                owner.update_layer(adapter_name, config, self._on_meta)
                continue
            parent_name, _, child = owner_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FPTParameterLayer(owner, param_name, adapter_name, config, self._on_meta))

    def _add_input_layer(self, model: nn.Module, adapter_name: str, config: FPTConfig) -> None:
        if config.input_dim is None and config.input_vocab_size is None:
            return
        embedding = model.get_input_embeddings()  # type: ignore[operator]
        if isinstance(embedding, FPTInputLayer):
            embedding.update_layer(adapter_name, config, self._on_meta)
        else:
            hidden = config.base_hidden_size or 0
            layer = FPTInputLayer(embedding, adapter_name, config, hidden, self._on_meta)
            model.set_input_embeddings(layer)  # type: ignore[operator]
        model_config: Any = model.config
        if _BASE_PAD not in model.__dict__:  # what unload restores
            model.__dict__[_BASE_PAD] = getattr(model_config, "pad_token_id", None)
        if adapter_name in self.active_adapters and (
            config.input_vocab_size is not None or getattr(model_config, "pad_token_id", None) is None
        ):
            # Sequence-classification heads find the last real token through config.pad_token_id (GPT-2 refuses
            # batches > 1 without one); with a new vocabulary only the new padding id is meaningful.
            model_config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0

    def _add_output_layer(self, model: nn.Module, adapter_name: str, config: FPTConfig) -> None:
        if config.output_dim is None:
            return
        head = getattr(model, OUTPUT_LAYER_NAME, None)
        if isinstance(head, FPTOutputLayer):
            head.update_layer(adapter_name, config, _last_hidden_weight(model), self._on_meta)
        else:
            hidden = config.base_hidden_size or 0
            head = FPTOutputLayer(adapter_name, config, hidden, _last_hidden_weight(model), self._on_meta)
            model.add_module(OUTPUT_LAYER_NAME, head)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's rule for new layers (float32 on a float16/bfloat16 base unless turned off); copies of base modules
        keep the base dtype, as LN tuning's do (an up-cast norm breaks a bf16 forward)."""
        if not autocast_adapter_dtype:
            return
        for module in self.model.modules():
            if isinstance(module, (FPTInputLayer, FPTOutputLayer)):
                container = getattr(module, module.adapter_layer_names[0])
                if adapter_name in container:
                    for param in container[adapter_name].parameters():
                        if param.dtype in (torch.float16, torch.bfloat16):
                            param.data = param.data.to(torch.float32)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name``: only its weights train, and the model computes with them."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        names = [adapter_name] if isinstance(adapter_name, str) else adapter_name
        config = self.peft_config.get(names[0]) if names else None
        if isinstance(config, FPTConfig) and config.input_vocab_size is not None:
            self.model.config.pad_token_id = config.pad_token_id

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name``; the last FPT adapter takes its hooks and the padding id it wrote with it."""
        super().delete_adapter(adapter_name)
        if not any(isinstance(c, FPTConfig) for c in self.peft_config.values()):
            _remove_side_effects(self.model)

    # ------------------------------------------------------------------ merge / unload
    def _unload_and_optionally_merge(  # type: ignore[override]
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        vocabulary: FPTConfig | None = None
        if merge:
            configs = {n: self.peft_config[n] for n in adapter_names or self.active_adapters}
            blocked = sorted(n for n, c in configs.items() if isinstance(c, FPTConfig) and c.has_new_layers)
            if blocked:
                raise ValueError(
                    f"Adapter(s) {blocked} have a new continuous input layer (input_dim) or an FPT output layer "
                    "(output_dim), which a plain transformers model has no place for, so merge_and_unload cannot "
                    "produce one. Keep the PeftModel (merge_adapter() writes norms and positions into the base and "
                    "keeps the new layers in use)."
                )
            vocabulary = next((c for c in configs.values() if getattr(c, "input_vocab_size", None)), None)  # type: ignore[assignment]
            if vocabulary is not None and self._tied_input_embedding():
                raise ValueError(
                    f"{type(self.model).__name__} ties its output embedding to the input embedding, so the new FPT "
                    "vocabulary cannot replace it in a plain model. Merge it into a model without tied embeddings."
                )
        model: nn.Module = super()._unload_and_optionally_merge(  # type: ignore[func-returns-value,assignment]
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        _remove_side_effects(model)
        if vocabulary is not None:  # the new vocabulary is now the model's own
            text_config = model.config.get_text_config()  # type: ignore[operator,union-attr]
            text_config.vocab_size = vocabulary.input_vocab_size
            model.config.pad_token_id = vocabulary.pad_token_id  # type: ignore[union-attr]
            if text_config is not model.config:
                text_config.pad_token_id = vocabulary.pad_token_id
        return model

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(child, FPTInputLayer) and new_module is not child.get_base_layer():
            setattr(parent, child_name, new_module)  # the merged vocabulary keeps its own weights
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _tied_input_embedding(self) -> bool:
        model: Any = self.model
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        inner = model.get_input_embeddings()
        inner = inner.get_base_layer() if isinstance(inner, BaseTunerLayer) else inner
        return output is not None and getattr(output, "weight", None) is getattr(inner, "weight", object())

    # ------------------------------------------------------------------ loading
    @classmethod
    def _remap_adapter_state_dict_for_load(  # type: ignore[override]
        cls, model: nn.Module, config: FPTConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """peft's structural remapping, then: the weights must be exactly the adapter's (no key missing or extra) and,
        when the loaded config recorded a digest (kept by :meth:`inject_adapter` until here), the weights saved with
        it."""
        tuner = getattr(model, "base_model", None)
        digests = tuner.__dict__.get(_DIGESTS, {}) if isinstance(tuner, FPTModel) else {}
        recorded = digests.pop(adapter_name, None)
        if recorded is not None and integrity.digest(state_dict) != recorded:
            raise integrity.AdapterIntegrityError(
                "The adapter weights do not belong to its adapter_config.json: the config records weights with "
                f"digest {recorded[:16]}..., the weights read have another. They come from different saves (a partial "
                "copy, an edited folder, or a save interrupted half-way); save the adapter again."
            )
        remapped: dict[str, torch.Tensor] = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        expected = _adapter_keys(model, adapter_name)
        given = {k.removeprefix("base_model.model.") for k in remapped}
        if given != expected:
            raise ValueError(
                "The FPT adapter weights do not match its config for this model: missing "
                f"{_first(expected - given)}, unexpected {_first(given - expected)}. The adapter file is incomplete "
                "or belongs to another adapter or model."
            )
        return remapped


# ---------------------------------------------------------------------- helpers
def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _input_embedding_name(model: nn.Module) -> str:
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
    return next((name for name, module in model.named_modules() if module is embedding), "")


def _last_hidden_weight(model: nn.Module) -> torch.Tensor:
    """A weight where the last hidden state is computed (the last norm's, else the last floating-point weight): new
    output layers take its device and dtype."""
    norms = [m for m in model.modules() if is_norm(m)]
    params = [p for p in (norms[-1] if norms else model).parameters() if p.is_floating_point()]
    return params[-1] if params else torch.empty(0)


def _adapter_keys(model: nn.Module, adapter_name: str) -> set[str]:
    """State-dict keys (without peft's prefix) of ``adapter_name``'s FPT weights and saved modules in ``model``."""
    keys = set()
    for name in model.state_dict():
        short = name.removeprefix("base_model.model.")
        parts = short.split(".")
        for i, part in enumerate(parts[:-1]):
            if (part.startswith(PREFIX) or part == "modules_to_save") and parts[i + 1] == adapter_name:
                keys.add(short)
                break
    return keys


def _first(names: set[str], count: int = 5) -> str:
    ordered = sorted(names)
    return str(ordered[:count]) + (" ..." if len(ordered) > count else "")


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the list of the transformer blocks of ``model``: its one ``ModuleList`` of
    ``config.num_hidden_layers`` modules."""
    config: Any = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    depth = getattr(text_config, "num_hidden_layers", None)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n and len(m) == depth]
    if not isinstance(depth, int) or len(found) != 1:
        raise ValueError(
            f"FPTConfig.num_layers: cannot tell the transformer blocks of {type(model).__name__} (looked for one "
            f"ModuleList of config.num_hidden_layers={depth!r} modules, found {[n for n, _ in found]})."
        )
    return found[0]


def _keep_blocks(model: nn.Module, keep: int) -> None:
    """Cut ``model`` to its first ``keep`` transformer blocks (``FPTConfig.num_layers``); the rest are kept aside for
    :func:`_remove_side_effects` to put back."""
    name, blocks = block_list(model)
    depth = len(blocks)
    if keep > depth:
        held = " (an FPT adapter already on it keeps that many)" if _CUT_BLOCKS in model.__dict__ else ""
        raise ValueError(
            f"This FPT adapter was made for the first {keep} transformer blocks of its base (FPTConfig.num_layers), "
            f"but {type(model).__name__} has {depth}{held}. Load it onto a base with at least {keep} blocks."
        )
    if keep == depth:
        return
    if _CUT_BLOCKS in model.__dict__:
        raise ValueError(
            f"FPTConfig.num_layers={keep}: another FPT adapter on this model already keeps {depth} blocks; the "
            "adapters of one model must keep the same number."
        )
    config: Any = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None)
    model.__dict__[_CUT_BLOCKS] = (name, list(blocks[keep:]), depth, layer_types)
    del blocks[keep:]
    text_config.num_hidden_layers = keep
    if isinstance(layer_types, list):
        text_config.layer_types = layer_types[:keep]


def _hooks_installed(model: nn.Module) -> bool:
    return any(hook is _before_forward for hook in model._forward_pre_hooks.values())


def _remove_side_effects(model: nn.Module) -> None:
    """Take FPT's forward hooks and bookkeeping off ``model``, delete its output layers and put back cut blocks."""
    for hooks, with_kwargs in (
        (model._forward_pre_hooks, model._forward_pre_hooks_with_kwargs),
        (model._forward_hooks, model._forward_hooks_with_kwargs),
    ):
        for key, hook in list(hooks.items()):
            if hook in (_before_forward, _after_forward):
                del hooks[key]
                with_kwargs.pop(key, None)
    if isinstance(getattr(model, OUTPUT_LAYER_NAME, None), FPTOutputLayer):
        delattr(model, OUTPUT_LAYER_NAME)
    model.__dict__.pop(_CAPACITY, None)
    if _CUT_BLOCKS in model.__dict__:
        name, cut, depth, layer_types = model.__dict__.pop(_CUT_BLOCKS)
        blocks: Any = model.get_submodule(name)
        blocks.extend(cut)
        config: Any = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        text_config.num_hidden_layers = depth
        if layer_types is not None:
            text_config.layer_types = layer_types
    if _BASE_PAD in model.__dict__:
        model.config.pad_token_id = model.__dict__.pop(_BASE_PAD)  # type: ignore[union-attr]


# ---------------------------------------------------------------------- forward hooks on the HF model
# Everything a call needs travels in the call's own arguments: the pre-hook maps `inputs_embeds` through the input
# layer, the post-hook reads `labels` and `attention_mask` from the kwargs it is given. Nothing is stored on a module.
@functools.lru_cache(maxsize=64)
def _takes_labels(forward: Any) -> bool:
    parameters = inspect.signature(forward).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == "labels" for p in parameters)


def _before_forward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if isinstance(embedding, FPTInputLayer) and kwargs.get("inputs_embeds") is not None:
        kwargs["inputs_embeds"] = embedding.embed_features(kwargs["inputs_embeds"])
    shape = None
    for name, value in (
        ("inputs_embeds", kwargs.get("inputs_embeds")),
        ("input_ids", kwargs.get("input_ids", *args[:1])),
    ):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            shape = int(value.shape[0]), int(value.shape[1])
            if 0 in shape:
                raise ValueError(f"{name} is empty: shape {tuple(value.shape)} (batch and tokens must be >= 1).")
            break
    mask = kwargs.get("attention_mask")
    if shape is not None and isinstance(mask, torch.Tensor) and mask.dim() == 2 and tuple(mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; the inputs are (batch, tokens) = {shape}.")
    capacity: int | None = model.__dict__.get(_CAPACITY)
    if shape is not None and capacity is not None and shape[1] > capacity:
        raise ValueError(
            f"The input has {shape[1]} tokens but {type(model).__name__}'s learned positional embeddings hold "
            f"{capacity} positions. Use fewer or larger patches, or truncate the sequences."
        )
    head = getattr(model, OUTPUT_LAYER_NAME, None)
    if "labels" in kwargs and isinstance(head, FPTOutputLayer) and not _takes_labels(type(model).forward):
        raise ValueError(f"{type(model).__name__}.forward takes no **kwargs, so it cannot pass labels to FPT's head.")
    return args, kwargs


def _after_forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    head = getattr(model, OUTPUT_LAYER_NAME, None)
    if not isinstance(head, FPTOutputLayer) or head.active_name() is None:
        return output
    hidden = output.get("last_hidden_state") if isinstance(output, ModelOutput) else output[0]
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(f"The FPT output layer needs last_hidden_state; {type(model).__name__} returned none.")
    logits = head(hidden, kwargs.get("attention_mask"))
    labels = kwargs.get("labels")
    loss = None if labels is None else _loss(logits, labels)
    return FPTOutput(
        loss=loss,
        logits=logits,
        last_hidden_state=hidden,
        hidden_states=getattr(output, "hidden_states", None),
        attentions=getattr(output, "attentions", None),
    )


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.to(logits.device)
    classes = logits.shape[-1]
    if labels.numel() * classes != logits.numel():
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)} "
            "(one class index per predicted value)."
        )
    message = f"labels must be integer class indices in [0, {classes}) (or -100 to ignore)"
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{message}; got dtype {labels.dtype}.")
    try:  # no range check up front: it would cost a device sync per step (CUDA asserts on its own)
        return nn.functional.cross_entropy(logits.reshape(-1, classes).float(), labels.reshape(-1))
    except IndexError as exc:
        raise ValueError(f"{message}; got values in [{labels.min().item()}, {labels.max().item()}] ({exc}).") from exc
