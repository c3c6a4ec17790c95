"""The FPT tuner: injects the layers of :mod:`.layer` into a Hugging Face model.

Norms, positions and (for ablations) block linears are replaced by peft's usual injection. The new input and output
layers are different: continuous tokens arrive as the model's ``inputs_embeds`` and the output layer reads its final
hidden states, and neither passes through a module of the model that could be replaced. So two forward hooks on the
model carry them (handles kept on the tuner, removed on unload): the pre-hook maps ``inputs_embeds`` through the input
layer, the post-hook applies the output layer and returns :class:`FPTOutput`. This is the simplest design that passes
peft's generic checks on the model the user gave: a wrapper model class with explicit input and output modules would
replace that model, its class and its state-dict names. ``transformers.Trainer`` needs nothing special with
``task_type="SEQ_CLS"`` (the model's own head is the output layer); on a backbone with ``output_dim`` it needs
``label_names=["labels"]``, because Trainer reads label names from the base model class's ``forward`` signature,
which no tuner can change.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _find_minimal_target_modules
from peft.utils.constants import DUMMY_TARGET_MODULES
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.utils import ModelOutput

from .. import tuner_checks
from ..adapter_files import CheckedAdapterLoads
from ..blocks import BlockCut, block_list, text_config_of
from ..loss import fpt_loss
from .config import FPTConfig
from .discovery import POSITION_NAMES, base_fingerprint, discover, hidden_size_of, is_norm, position_capacity
from .layer import FPTInputLayer, FPTLayer, FPTModuleLayer, FPTOutputLayer, FPTParameterLayer

logger = logging.getLogger("fpt_peft")

PREFIX = "fpt_"
OUTPUT_LAYER_NAME = "output_adapter"  # child of the HF model holding FPT output layers
_HEADS = ("score", "classifier", "lm_head")
_UNSET = object()


@dataclass
class FPTOutput(ModelOutput):
    """Output of a backbone with an FPT output layer: ``logits`` (and ``loss`` when ``labels`` were given)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class FPTModel(CheckedAdapterLoads, BaseTuner):
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
    _cut: BlockCut | None = None  # the blocks num_layers takes off
    _hook_handles: tuple[RemovableHandle, ...] = ()
    _base_pad_token_id: Any = _UNSET  # the model's own pad_token_id, restored when FPT leaves
    _position_capacity: int | None = None  # longest input the learned positions index (None: unbounded)

    # ------------------------------------------------------------------ configuration and model preparation
    def _prepare_adapter_config(self, peft_config: FPTConfig, model_config: dict) -> FPTConfig:  # type: ignore[override]
        """Check that the adapter fits the model and write what it resolves into ``peft_config`` itself, as LoRA
        does: the base's type and width and, unless given, the targets (suffixes that select exactly the modules
        discovery found)."""
        model, hidden, model_type = self.model, hidden_size_of(self.model), model_config.get("model_type")
        tuner_checks.check_model_fits(peft_config, model, hidden, model_type)
        cut = self._blocks_to_cut(peft_config.num_layers)
        peft_config.base_hidden_size, peft_config.base_model_type = hidden, model_type
        if peft_config.target_modules is None:
            self._resolve_targets(peft_config, cut)
        tuner_checks.check_position_parameters(peft_config, model)
        return peft_config

    def _blocks_to_cut(self, keep: int | None) -> tuple[str, ...]:
        """Names of the blocks ``num_layers=keep`` will take off (none when it keeps them all), or a ValueError."""
        if keep is None:
            return ()
        name, blocks = block_list(self.model)
        if keep > len(blocks):
            held = " (an FPT adapter already on it keeps that many)" if self._cut else ""
            raise ValueError(
                f"This FPT adapter was made for the first {keep} transformer blocks of its base "
                f"(FPTConfig.num_layers), but {type(self.model).__name__} has {len(blocks)}{held}. Load it onto a "
                f"base with at least {keep}."
            )
        if keep < len(blocks) and self._cut is not None:
            raise ValueError(
                f"FPTConfig.num_layers={keep}: another FPT adapter on this model already keeps {len(blocks)} blocks; "
                "the adapters of one model must keep the same number."
            )
        return tuple(f"{name}.{i}" for i in range(keep, len(blocks)))

    def _resolve_targets(self, config: FPTConfig, cut: tuple[str, ...]) -> None:
        """Fill ``config`` with the discovered targets: module suffixes (peft's ``_find_minimal_target_modules``)
        and qualified names of position parameters."""
        model = self.model
        skip = [_input_embedding_name(model), OUTPUT_LAYER_NAME, *cut]
        skip += [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in _HEADS]
        found = discover(model, skip=tuple(n for n in skip if n))
        names = found.norms if config.train_layer_norms else []
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
        has_io = not config.mergeable or config.input_vocab_size or config.modules_to_save
        if not names and not config.position_parameters and wants_groups and not has_io:
            raise ValueError(
                f"FPT found nothing to train in {type(model).__name__}: searched for norm modules (LayerNorm, "
                "RMSNorm, *Norm classes with parameters), learned positional embeddings, and block linears. Pass "
                "FPTConfig(target_modules=[...]) with the names of the modules to train."
            )
        if not names:
            config.target_modules = DUMMY_TARGET_MODULES
            return
        kept = [n for n, _ in model.named_modules() if n and not any(n == c or n.startswith(c + ".") for c in cut)]
        config.target_modules = sorted(_find_minimal_target_modules(names, [n for n in kept if n not in names]))

    def _prepare_model(self, peft_config: FPTConfig, model: nn.Module) -> None:  # type: ignore[override]
        """Take the blocks after ``num_layers`` off the model (kept aside on the tuner)."""
        if self._blocks_to_cut(peft_config.num_layers):
            self._cut = BlockCut.of(model, peft_config.num_layers)  # type: ignore[arg-type]
            self._apply_cut(True)

    def _apply_cut(self, cut: bool) -> None:
        if self._cut is not None:
            self._cut.apply(self.model, cut)

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
        """Inject norms and positions through peft, then add the parameter, input and output layers and the hooks."""
        self._on_meta = low_cpu_mem_usage
        config: Any = self.peft_config[adapter_name]
        recorded, found = config.base_fingerprint, base_fingerprint(model)
        try:
            super().inject_adapter(
                model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
                state_dict=state_dict,
            )
            self._add_parameter_layers(model, adapter_name, config)
            self._add_input_layer(model, adapter_name, config)
            self._add_output_layer(model, adapter_name, config)
        finally:
            self._on_meta = False
        self.hold_read_digest(adapter_name, config)
        # The adapter now describes this base; weights loaded next were trained on the base recorded before.
        config.base_fingerprint = found or recorded
        if recorded != config.base_fingerprint:
            name = type(model).__name__
            self.check_next_load(
                adapter_name, functools.partial(tuner_checks.check_base_fingerprint, config, recorded, found, name)
            )
        if not self._hook_handles:
            self._hook_handles = (
                model.register_forward_pre_hook(self._map_inputs, with_kwargs=True),
                model.register_forward_hook(self._apply_output_layer, with_kwargs=True),
            )
        self._position_capacity = position_capacity(model, discover(model).position_modules)

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
            layer = FPTInputLayer(embedding, adapter_name, config, config.base_hidden_size or 0, self._on_meta)
            model.set_input_embeddings(layer)  # type: ignore[operator]
        model_config: Any = model.config
        if self._base_pad_token_id is _UNSET:
            self._base_pad_token_id = getattr(model_config, "pad_token_id", None)
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

    # ------------------------------------------------------------------ adapters: switch, disable, delete, mix
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name``: only its weights train, and the model computes with them."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        names = [adapter_name] if isinstance(adapter_name, str) else adapter_name
        config = self.peft_config.get(names[0]) if names else None
        if isinstance(config, FPTConfig) and config.input_vocab_size is not None:
            self.model.config.pad_token_id = config.pad_token_id

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """Enable or disable every adapter layer; disabled, the model is the plain base with all its blocks."""
        super()._enable_adapter_layers(enabled)
        self._apply_cut(enabled)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name``; the last FPT adapter takes its hooks, cut and padding id with it."""
        super().delete_adapter(adapter_name)
        if not any(isinstance(c, FPTConfig) for c in self.peft_config.values()):
            self._remove_side_effects(keep_cut=False)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """peft's mixed-adapter batches: ``adapter_names`` (one per row) reaches every FPT layer and saved module for
        the duration of the call, as LoRA's does."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        names = tuner_checks.check_adapter_names(adapter_names, self.peft_config, self.training, self._cut is not None)
        beams = kwargs.get("num_beams")
        if isinstance(beams, int) and beams > 1:  # generate repeats each row once per beam
            names = [name for name in names for _ in range(beams)]
        handles = [
            module.register_forward_pre_hook(functools.partial(_pass_adapter_names, names=names), with_kwargs=True)
            for module in self.model.modules()
            if isinstance(module, (FPTLayer, AuxiliaryTrainingWrapper))
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

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
            blocked = sorted(n for n, c in configs.items() if isinstance(c, FPTConfig) and not c.mergeable)
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
            self._apply_cut(True)  # the merged model computes what the adapter computed: with the kept blocks only
        model: nn.Module = super()._unload_and_optionally_merge(  # type: ignore[func-returns-value,assignment]
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        self._remove_side_effects(keep_cut=merge)
        if vocabulary is not None:  # the new vocabulary is now the model's own
            text_config = text_config_of(model)
            text_config.vocab_size = vocabulary.input_vocab_size
            model.config.pad_token_id = vocabulary.pad_token_id  # type: ignore[union-attr]
            if text_config is not model.config:
                text_config.pad_token_id = vocabulary.pad_token_id
        return model

    def _remove_side_effects(self, keep_cut: bool) -> None:
        """Take FPT's hooks, output layers and padding id off the model; put back cut blocks unless ``keep_cut``."""
        model = self.model
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = ()
        if isinstance(getattr(model, OUTPUT_LAYER_NAME, None), FPTOutputLayer):
            delattr(model, OUTPUT_LAYER_NAME)
        if not keep_cut:
            self._apply_cut(False)
        self._cut = None
        if self._base_pad_token_id is not _UNSET:
            model.config.pad_token_id = self._base_pad_token_id  # type: ignore[union-attr]
            self._base_pad_token_id = _UNSET

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

    # ------------------------------------------------------------------ forward hooks on the HF model
    # Everything a call needs travels in the call's own arguments; nothing is stored on a module.
    def _map_inputs(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict]:
        """Forward pre-hook: continuous ``inputs_embeds`` through the input layer, and early checks of the shapes."""
        embedding = model.get_input_embeddings()  # type: ignore[operator]
        if isinstance(embedding, FPTInputLayer) and kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = embedding(kwargs["inputs_embeds"], features=True)
        head = isinstance(getattr(model, OUTPUT_LAYER_NAME, None), FPTOutputLayer)
        tuner_checks.check_forward_inputs(model, args, kwargs, self._position_capacity, head)
        return args, kwargs

    def _apply_output_layer(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        """Forward hook: the FPT output layer on the final hidden states, and the loss when ``labels`` were given."""
        head = getattr(model, OUTPUT_LAYER_NAME, None)
        if not isinstance(head, FPTOutputLayer) or not (head.adapter_for_forward() or _is_mixed(head)):
            return output
        hidden = output.get("last_hidden_state") if isinstance(output, ModelOutput) else output[0]
        if not isinstance(hidden, torch.Tensor):
            raise ValueError(f"The FPT output layer needs last_hidden_state; {type(model).__name__} returned none.")
        logits = head(hidden, kwargs.get("attention_mask"))
        labels = kwargs.get("labels")
        return FPTOutput(
            loss=None if labels is None else _loss(logits, labels),
            logits=logits,
            last_hidden_state=hidden,
            hidden_states=getattr(output, "hidden_states", None),
            attentions=getattr(output, "attentions", None),
        )


# ---------------------------------------------------------------------- helpers
def _pass_adapter_names(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, {**kwargs, "adapter_names": names}


def _is_mixed(head: FPTOutputLayer) -> bool:
    """Whether a mixed-adapter call is in progress (its pre-hook on ``head`` is registered)."""
    return any(getattr(h, "func", None) is _pass_adapter_names for h in head._forward_pre_hooks.values())


def _input_embedding_name(model: nn.Module) -> str:
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
    return next((name for name, module in model.named_modules() if module is embedding), "")


def _last_hidden_weight(model: nn.Module) -> torch.Tensor:
    """A weight where the last hidden state is computed (the last norm's, else the last floating-point weight): new
    output layers take its device and dtype."""
    norms = [m for m in model.modules() if is_norm(m)]
    params = [p for p in (norms[-1] if norms else model).parameters() if p.is_floating_point()]
    return params[-1] if params else torch.empty(0)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.to(logits.device)
    tuner_checks.check_labels(logits, labels)
    try:
        return fpt_loss(logits, labels)
    except IndexError as exc:
        found = f"got values in [{labels.min().item()}, {labels.max().item()}] ({exc})"
        raise ValueError(f"{tuner_checks.LABEL_MESSAGE.format(classes=logits.shape[-1])}; {found}.") from exc
