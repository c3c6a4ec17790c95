"""What a task looks like to the model side: :class:`TaskSpec` and :class:`TaskData`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets

if TYPE_CHECKING:
    from torch.utils.data import IterableDataset

METRICS = ("accuracy", "per_bit_accuracy")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"TaskSpec.{name} must be a positive int, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """Everything the model side needs to build the FPT input and output layers for a task.

    All fields are keyword-only. Exactly one of ``input_dim`` (continuous inputs: each example has
    ``inputs_embeds``, float32 of shape ``(tokens, input_dim)``) and ``input_vocab_size`` (symbolic
    inputs: ``input_ids`` and ``attention_mask``, int64 of shape ``(tokens,)``, right-padded with
    ``pad_token_id``) is set.

    The output layer reads the last ``output_tokens`` tokens and predicts ``values_per_token`` values of
    ``num_classes`` classes from each, so logits are shaped
    ``(batch, output_tokens * values_per_token, num_classes)``, or ``(batch, num_classes)`` when that
    product is 1. Labels are int64 of shape ``()`` for single-value tasks and
    ``(output_tokens * values_per_token,)`` otherwise. For padded symbolic inputs "last token" means
    the last real token (``attention_mask == 1``); data without an ``attention_mask`` column (inputs padded
    to a fixed length and unmasked, as the official FPT code's ListOps) is read at the last position.

    ``max_tokens`` is the sequence length every example of the task has (the longest the data produces),
    to be checked against the model's number of positions. ``metric`` is ``"accuracy"`` (per example)
    or ``"per_bit_accuracy"`` (over every predicted value).
    """

    name: str
    input_dim: int | None = None
    input_vocab_size: int | None = None
    num_classes: int
    output_tokens: int = 1
    values_per_token: int = 1
    pad_token_id: int | None = None
    max_tokens: int
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        if (self.input_dim is None) == (self.input_vocab_size is None):
            raise ValueError(
                "TaskSpec needs exactly one of input_dim (continuous inputs) and input_vocab_size "
                f"(symbolic inputs); got input_dim={self.input_dim!r}, "
                f"input_vocab_size={self.input_vocab_size!r}."
            )
        for field in (
            "input_dim",
            "input_vocab_size",
            "num_classes",
            "max_tokens",
            "output_tokens",
            "values_per_token",
        ):
            _check_positive(field, getattr(self, field))
        if self.pad_token_id is not None:
            if self.input_vocab_size is None:
                raise ValueError(
                    f"TaskSpec.pad_token_id is only meaningful for symbolic inputs (input_vocab_size set); "
                    f"got pad_token_id={self.pad_token_id!r} with input_dim={self.input_dim!r}."
                )
            if not 0 <= self.pad_token_id < self.input_vocab_size:
                raise ValueError(
                    f"TaskSpec.pad_token_id must be in [0, input_vocab_size={self.input_vocab_size}), "
                    f"got {self.pad_token_id!r}."
                )
        if self.output_tokens > self.max_tokens:
            raise ValueError(
                f"TaskSpec.output_tokens ({self.output_tokens}) cannot exceed max_tokens ({self.max_tokens})."
            )
        if self.metric not in METRICS:
            raise ValueError(f"TaskSpec.metric must be one of {METRICS}, got {self.metric!r}.")

    @property
    def is_symbolic(self) -> bool:
        """True when inputs are token ids (``input_ids``), False when they are ``inputs_embeds``."""
        return self.input_vocab_size is not None

    @property
    def num_outputs(self) -> int:
        """Number of predicted values per example: ``output_tokens * values_per_token``."""
        return self.output_tokens * self.values_per_token


@dataclass
class TaskData:
    """A task's spec with its train split, its evaluation (test) split and, where it has one, a validation split.

    The train split is a ``datasets.Dataset``, or an endless ``torch.utils.data.IterableDataset`` of fresh examples
    (the bit tasks with ``stream=True``: :class:`~fpt_peft.data.bits.BitStream`); the eval split is always finite.
    """

    spec: TaskSpec
    train: datasets.Dataset | IterableDataset
    eval: datasets.Dataset
    source: str | None = None
    """Where the data came from: a Hub dataset id or a local folder (None: generated)."""
    label_names: tuple[str, ...] | None = None
    """The class names of label ids 0, 1, ... where the data has names (saved beside the adapter as labels.json)."""
    local_source: bool = False
    """True when ``source`` names local data by its file or folder name (never a machine path), not a Hub id."""
    description: str | None = None
    """The data in one phrase for the model card: its kind, shapes, classes and tokens (set by ``own_data``)."""
    validation: datasets.Dataset | None = None
    """Held-out data for choosing what to keep (the step, the rate); None: carved from train by the training loop."""
    kind: str | None = None
    """``"table"``, ``"series"`` or ``"image"`` where every token holds a piece of one (the classical baselines of
    :mod:`fpt_peft.compare` depend on it); None for symbol sequences and the bit tasks."""
