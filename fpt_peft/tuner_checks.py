"""Checks of what reaches the FPT tuner from users and files, each error naming the argument: config values (sizes
bounded, so a forged ``adapter_config.json`` cannot make peft allocate huge layers), the model an adapter is put on,
and the inputs and labels of a forward."""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import warnings
from typing import Any

import torch
from peft.utils import TaskType

from .adapter_files import is_digest

MAX_SIZE = 2**24  # bound on sizes read from untrusted adapter_config.json files (a 2**40-row embedding would OOM)
EMBEDDING_INITS = ("scaled", "normal")
_FLAGS = "train_layer_norms train_positions train_input train_output train_attention train_feedforward inference_mode"
_REQUIRED_SIZES = ("output_tokens", "values_per_token")
_SIZES = (*_REQUIRED_SIZES, "input_dim", "input_vocab_size", "output_dim", "base_hidden_size", "num_layers")
_STRS = ("base_model_name_or_path", "revision", "peft_version", "base_model_type")
_QUALIFIED_PARAMETER = re.compile(r"[^.\s]+(\.[^.\s]+)+")  # "module.path.parameter"


def check_config(self: Any, weights_sha256: object = None) -> None:
    """Raise a TypeError or ValueError naming the first field of the FPT config ``self`` that is out of bounds;
    normalise list fields and paths in place (peft's configs take sets and ``os.PathLike`` too)."""
    if weights_sha256 is not None and not is_digest(weights_sha256):
        raise ValueError(f"FPTConfig.weights_sha256 must be 64 lowercase hex digits, got {weights_sha256!r}.")
    for name in _FLAGS.split():
        if not isinstance(getattr(self, name), bool):
            raise TypeError(f"FPTConfig.{name} must be a bool, got {_shown(getattr(self, name))}.")
    if isinstance(self.base_model_name_or_path, os.PathLike):
        self.base_model_name_or_path = os.fspath(self.base_model_name_or_path)
    for name in _STRS:
        if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
            raise TypeError(f"FPTConfig.{name} must be a str or None, got {_shown(getattr(self, name))}.")
    for name in _SIZES:
        value = getattr(self, name)
        if (value is not None or name in _REQUIRED_SIZES) and not (_is_int(value) and 1 <= value <= MAX_SIZE):
            raise ValueError(f"FPTConfig.{name} must be an int in [1, {MAX_SIZE}], got {value!r}.")
    if self.input_dim is not None and self.input_vocab_size is not None:
        raise ValueError(
            "FPTConfig takes either input_dim (continuous inputs, passed as inputs_embeds) or input_vocab_size "
            f"(symbols, passed as input_ids), not both; got input_dim={self.input_dim}, "
            f"input_vocab_size={self.input_vocab_size}."
        )
    for product in ("output_dim", "output_tokens"):
        if (getattr(self, product) or 1) * self.values_per_token > MAX_SIZE:
            raise ValueError(f"FPTConfig.{product} * values_per_token must be at most {MAX_SIZE}.")
    upper = self.input_vocab_size or MAX_SIZE
    if self.pad_token_id is not None and not (_is_int(self.pad_token_id) and 0 <= self.pad_token_id < upper):
        raise ValueError(f"FPTConfig.pad_token_id must be an int in [0, {upper}), got {self.pad_token_id!r}.")
    gain = self.input_init_gain
    if not (isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain)) or not (
        0 < gain < 1e3
    ):
        raise ValueError(f"FPTConfig.input_init_gain must be a finite number in (0, 1000), got {gain!r}.")
    _check_input_options(self)
    mapping = self.auto_mapping
    if mapping is not None and not (isinstance(mapping, dict) and all(isinstance(k, str) for k in mapping)):
        raise TypeError(f"FPTConfig.auto_mapping must be a dict of str to str or None, got {mapping!r}.")
    if mapping is not None and not all(isinstance(v, str) for v in mapping.values()):
        raise TypeError(f"FPTConfig.auto_mapping must be a dict of str to str or None, got {mapping!r}.")
    if self.task_type == TaskType.SEQ_CLS and self.output_dim is not None:
        raise ValueError(
            "FPTConfig.output_dim adds an FPT output layer to a backbone model (AutoModel, task_type=None); with "
            "task_type='SEQ_CLS' the model's own classification head is the output layer. Drop one of them."
        )
    if self.task_type == TaskType.SEQ_CLS and not self.train_output:
        raise ValueError(
            "train_output=False is not supported with task_type='SEQ_CLS': peft always trains and saves the "
            "classification head. For the output-frozen ablation use a backbone (AutoModel) with output_dim."
        )
    for name in ("target_modules", "exclude_modules", "modules_to_save", "position_parameters"):
        value = getattr(self, name)
        if isinstance(value, str) and name in ("target_modules", "exclude_modules"):
            try:
                re.compile(value)  # peft matches a single string as a regular expression
            except re.error as exc:
                raise ValueError(f"FPTConfig.{name} is not a valid regular expression ({exc}): {value!r}.") from exc
        elif value is not None:
            setattr(self, name, _names(name, value, allow_empty=name != "target_modules"))
    if self.base_init not in (None, "pretrained", "random", "shuffled"):
        raise ValueError(
            f"FPTConfig.base_init must be 'pretrained', 'random', 'shuffled' or None, got {self.base_init!r}."
        )
    seed = self.base_init_seed
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
        raise ValueError(f"FPTConfig.base_init_seed must be an int in [0, 2**64) or None, got {seed!r}.")
    sample = self.base_fingerprint
    if sample is not None and not (
        isinstance(sample, list)
        and len(sample) <= 64
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in sample)
    ):
        raise ValueError(f"FPTConfig.base_fingerprint must be a list of at most 64 finite numbers, got {sample!r}.")
    for qualified in self.position_parameters or []:
        if not _QUALIFIED_PARAMETER.fullmatch(qualified):
            raise ValueError(
                "FPTConfig.position_parameters must hold qualified parameter names such as "
                f"'embeddings.position_embeddings', got {qualified!r}."
            )


def _check_input_options(self: Any) -> None:
    """Check ``input_dropout`` and ``embedding_init``, and that the config has the input layer they act on."""
    rate = self.input_dropout
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 <= rate < 1.0):
        raise ValueError(f"FPTConfig.input_dropout must be a number in [0, 1), got {rate!r}.")
    if rate > 0 and self.input_dim is None:
        raise ValueError(
            f"FPTConfig.input_dropout={rate!r} acts after the continuous input layer (input_dim), which this "
            f"config does not have (input_dim=None, input_vocab_size={self.input_vocab_size!r}); the official "
            "code has no dropout after a symbol embedding. Leave input_dropout at 0.0."
        )
    init = self.embedding_init
    if not isinstance(init, str) or init not in EMBEDDING_INITS:
        raise ValueError(f"FPTConfig.embedding_init must be one of {list(EMBEDDING_INITS)}, got {init!r}.")
    if init != "scaled" and self.input_vocab_size is None:
        raise ValueError(
            f"FPTConfig.embedding_init={init!r} initialises a new symbol embedding (input_vocab_size), which this "
            f"config does not have (input_vocab_size=None, input_dim={self.input_dim!r}). Leave it 'scaled'."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _names(name: str, value: Any, allow_empty: bool) -> list[str]:
    """``value`` as a list of non-empty strings, or a TypeError / ValueError naming the field."""
    if not isinstance(value, (list, set, tuple)):
        raise TypeError(f"FPTConfig.{name} must be a list of str, got {_shown(value)}.")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"FPTConfig.{name} must hold non-empty strings only, got {bad[:3]!r}.")
    if not value and not allow_empty:
        raise ValueError(
            f"FPTConfig.{name} is an empty list, which matches nothing; leave it None to let FPT discover the modules."
        )
    return sorted(value) if isinstance(value, (set, tuple)) else list(value)


def check_model_fits(config: Any, model: torch.nn.Module, hidden: int | None, model_type: str | None) -> None:
    """Raise a ValueError unless the FPT ``config`` can be put on ``model`` (of width ``hidden``)."""
    name = type(model).__name__
    if hidden is None and (not config.mergeable or config.input_vocab_size):
        raise ValueError(
            f"FPT cannot tell the width of {name} (no config.hidden_size and no input embedding), so it cannot size a "
            "new input or output layer."
        )
    if config.base_hidden_size is not None and config.base_hidden_size != hidden:
        raise ValueError(
            f"This FPT adapter was made for a base model of width {config.base_hidden_size} "
            f"({config.base_model_type}); the model it is loaded onto has width {hidden} ({model_type})."
        )
    if config.base_model_type is not None and model_type and config.base_model_type != model_type:
        raise ValueError(
            f"This FPT adapter was made for a {config.base_model_type!r} model; the model it is loaded onto is a "
            f"{model_type!r} model. Load it onto the architecture it was trained on."
        )
    if config.output_dim is not None and getattr(model, "base_model", model) is not model:
        raise ValueError(
            f"FPTConfig.output_dim adds an output layer on top of a backbone, but {name} already has a task head. "
            "Load the backbone with AutoModel, or use task_type='SEQ_CLS' without output_dim."
        )


def check_base_fingerprint(
    config: Any, recorded: list[float] | None, found: list[float] | None, name: str, weights: object = None
) -> None:
    """Refuse (a random base) or warn (any other) when the frozen weights of the base model ``name`` (sampled:
    ``found``) differ from those the adapter of ``config`` was trained on (``recorded``): it computes something else
    on this base. Differences of a dtype change (bf16 rounding) pass. ``weights``, the adapter weights being loaded,
    are not needed: the check is of the base."""
    if recorded is None or found is None:
        return
    same = len(recorded) == len(found) and all(
        math.isclose(a, b, rel_tol=2e-2, abs_tol=1e-3) for a, b in zip(recorded, found, strict=True)
    )
    if same:
        return
    if config.base_init in ("random", "shuffled"):
        seed = config.base_init_seed
        how = f"load_backbone(..., init={config.base_init!r}, seed={seed})" if seed is not None else "no recorded seed"
        made = "randomly initialised" if config.base_init == "random" else "weight-shuffled"
        raise ValueError(
            f"This FPT adapter was trained on a {made} {config.base_model_type or name} "
            f"({how}); the {name} it is loaded onto has other frozen weights, so it would compute something else. "
            + ("Load the base with that seed." if seed is not None else "The run that trained it cannot be rebuilt.")
        )
    message = (
        f"This FPT adapter was trained on a base whose frozen weights differ from those of the {name} it is loaded "
        f"onto (base_model_name_or_path={config.base_model_name_or_path!r}): its outputs will differ from training."
    )
    warnings.warn(message, UserWarning, stacklevel=2)


def check_position_parameters(config: Any, model: torch.nn.Module) -> None:
    """Raise a ValueError unless every name in ``config.position_parameters`` is a parameter of ``model``."""
    for qualified in config.position_parameters or []:
        owner_name, _, param_name = qualified.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError:
            owner = None
        if not isinstance(getattr(owner, param_name, None), torch.Tensor):
            raise ValueError(
                f"FPTConfig.position_parameters names {qualified!r}, which is not a parameter of "
                f"{type(model).__name__}."
            )


def check_forward_inputs(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], capacity: int | None, head: bool
) -> None:
    """Raise a ValueError for empty inputs, an attention mask of another shape, more tokens than the learned
    positions hold (``capacity``; None: unbounded), or labels for an FPT output layer (``head``) that the model's
    forward cannot pass on."""
    compiling = torch.compiler.is_compiling()  # a signature does not change between calls: checked when eager
    if "labels" in kwargs and head and not compiling and not _takes_labels(type(model).forward):
        raise ValueError(f"{type(model).__name__}.forward takes no **kwargs, so it cannot pass labels to FPT's head.")
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
    if shape is not None and capacity is not None and shape[1] > capacity:
        raise ValueError(
            f"The input has {shape[1]} tokens but {type(model).__name__}'s learned positional embeddings hold "
            f"{capacity} positions. Use fewer or larger patches, or truncate the sequences."
        )


def check_features(features: torch.Tensor, width: int) -> None:
    """Raise a ValueError unless ``features`` has shape (batch, tokens, ``width``)."""
    if features.dim() != 3 or features.shape[-1] != width:
        raise ValueError(
            f"inputs_embeds must have shape (batch, tokens, input_dim={width}); got {tuple(features.shape)}."
        )


def check_ids(input_ids: torch.Tensor, vocabulary: int) -> None:
    """Raise a ValueError unless ``input_ids`` are integer ids of shape (batch, tokens) in [0, ``vocabulary``)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be integer ids of shape (batch, tokens); got {input_ids.dtype} of shape "
            f"{tuple(input_ids.shape)}."
        )
    if torch.compiler.is_compiling():  # a host read would break the graph: the device checks the range instead
        in_range = ((input_ids >= 0) & (input_ids < vocabulary)).all()
        torch._assert_async(in_range, f"input_ids must lie in [0, input_vocab_size={vocabulary})")
    elif input_ids.numel():
        low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())  # one host read
        if high >= vocabulary or low < 0:
            raise ValueError(
                f"input_ids must lie in [0, input_vocab_size={vocabulary}); got values in [{low}, {high}]."
            )


def check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise a ValueError unless ``labels`` hold one integer class index per predicted value of ``logits``. The range
    is not checked here: it would cost a device sync per step (cross-entropy reports it, CUDA asserts)."""
    if labels.numel() * logits.shape[-1] != logits.numel():
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)} "
            "(one class index per predicted value)."
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{LABEL_MESSAGE.format(classes=logits.shape[-1])}; got dtype {labels.dtype}.")


LABEL_MESSAGE = "labels must be integer class indices in [0, {classes}) (or -100 to ignore)"


@functools.lru_cache(maxsize=64)
def _takes_labels(forward: Any) -> bool:
    parameters = inspect.signature(forward).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == "labels" for p in parameters)


BASE = "__base__"  # peft's name for "the plain base" in adapter_names


def check_adapter_names(adapter_names: Any, configs: dict[str, Any], training: bool, cut: bool) -> list[str]:
    """``adapter_names`` (one per row) as a list, or a ValueError naming what cannot be computed in one batch of a
    model with FPT adapters ``configs`` (``cut``: they keep fewer blocks than the base)."""
    if training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
    if not isinstance(adapter_names, (list, tuple)) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"adapter_names must be a list of str, one per row; got {adapter_names!r}.")
    unknown = sorted(set(adapter_names) - set(configs) - {BASE})
    if unknown:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}")
    named = sorted(set(adapter_names) - {BASE})
    shapes = {name: _batch_shape(configs[name]) for name in named}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"Adapters {named} cannot share a batch: their inputs / outputs differ "
            f"({', '.join(f'{n}: {s}' for n, s in shapes.items())})."
        )
    blocking = [n for n in named if shapes[n] != _batch_shape(None)]
    if BASE in adapter_names and (blocking or cut):
        raise ValueError(
            f"'{BASE}' rows cannot share a batch with adapter(s) {blocking or named}: they add a new input or output "
            "layer or keep fewer blocks (num_layers), which the plain base does not have."
        )
    return list(adapter_names)


def _batch_shape(config: Any) -> tuple[Any, ...]:
    """What rows of one batch must share: the input kind and width, the output shape and the padding id."""
    if config is None:
        return ("ids", None, None)
    inputs = ("features", config.input_dim) if config.input_dim else ("ids", config.input_vocab_size)
    output = None if config.output_dim is None else (config.output_tokens, config.values_per_token, config.output_dim)
    return (*inputs, output) + ((config.pad_token_id,) if config.input_vocab_size else ())
