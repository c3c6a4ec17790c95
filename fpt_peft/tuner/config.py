"""Configuration of the Frozen Pretrained Transformer (FPT) method."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import InitVar, dataclass, field
from typing import Any

from peft.config import PeftConfig

from .. import adapter_files, tuner_checks

# Where a config read from a folder keeps that folder's weights digest until the tuner takes it on injection; not a
# field, so never saved, compared or shown.
READ_DIGEST = "_fpt_read_digest"


class FPTPeftType(str, enum.Enum):
    """The peft type of the FPT method (``adapter_config.json``: ``"FPT"``).

    peft's own ``PeftType`` enum is closed; a ``str`` enum whose member equals ``"FPT"`` hashes and compares like the
    string, so it works as a key of peft's lookup tables and round-trips through ``adapter_config.json``.
    """

    FPT = "FPT"


@dataclass
class FPTConfig(PeftConfig):
    """Configuration of a Frozen Pretrained Transformer adapter (Lu et al., 2021, arXiv:2103.05247).

    The self-attention and feed-forward weights of the base model stay frozen; the adapter trains the layer norms, the
    learned positional embeddings, a new input layer and an output layer. Each group has its own switch, as in the
    paper's ablations. As with LoRA, ``get_peft_model`` writes what it resolved into the config it is given
    (``target_modules`` as depth-independent suffixes, ``position_parameters``, ``base_model_type``,
    ``base_hidden_size``), so the saved ``adapter_config.json`` reloads the same adapter; nothing about one adapter's
    weights is ever written into a config object.

    Args:
        input_dim (`int`, *optional*):
            Continuous inputs: width of each input token. Adds a new `Linear(input_dim, hidden_size)` (orthogonal init,
            gain `input_init_gain`, zero bias); the model then takes `inputs_embeds` of shape `(batch, tokens,
            input_dim)`.
        input_vocab_size (`int`, *optional*):
            Symbolic inputs: size of a new vocabulary. Adds a new `Embedding(input_vocab_size, hidden_size)`; the model
            then takes `input_ids < input_vocab_size`. Mutually exclusive with `input_dim`.
        pad_token_id (`int`, *optional*):
            Padding id of the new vocabulary (default 0 when `input_vocab_size` is set). Written into the base model's
            config while the adapter is active (sequence-classification heads need one); unload restores the original.
        output_dim (`int`, *optional*):
            Adds an FPT output layer to a backbone model (`AutoModel`, `task_type=None`): `Linear(hidden_size,
            output_dim * values_per_token)` on the last `output_tokens` (non-padding) tokens. Logits have shape
            `(batch, output_tokens * values_per_token, output_dim)`, or `(batch, output_dim)` for one value; with
            `labels` the cross-entropy loss is returned. With `task_type="SEQ_CLS"` the model's own head is the output
            layer instead.
        output_tokens (`int`): how many last tokens the output layer reads (default 1).
        values_per_token (`int`): predicted values per read token (e.g. bits per patch; default 1).
        train_layer_norms, train_positions (`bool`): train the layer norms / learned positional embeddings.
        train_input, train_output (`bool`): train the new input / output layer (when off, it keeps its random
            initialisation and is still saved, so a reload is exact).
        train_attention, train_feedforward (`bool`): also train the self-attention / feed-forward linears of every
            block (off in FPT; on for the paper's ablations).
        input_init_gain (`float`): gain of the orthogonal initialisation of the continuous input layer.
        input_dropout (`float`): dropout in [0, 1) right after the continuous input layer in training mode (the
            official code's 0.1; default 0.0, as adapters saved before the option were trained).
        embedding_init (`str`): a new symbol embedding starts normal with the standard deviation of the base's token
            embeddings (`"scaled"`, default) or N(0, 1) as `nn.Embedding` and the official code (`"normal"`).
        num_layers (`int`, *optional*):
            Keep only the first `num_layers` transformer blocks of the base, as GPT4TS (Zhou et al., 2023) keeps 6 of
            GPT-2's 12. While the adapter is enabled the later blocks leave the model (and its config's layer count);
            `disable_adapter()` and `unload()` run the full base, `merge_and_unload()` returns the cut model.
        target_modules (`list[str]` or `str`, *optional*):
            The modules to adapt (names, suffixes or a regex, as in peft). None: found structurally (norms, learned
            positional embeddings and, if switched on, block linears), then written here as suffixes.
        exclude_modules (`list[str]` or `str`, *optional*): modules never to adapt.
        modules_to_save (`list[str]`, *optional*): other modules to train and save whole (peft semantics).
        position_parameters (`list[str]`, *optional*): positional embeddings that are bare parameters (ViT's
            `embeddings.position_embeddings`); resolved by discovery.
        base_model_type, base_hidden_size: recorded on first use; a load onto another architecture or width fails.
        weights_sha256 (*init only*): the digest `save_pretrained` writes into `adapter_config.json`. It is not a
            field: a config read from a folder hands it to the first model it is put on, which checks the weights it
            loads next against it (until then, or until that adapter is saved); it is never saved or compared.
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
    weights_sha256: InitVar[str | None] = None

    def __post_init__(self, weights_sha256: str | None) -> None:
        super().__post_init__()  # peft's own checks first (task type), with peft's messages
        self.peft_type = FPTPeftType.FPT  # type: ignore[assignment]  # as peft's configs do, whatever was passed
        tuner_checks.check_config(self, weights_sha256)
        if weights_sha256 is not None:  # read from a folder: the weights loaded next from it must have this digest
            self.__dict__[READ_DIGEST] = weights_sha256
        if self.input_vocab_size is not None and self.pad_token_id is None:
            self.pad_token_id = 0

    @property
    def mergeable(self) -> bool:
        """Whether a plain transformers model can hold this adapter (not with a feature input or an output layer)."""
        return self.input_dim is None and self.output_dim is None

    def new_layer_parameters(self, hidden_size: int) -> int:
        """How many weights the new input and output layers of this config hold on a base of width ``hidden_size``."""
        count = (self.input_dim + 1) * hidden_size if self.input_dim is not None else 0
        count += (self.input_vocab_size or 0) * hidden_size
        if self.output_dim is not None:
            count += (hidden_size + 1) * self.output_dim * self.values_per_token
        return count

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """Refuse a config of another method; unknown keys are left to peft (dropped with a warning)."""
        peft_type = kwargs.get("peft_type")
        if peft_type is not None and peft_type != FPTPeftType.FPT:
            raise ValueError(f"adapter_config.json has peft_type={peft_type!r}; FPTConfig loads only 'FPT'.")
        return super().check_kwargs(**kwargs)  # type: ignore[no-any-return]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any) -> Any:
        """Load a config from a folder or Hub repo, after checking the folder's weights file against it.

        A malformed ``adapter_config.json``, or a weights file beside it that is truncated, corrupt, from another save
        or too small for the layers the config declares, raises an error naming the file before peft builds
        anything. A folder holding only the config loads.
        """
        try:
            config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"adapter_config.json at {pretrained_model_name_or_path!r} is not valid JSON ({exc})."
            ) from exc
        hub_kwargs = cls._split_kwargs(kwargs)[0]
        folder = adapter_files.resolve_folder(os.fspath(pretrained_model_name_or_path), subfolder, **hub_kwargs)
        if folder is not None and isinstance(config, FPTConfig):
            declared = config.new_layer_parameters(config.base_hidden_size or 1)
            adapter_files.check_folder(folder, config.__dict__.get(READ_DIGEST), declared)
        return config

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` atomically, with the digest of the weights file peft wrote just before it,
        and the model card note on loading."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        output = {k: sorted(v) if isinstance(v, set) else v for k, v in self.to_dict().items()}
        if kwargs.get("auto_mapping_dict") is not None:
            output["auto_mapping"] = kwargs["auto_mapping_dict"]
        adapter_files.write_config(save_directory, output)
