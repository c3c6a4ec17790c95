"""Configuration of the Frozen Pretrained Transformer (FPT) method."""

from __future__ import annotations

import enum
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig
from peft.utils import TaskType

from . import integrity

_POSITIVE_INTS = ("output_tokens", "values_per_token")
_OPTIONAL_POSITIVE_INTS = ("input_dim", "input_vocab_size", "output_dim", "base_hidden_size", "num_layers")
_FLAGS = (
    "train_layer_norms",
    "train_positions",
    "train_input",
    "train_output",
    "train_attention",
    "train_feedforward",
    "inference_mode",
)
_OPTIONAL_STRS = ("base_model_name_or_path", "revision", "peft_version", "base_model_type")
# Bounds on untrusted adapter_config.json files: a 2**40-row embedding would exhaust memory before any useful error.
MAX_SIZE = 2**24
EMBEDDING_INITS = ("scaled", "normal")  # FPTConfig.embedding_init: base embeddings' std, or N(0, 1) as nn.Embedding
_QUALIFIED_PARAMETER = re.compile(r"[^.\s]+(\.[^.\s]+)+")  # "module.path.parameter"

MODEL_CARD_NOTE = (
    "## Loading this adapter\n\n"
    "This is a [Frozen Pretrained Transformer](https://arxiv.org/abs/2103.05247) adapter made with "
    '`fpt-peft`. peft resolves its `peft_type` (`"FPT"`) only after **`import fpt_peft`**:\n\n'
    "```python\n"
    "import fpt_peft  # registers the FPT method with peft; without it peft fails with KeyError: 'FPT'\n"
    "from peft import PeftModel\n\n"
    'model = PeftModel.from_pretrained(base_model, "<this repo or folder>")\n'
    "```\n"
)


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
    paper's ablations.

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
        input_dropout (`float`):
            Dropout probability in [0, 1) applied right after the continuous input layer (`input_dim`) in training
            mode, as the official code's `nn.Dropout(0.1)` after its input `Linear`. Default 0.0: adapters saved
            before this field existed reload (and keep training) exactly as they were trained, and the backbone's own
            dropout already follows the input layer in most models (GPT-2's `embd_pdrop`); set 0.1 for the paper's
            set-up. Only for continuous inputs (the official code has no dropout after a symbol embedding).
        embedding_init (`str`):
            Initialisation of a new symbol embedding (`input_vocab_size`): `"scaled"` (default), normal with the
            standard deviation of the base model's token embeddings, so that the frozen blocks first see inputs at
            the scale they were trained on; or `"normal"`, N(0, 1) (`nn.Embedding`'s own default), as the official
            code. The default keeps the behaviour, and the measured results, of earlier versions. Only for symbolic
            inputs.
        num_layers (`int`, *optional*):
            Keep only the first `num_layers` transformer blocks of the base, as GPT4TS (Zhou et al., 2023) keeps 6 of
            GPT-2's 12. The blocks after them leave the model while the adapter is on it (unload and deleting the
            adapter put them back). An adapter saved with it reloads onto the full base exactly; a base with fewer
            blocks is refused. None keeps every block.
        target_modules (`list[str]` or `str`, *optional*):
            Override discovery: the modules to adapt (names, suffixes or a regex). By default norms, learned positional
            embeddings (and, if switched on, block linears) are found structurally; the adapter's own copy of the
            config records the resolved names so that a load is exact (the config you pass is never changed).
        exclude_modules (`list[str]` or `str`, *optional*): modules never to adapt.
        modules_to_save (`list[str]`, *optional*): other modules to train and save whole (peft semantics).
        position_parameters (`list[str]`, *optional*): positional embeddings that are bare parameters (ViT's
            `embeddings.position_embeddings`); resolved by discovery.
        base_model_type, base_hidden_size: recorded on first use; a load onto another architecture or width fails.
        weights_sha256 (`str`, *optional*): digest of the adapter's tensors, written into `adapter_config.json` by
            `save_pretrained` from the weights file saved with it. A load compares it with the weights it reads and
            then drops it from the in-memory config, so a config and weights from different saves are refused and the
            value can never go stale.
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
    input_dropout: float = field(
        default=0.0, metadata={"help": "Dropout after the continuous input layer (official code: 0.1)."}
    )
    embedding_init: str = field(
        default="scaled", metadata={"help": "Init of a new symbol embedding: 'scaled' or 'normal' (official code)."}
    )
    num_layers: int | None = field(default=None, metadata={"help": "Keep only the base's first num_layers blocks."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt instead of the discovered ones (names or regex)."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never to adapt."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules to train and save."})
    position_parameters: list[str] | None = field(
        default=None, metadata={"help": "Positional embeddings that are bare parameters (resolved)."}
    )
    base_model_type: str | None = field(default=None, metadata={"help": "model_type of the base (recorded)."})
    base_hidden_size: int | None = field(default=None, metadata={"help": "Width of the base model (recorded)."})
    weights_sha256: str | None = field(
        default=None, metadata={"help": "Digest of the weights saved with this config (checked once on load)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # peft's own checks first (task type), with peft's messages
        self.peft_type = FPTPeftType.FPT  # type: ignore[assignment]  # as peft's configs do, whatever was passed
        self._validate()
        if self.input_vocab_size is not None and self.pad_token_id is None:
            self.pad_token_id = 0

    def _validate(self) -> None:
        for name in _FLAGS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"FPTConfig.{name} must be a bool, got {type(value).__name__} {value!r}.")
        if isinstance(self.base_model_name_or_path, os.PathLike):
            self.base_model_name_or_path = os.fspath(self.base_model_name_or_path)
        for name in _OPTIONAL_STRS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"FPTConfig.{name} must be a str or None, got {type(value).__name__} {value!r}.")
        for name in (*_POSITIVE_INTS, *_OPTIONAL_POSITIVE_INTS):
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_POSITIVE_INTS:
                continue
            if not _is_int(value) or not 1 <= value <= MAX_SIZE:
                raise ValueError(f"FPTConfig.{name} must be an int in [1, {MAX_SIZE}], got {value!r}.")
        if self.input_dim is not None and self.input_vocab_size is not None:
            raise ValueError(
                "FPTConfig takes either input_dim (continuous inputs, passed as inputs_embeds) or input_vocab_size "
                f"(symbols, passed as input_ids), not both; got input_dim={self.input_dim}, "
                f"input_vocab_size={self.input_vocab_size}."
            )
        if self.output_dim is not None and self.output_dim * self.values_per_token > MAX_SIZE:
            raise ValueError(
                f"FPTConfig.output_dim * values_per_token (the output layer width) must be at most {MAX_SIZE}, "
                f"got {self.output_dim} * {self.values_per_token}."
            )
        if self.output_tokens * self.values_per_token > MAX_SIZE:
            raise ValueError(
                f"FPTConfig.output_tokens * values_per_token must be at most {MAX_SIZE}, got "
                f"{self.output_tokens} * {self.values_per_token}."
            )
        if self.pad_token_id is not None:
            upper = self.input_vocab_size or MAX_SIZE
            if not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < upper:
                raise ValueError(f"FPTConfig.pad_token_id must be an int in [0, {upper}), got {self.pad_token_id!r}.")
        gain = self.input_init_gain
        number = isinstance(gain, (int, float)) and not isinstance(gain, bool)
        if not number or not math.isfinite(gain) or not 0 < gain < 1e3:
            raise ValueError(f"FPTConfig.input_init_gain must be a finite number in (0, 1000), got {gain!r}.")
        self._validate_input_options()
        if self.weights_sha256 is not None and not integrity.is_digest(self.weights_sha256):
            raise ValueError(
                f"FPTConfig.weights_sha256 must be 64 lowercase hex digits or None, got {self.weights_sha256!r}."
            )
        if self.auto_mapping is not None and (
            not isinstance(self.auto_mapping, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.auto_mapping.items())
        ):
            raise TypeError(f"FPTConfig.auto_mapping must be a dict of str to str or None, got {self.auto_mapping!r}.")
        is_seq_cls = self.task_type == TaskType.SEQ_CLS
        if self.output_dim is not None and is_seq_cls:
            raise ValueError(
                "FPTConfig.output_dim adds an FPT output layer to a backbone model (AutoModel, task_type=None); with "
                "task_type='SEQ_CLS' the model's own classification head is the output layer. Drop one of them."
            )
        if is_seq_cls and not self.train_output:
            raise ValueError(
                "train_output=False is not supported with task_type='SEQ_CLS': peft always trains and saves the "
                "classification head. For the output-frozen ablation use a backbone (AutoModel) with output_dim."
            )
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    re.compile(value)  # peft matches a single string as a regular expression
                except re.error as exc:
                    raise ValueError(
                        f"FPTConfig.{name} is not a valid regular expression ({exc}): {value!r}."
                    ) from exc
            elif value is not None:
                setattr(self, name, _names(name, value, allow_empty=name == "exclude_modules"))
        if self.modules_to_save is not None:
            self.modules_to_save = _names("modules_to_save", self.modules_to_save, allow_empty=True)
        if self.position_parameters is not None:
            self.position_parameters = _names("position_parameters", self.position_parameters, allow_empty=True)
            for qualified in self.position_parameters:
                if not _QUALIFIED_PARAMETER.fullmatch(qualified):
                    raise ValueError(
                        "FPTConfig.position_parameters must hold qualified parameter names such as "
                        f"'embeddings.position_embeddings', got {qualified!r}."
                    )

    def _validate_input_options(self) -> None:
        """Check ``input_dropout`` and ``embedding_init``, and that the config has the input layer they act on."""
        rate = self.input_dropout
        number = isinstance(rate, (int, float)) and not isinstance(rate, bool)
        if not number or not 0.0 <= rate < 1.0:  # NaN fails the comparison too
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

    @property
    def has_new_layers(self) -> bool:
        """Whether the adapter adds a layer with no counterpart in the base model (feature input or output layer)."""
        return self.input_dim is not None or self.output_dim is not None

    def new_layer_parameters(self, hidden_size: int) -> int:
        """How many weights the new input and output layers of this config hold on a base of width ``hidden_size``."""
        count = 0
        if self.input_dim is not None:
            count += (self.input_dim + 1) * hidden_size
        elif self.input_vocab_size is not None:
            count += self.input_vocab_size * hidden_size
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
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> FPTConfig:
        """Load a config from a folder or Hub repo.

        A malformed ``adapter_config.json``, or a weights file beside it that is truncated, corrupt or too small for
        the layers the config declares, raises an error naming the file before peft builds anything. A folder holding
        only the config loads.
        """
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "")
        try:
            config: FPTConfig = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"adapter_config.json at {pretrained_model_name_or_path!r} is not valid JSON ({exc})."
            ) from exc
        weights = integrity.weights_file(folder) if os.path.isdir(folder) else None
        if weights is not None:
            integrity.check_weights_file(weights, config.new_layer_parameters(config.base_hidden_size or 1))
        return config

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` atomically, with the digest of the weights file beside it, and the model card
        note on loading. peft's ``save_pretrained`` calls this right after writing the weights."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        output = {k: list(v) if isinstance(v, set) else v for k, v in self.to_dict().items()}
        auto_mapping = kwargs.pop("auto_mapping_dict", None)
        if auto_mapping is not None:
            output["auto_mapping"] = auto_mapping
        weights = integrity.weights_file(save_directory)
        output["weights_sha256"] = None if weights is None else integrity.digest(integrity.read_weights(weights))
        integrity.write_text(
            os.path.join(save_directory, "adapter_config.json"), json.dumps(output, indent=2, sort_keys=True)
        )
        _add_model_card_note(save_directory)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(name: str, value: Any, allow_empty: bool) -> list[str]:
    """``value`` as a list of non-empty strings, or a TypeError / ValueError naming the field."""
    if not isinstance(value, (list, set, tuple)):
        raise TypeError(f"FPTConfig.{name} must be a list of str, got {type(value).__name__} {value!r}.")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"FPTConfig.{name} must hold non-empty strings only, got {bad[:3]!r}.")
    if not value and not allow_empty:
        raise ValueError(
            f"FPTConfig.{name} is an empty list, which matches nothing; leave it None to let FPT discover the modules."
        )
    return sorted(value) if isinstance(value, (set, tuple)) else list(value)


def _add_model_card_note(save_directory: str) -> None:
    """Append the "import fpt_peft" loading note to ``README.md`` in ``save_directory`` (once, atomically)."""
    path = os.path.join(save_directory, "README.md")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    if "import fpt_peft" in text:
        return
    if not text:
        text = "---\nlibrary_name: peft\ntags:\n- fpt\n---\n"
    integrity.write_text(path, text.rstrip("\n") + "\n\n" + MODEL_CARD_NOTE)
