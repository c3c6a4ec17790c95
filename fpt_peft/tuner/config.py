"""Configuration of the Frozen Pretrained Transformer (FPT) method."""

from __future__ import annotations

import enum
from dataclasses import InitVar, dataclass, field
from typing import Any

from peft.config import PeftConfig

from .. import tuner_checks
from ..adapter_files import CheckedConfigFiles


class FPTPeftType(str, enum.Enum):
    """The peft type of the FPT method (``adapter_config.json``: ``"FPT"``); a ``str`` enum, so it works as a key of
    peft's lookup tables (its own ``PeftType`` is closed) and round-trips through JSON."""

    FPT = "FPT"


@dataclass
class FPTConfig(CheckedConfigFiles, PeftConfig):
    """Configuration of a Frozen Pretrained Transformer adapter (Lu et al., 2021, arXiv:2103.05247).

    The base's self-attention and feed-forward weights stay frozen; the adapter trains the layer norms, the learned
    positional embeddings, a new input layer and an output layer, each group with its own switch (the paper's
    ablations). As LoRA does, ``get_peft_model`` writes what it resolves into the config it is given
    (``target_modules`` as suffixes, ``position_parameters``, ``base_model_type``, ``base_hidden_size``).

    Args:
        input_dim (`int`, *optional*): continuous inputs: a new `Linear(input_dim, hidden_size)` (orthogonal init,
            gain `input_init_gain`, zero bias) reads `inputs_embeds` of shape `(batch, tokens, input_dim)`.
        input_vocab_size (`int`, *optional*): symbolic inputs: a new `Embedding(input_vocab_size, hidden_size)` reads
            `input_ids`. Exclusive with `input_dim`.
        pad_token_id (`int`, *optional*): padding id of the new vocabulary (default 0), the base config's while the
            adapter is active (sequence-classification heads need one).
        output_dim (`int`, *optional*): on a backbone (`task_type=None`), a new `Linear(hidden_size, output_dim *
            values_per_token)` reads the last `output_tokens` (non-padding) tokens: logits `(batch, output_tokens *
            values_per_token, output_dim)`, or `(batch, output_dim)` for one value, and the cross-entropy loss with
            `labels`. With `task_type="SEQ_CLS"` the model's own head is the output layer.
        output_tokens, values_per_token (`int`): tokens the output layer reads, values predicted per token.
        train_layer_norms, train_positions, train_input, train_output (`bool`): train each group (a new layer left
            untrained keeps its random init and is still saved).
        train_attention, train_feedforward (`bool`): also train the blocks' attention / feed-forward linears.
        input_init_gain (`float`), input_dropout (`float` in [0, 1)): the continuous input layer's init gain and the
            dropout after it in training mode (official code: 0.1).
        embedding_init (`str`): a new symbol embedding starts normal with the std of the base's token embeddings
            (`"scaled"`) or N(0, 1) (`"normal"`, the official code).
        num_layers (`int`, *optional*): keep only the first `num_layers` blocks (GPT4TS keeps 6 of GPT-2's 12) while
            the adapter is enabled; `disable_adapter()` and `unload()` run the full base, `merge_and_unload()`
            returns the cut model.
        target_modules, exclude_modules, modules_to_save: as in peft; `target_modules=None` is found structurally.
        position_parameters (`list[str]`, *optional*): positions that are bare parameters (ViT); resolved.
        base_model_type, base_hidden_size: recorded on first use; a load onto another architecture or width fails.
        base_init, base_init_seed (*optional*): how the base was made (`"pretrained"`, or `"random"` or
            `"shuffled"` with the seed of `fpt_peft.load_backbone`), as the training side records it.
        base_fingerprint (`list[float]`): 16 values of the frozen base weights, recorded on first use. A load onto a
            base whose weights differ (another checkpoint, or another random seed) fails for a `"random"` base (no
            other base computes what it was trained on) and warns otherwise.
        weights_sha256 (*init only*): the digest read from `adapter_config.json`, checked against the weights first
            loaded with this config; never a field, so never saved, compared or shown.
    """

    input_dim: int | None = field(default=None, metadata={"help": "Width of continuous input tokens."})
    input_vocab_size: int | None = field(default=None, metadata={"help": "Size of a new symbol vocabulary."})
    pad_token_id: int | None = field(default=None, metadata={"help": "Padding id of the new vocabulary."})
    output_dim: int | None = field(default=None, metadata={"help": "Classes per value of the FPT output layer."})
    output_tokens: int = field(default=1, metadata={"help": "Last tokens read by the FPT output layer."})
    values_per_token: int = field(default=1, metadata={"help": "Values predicted per read token."})
    train_layer_norms: bool = field(default=True, metadata={"help": "Train the layer norms."})
    train_positions: bool = field(default=True, metadata={"help": "Train learned positional embeddings."})
    train_input: bool = field(default=True, metadata={"help": "Train the new input layer."})
    train_output: bool = field(default=True, metadata={"help": "Train the output layer."})
    train_attention: bool = field(default=False, metadata={"help": "Train self-attention weights."})
    train_feedforward: bool = field(default=False, metadata={"help": "Train feed-forward weights."})
    input_init_gain: float = field(default=1.41, metadata={"help": "Orthogonal init gain of the input layer."})
    input_dropout: float = field(default=0.0, metadata={"help": "Dropout after the continuous input layer."})
    embedding_init: str = field(default="scaled", metadata={"help": "Init of a new symbol embedding."})
    num_layers: int | None = field(default=None, metadata={"help": "Keep only the base's first num_layers blocks."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to adapt."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never to adapt."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules to train and save."})
    position_parameters: list[str] | None = field(default=None, metadata={"help": "Positions that are parameters."})
    base_model_type: str | None = field(default=None, metadata={"help": "model_type of the base (recorded)."})
    base_hidden_size: int | None = field(default=None, metadata={"help": "Width of the base model (recorded)."})
    base_init: str | None = field(default=None, metadata={"help": "How the base was made (recorded)."})
    base_init_seed: int | None = field(default=None, metadata={"help": "Seed of a made base (recorded)."})
    base_fingerprint: list[float] | None = field(default=None, metadata={"help": "Frozen base weights sampled."})
    weights_sha256: InitVar[str | None] = None

    def __post_init__(self, weights_sha256: str | None) -> None:
        super().__post_init__()  # peft's own checks first (task type), with peft's messages
        self.peft_type = FPTPeftType.FPT  # type: ignore[assignment]  # as peft's configs do, whatever was passed
        tuner_checks.check_config(self, weights_sha256)
        self.keep_read_digest(weights_sha256)
        if self.input_vocab_size is not None and self.pad_token_id is None:
            self.pad_token_id = 0

    @property
    def mergeable(self) -> bool:
        """Whether a plain transformers model can hold this adapter (not with a feature input or an output layer)."""
        return self.input_dim is None and self.output_dim is None

    def declared_weights(self) -> int:
        """The weights of the new input and output layers this config declares at its recorded width (a weights
        file smaller than that is refused)."""
        hidden = self.base_hidden_size or 1
        count = (self.input_dim + 1) * hidden if self.input_dim is not None else 0
        count += (self.input_vocab_size or 0) * hidden
        return count + ((hidden + 1) * self.output_dim * self.values_per_token if self.output_dim is not None else 0)

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """Refuse a config of another method; unknown keys are left to peft (dropped with a warning)."""
        peft_type = kwargs.get("peft_type")
        if peft_type is not None and peft_type != FPTPeftType.FPT:
            raise ValueError(f"adapter_config.json has peft_type={peft_type!r}; FPTConfig loads only 'FPT'.")
        return super().check_kwargs(**kwargs)  # type: ignore[no-any-return]
