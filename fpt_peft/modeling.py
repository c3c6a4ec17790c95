"""Build the model for a task: a Hugging Face backbone plus an FPT adapter sized by the task's :class:`TaskSpec`.

:func:`build_model` covers the paper's variants: FPT on pretrained weights (the method), the same on random weights
(``init="random"``, the paper's baseline) or on pretrained weights with each tensor's values shuffled
(``init="shuffled"``: the statistics per tensor without the learned structure, a control), every group switched on
or off (the ablations), and full finetuning (``finetune="full"``), where the adapter holds a trainable copy of every
weight the forward pass uses, so that the result saves and reloads like any FPT adapter.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .data.spec import TaskSpec
from .pretrained import DEFAULT_MODEL, HUB_IDS, packaged_name, resolve_model
from .tuner.config import FPTConfig
from .tuner.discovery import discover, hidden_size_of, position_capacity

logger = logging.getLogger("fpt_peft")

Init = Literal["pretrained", "random", "shuffled"]
INITS = ("pretrained", "random", "shuffled")
Finetune = Literal["fpt", "full"]


def load_backbone(
    model: str = DEFAULT_MODEL,
    init: Init = "pretrained",
    dtype: torch.dtype | str | None = None,
    seed: int | None = None,
) -> PreTrainedModel:
    """Load the backbone (``AutoModel``) named by ``model``: pretrained weights, its architecture re-initialised
    (``init="random"``, seeded by ``seed``), or the pretrained weights with the values of each weight tensor permuted
    (``init="shuffled"``, seeded by ``seed``, default 0: every tensor keeps its values, so its mean, spread and
    histogram, but not where they are).

    ``model`` is ``"minilm"``/``"smollm2"`` (packaged), a local folder or a Hub id (see
    :func:`fpt_peft.pretrained.resolve_model`). A failure to find or read it raises an ``OSError`` naming ``--model``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype name such as 'bfloat16', got {dtype!r}.")
        dtype = getattr(torch, dtype)
    dtype_kwargs = {} if dtype is None else {"dtype": dtype}
    packaged = packaged_name(model)
    if packaged is not None and model == HUB_IDS[packaged]:  # the Hub's copy, else (unreachable) the packaged one
        try:
            return _load(model, {}, init, dtype_kwargs, seed, name=model)
        except OSError:
            logger.info("--model %s: the Hub is not reachable; using the packaged copy of its weights.", model)
    path, kwargs = resolve_model(packaged or model)  # FileNotFoundError / ModuleNotFoundError with a clear message
    try:
        return _load(path, kwargs, init, dtype_kwargs, seed, name=HUB_IDS[packaged] if packaged else None)
    except (OSError, ValueError) as exc:
        raise OSError(
            f"--model {model!r}: could not load a model from {path!r} ({type(exc).__name__}: {exc}). Pass a local "
            "model folder, one of the packaged models ('minilm', 'smollm2') or a Hub id reachable from here."
        ) from exc


def _load(
    path: str, kwargs: dict[str, str], init: Init, dtype_kwargs: dict, seed: int | None, name: str | None
) -> PreTrainedModel:
    """The model at ``path``, pretrained or re-initialised; ``name`` (a Hub id) is what it records as its origin, so
    that adapters saved from it name a portable base instead of a folder of this machine."""
    if init in ("pretrained", "shuffled"):
        model: PreTrainedModel = AutoModel.from_pretrained(path, **kwargs, **dtype_kwargs)
        if init == "shuffled":
            shuffle_weights(model, seed or 0)
            name = None  # no longer the pretrained base
    else:
        config = AutoConfig.from_pretrained(path, **kwargs)
        if seed is not None:
            torch.manual_seed(seed)
        model = AutoModel.from_config(config, **dtype_kwargs)
        name = None  # random weights: no pretrained base to name
    if name is not None or init != "pretrained":
        model.config.name_or_path = name or ""
        model.name_or_path = name or ""  # what peft records as the adapter's base_model_name_or_path
    return model


@torch.no_grad()
def shuffle_weights(model: torch.nn.Module, seed: int) -> None:
    """Permute the values of every floating-point parameter of ``model`` in place, each tensor on its own (a
    generator seeded by ``seed``, in parameter order): the per-tensor statistics stay, the learned structure goes."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.is_floating_point():
            order = torch.randperm(param.numel(), generator=generator).to(param.device)
            param.copy_(param.flatten()[order].view_as(param))


def max_positions(backbone: torch.nn.Module) -> int | None:
    """How many tokens the learned positional embeddings of ``backbone`` hold (None: rotary / unbounded)."""
    return position_capacity(backbone, discover(backbone).position_modules)


def check_fits(spec: TaskSpec, backbone: torch.nn.Module, model: str = "") -> None:
    """Raise a ValueError if the task's sequences are longer than the model's learned positions."""
    capacity = max_positions(backbone)
    if capacity is not None and spec.max_tokens > capacity:
        raise ValueError(
            f"Task {spec.name!r} has sequences of {spec.max_tokens} tokens, but --model "
            f"{model or type(backbone).__name__!r} has {capacity} learned positions. Use larger patches or shorter / "
            "truncated sequences, or a model with more positions (e.g. --model gpt2: 1024)."
        )


def _used_but_untargeted(backbone: torch.nn.Module, spec: TaskSpec) -> list[str]:
    """Modules whose weights the forward pass uses but that no FPT group covers (e.g. BERT's token type embedding).

    Found with one backward pass through the backbone on a dummy input: every parameter that receives a gradient is
    used. Full finetuning trains these as ``modules_to_save`` so that literally every used weight trains.
    """
    found = discover(backbone)
    covered = found.norms + found.position_modules + found.attention + found.feedforward
    tokens = min(spec.max_tokens, 4)
    hidden = hidden_size_of(backbone)
    if hidden is None:
        raise ValueError(f"Cannot tell the width of {type(backbone).__name__}; cannot probe it for full finetuning.")
    reference = next(p for p in backbone.parameters() if p.is_floating_point())
    inputs = torch.randn(1, tokens, hidden, dtype=reference.dtype, device=reference.device)
    flags = {name: p.requires_grad for name, p in backbone.named_parameters()}
    backbone.requires_grad_(True)
    try:
        output = backbone(inputs_embeds=inputs)
        output.last_hidden_state.float().sum().backward()
        used = [name for name, p in backbone.named_parameters() if p.grad is not None]
    finally:
        for name, p in backbone.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
    owners = sorted({name.rpartition(".")[0] for name in used})
    return [o for o in owners if not any(o == c or o.startswith(c + ".") for c in covered)]


def build_model(
    spec: TaskSpec,
    model: str = DEFAULT_MODEL,
    *,
    init: Init = "pretrained",
    finetune: Finetune = "fpt",
    train_layer_norms: bool = True,
    train_positions: bool = True,
    train_input: bool = True,
    train_output: bool = True,
    train_attention: bool = False,
    train_feedforward: bool = False,
    num_layers: int | None = None,
    input_dropout: float = 0.0,
    embedding_init: str = "scaled",
    dtype: torch.dtype | str | None = None,
    seed: int | None = None,
) -> PeftModel:
    """The FPT model for ``spec``: backbone ``model`` with new input and output layers and the chosen groups trained.

    Args:
        spec: the task (input width or vocabulary, classes, output tokens, sequence length).
        model: ``"minilm"`` (default), ``"smollm2"``, a local folder or a Hub id.
        init: ``"pretrained"`` weights, ``"random"``: the same architecture freshly initialised (seeded by
            ``seed``) and frozen the same way (the paper's baseline), or ``"shuffled"``: the pretrained weights with
            each tensor's values permuted (seeded by ``seed``; a statistics-matched random control).
        finetune: ``"fpt"`` trains the groups switched on below; ``"full"`` trains every weight the model uses
            (the ``train_*`` flags must then be left at their defaults).
        train_layer_norms, train_positions, train_input, train_output, train_attention, train_feedforward: the
            paper's ablation switches (see :class:`~fpt_peft.FPTConfig`).
        num_layers: keep only the first ``num_layers`` transformer blocks (GPT4TS keeps 6); None keeps all.
        input_dropout: dropout after the new continuous input layer in training (the official code: 0.1); only for
            tasks with continuous inputs.
        embedding_init: ``"scaled"`` (the base embeddings' std) or ``"normal"`` (N(0, 1), the official code) for the
            new symbol embedding; only for tasks with symbolic inputs.
        dtype: dtype of the backbone (e.g. ``torch.bfloat16``); default: as saved.
        seed: seeds the random initialisation (or shuffle) of the backbone and of the new layers.

    Raises:
        OSError / FileNotFoundError: the model cannot be found or read.
        ValueError: the task's sequences are longer than the model's positions, or conflicting options.
    """
    if finetune not in ("fpt", "full"):
        raise ValueError(f"finetune must be 'fpt' or 'full', got {finetune!r}.")
    flags = {
        "train_layer_norms": train_layer_norms,
        "train_positions": train_positions,
        "train_input": train_input,
        "train_output": train_output,
    }
    if finetune == "full":
        frozen = [name for name, value in flags.items() if not value]
        if frozen:
            raise ValueError(f"finetune='full' trains every weight; it cannot be combined with {frozen}=False.")
        train_attention = train_feedforward = True
    if seed is not None:
        torch.manual_seed(seed)
    backbone = load_backbone(model, init=init, dtype=dtype, seed=seed)
    check_fits(spec, backbone, model)
    extra = _used_but_untargeted(backbone, spec) if finetune == "full" else []
    config = FPTConfig(
        input_dim=spec.input_dim,
        input_vocab_size=spec.input_vocab_size,
        pad_token_id=spec.pad_token_id,
        output_dim=spec.num_classes,
        output_tokens=spec.output_tokens,
        values_per_token=spec.values_per_token,
        train_attention=train_attention,
        train_feedforward=train_feedforward,
        train_layer_norms=train_layer_norms,
        train_positions=train_positions,
        train_input=train_input,
        train_output=train_output,
        num_layers=num_layers,
        input_dropout=input_dropout,
        embedding_init=embedding_init,
        modules_to_save=extra or None,
        base_init=init,
        base_init_seed={"pretrained": None, "random": seed, "shuffled": seed or 0}[init],
    )
    return get_peft_model(backbone, config)  # type: ignore[return-value]
