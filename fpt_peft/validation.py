"""Checks of a task's data against its :class:`TaskSpec`, run before any training step.

Bad data should fail in seconds with a message that names the problem, not after minutes inside the model's
forward pass.
"""

from __future__ import annotations

import itertools

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset

from .data.spec import TaskData, TaskSpec

_CHUNK = 8192
_STREAM_CHECKED = 8  # examples of an endless train stream checked before training


def model_inputs(spec: TaskSpec) -> tuple[str, ...]:
    """The dataset columns the model takes for a task of this kind (``labels`` aside; ``attention_mask`` where the
    data has one: padded continuous inputs such as time series of unequal length)."""
    return ("input_ids", "attention_mask") if spec.is_symbolic else ("inputs_embeds", "attention_mask")


def check_task_data(task: TaskData) -> None:
    """Raise a ValueError if either split of ``task`` does not match its spec.

    Checks: required columns present; splits not empty; the first example's shapes (tokens, input width, label
    shape) match the spec; every label lies in ``[0, num_classes)`` and every input id in ``[0, input_vocab_size)``.
    An endless train stream (``torch.utils.data.IterableDataset``) is checked on its first examples.
    """
    spec = task.spec
    for split_name, split in (("train", task.train), ("eval", task.eval)):
        where = f"Task {spec.name!r}, {split_name} split"
        if split_name == "train" and isinstance(split, IterableDataset):
            _check_stream(spec, split, where)
            continue
        if not isinstance(split, datasets.Dataset):
            raise TypeError(f"{where}: expected a datasets.Dataset, got {type(split).__name__}.")
        required = (*model_inputs(spec), "labels")
        missing = [c for c in required if c not in split.column_names and c != "attention_mask"]
        if missing:
            raise ValueError(
                f"{where} is missing column(s) {missing}; a {'symbolic' if spec.is_symbolic else 'continuous'} task "
                f"needs {list(required)} (found {split.column_names})."
            )
        if len(split) == 0:
            raise ValueError(f"{where} is empty.")
        _check_first_example(spec, split[0], where)
        _check_ranges(spec, split, where)


def _check_stream(spec: TaskSpec, stream: IterableDataset, where: str, count: int = _STREAM_CHECKED) -> None:
    """Check the first ``count`` examples of an endless stream: keys, shapes and label range."""
    examples = list(itertools.islice(iter(stream), count))
    if not examples:
        raise ValueError(f"{where} is empty.")
    required = ("input_ids" if spec.is_symbolic else "inputs_embeds", "labels")
    for example in examples:
        missing = [k for k in required if k not in example]
        if missing:
            raise ValueError(f"{where}: stream examples lack {missing} (found {sorted(example)}).")
        _check_first_example(spec, example, where)
        labels = torch.as_tensor(example["labels"])
        if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
            raise ValueError(
                f"{where}: labels must be integers in [0, num_classes={spec.num_classes}), found {labels.tolist()}."
            )


def _check_first_example(spec: TaskSpec, example: dict[str, object], where: str) -> None:
    key = "input_ids" if spec.is_symbolic else "inputs_embeds"
    inputs = torch.as_tensor(example[key])
    if spec.is_symbolic and inputs.dim() != 1:
        raise ValueError(f"{where}: input_ids must have shape (tokens,), got {tuple(inputs.shape)}.")
    if not spec.is_symbolic and (inputs.dim() != 2 or inputs.shape[-1] != spec.input_dim):
        raise ValueError(
            f"{where}: inputs_embeds must have shape (tokens, input_dim={spec.input_dim}), got {tuple(inputs.shape)}."
        )
    if inputs.shape[0] > spec.max_tokens:
        raise ValueError(
            f"{where}: examples have {inputs.shape[0]} tokens, more than the spec's max_tokens={spec.max_tokens}."
        )
    labels = torch.as_tensor(example["labels"])
    expected: tuple[int, ...] = () if spec.num_outputs == 1 else (spec.num_outputs,)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{where}: labels must have shape {expected} ({spec.num_outputs} value(s) per example), got "
            f"{tuple(labels.shape)}."
        )


def _check_ranges(spec: TaskSpec, split: datasets.Dataset, where: str) -> None:
    """Scan labels (and input ids) in chunks, reading the stored columns without any decoding transform."""
    columns = ["labels", "input_ids"] if spec.is_symbolic else ["labels"]
    raw = split.with_format("numpy", columns=columns)
    limits = {"labels": ("num_classes", spec.num_classes), "input_ids": ("input_vocab_size", spec.input_vocab_size)}
    for start in range(0, len(raw), _CHUNK):
        chunk = raw[start : start + _CHUNK]
        for column in columns:
            values = np.asarray(chunk[column])
            if values.dtype == object or not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"{where}: {column} must be integers, got values of type {values.dtype}.")
            name, limit = limits[column]
            assert limit is not None
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= limit:
                raise ValueError(
                    f"{where}: {column} must lie in [0, {name}={limit}), found values in [{low}, {high}]."
                )
