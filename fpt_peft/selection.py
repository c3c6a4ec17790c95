"""Choosing the step to keep on held-out data: a validation split carved from the training data, and the best step.

Scores reported on the test split must not have chosen anything. So a run evaluates on a validation split while it
trains: the task's own, else a stratified fraction of its training examples (``--validation-fraction``), else, for an
endless stream, a set of fresh examples of its own validation stream. :class:`BestStep` follows the validation score;
with ``--keep best`` the weights of its best step are put back at the end, and the test split is scored once, there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .data._common import stratified_split
from .data.spec import TaskData

KEEP = ("best", "last")


def with_validation(task: TaskData, fraction: float, seed: int) -> TaskData:
    """``task`` with a validation split: its own if it has one, none when ``fraction`` is 0, else ``fraction`` of the
    training examples (stratified by label for single-label tasks; the rest stay the training split) or, for an
    endless stream with ``held_out(size)``, fresh examples as many as the eval split holds.

    Raises:
        ValueError: ``fraction`` is not in [0, 1), or leaves no validation or no training example.
    """
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise ValueError(f"--validation-fraction must be in [0, 1), got {fraction!r}.")
    if task.validation is not None or fraction == 0:
        return task
    if isinstance(task.train, IterableDataset):
        held_out = getattr(task.train, "held_out", None)
        if held_out is None:
            raise ValueError(
                f"The train split is an endless {type(task.train).__name__} without held_out(size), so no validation "
                "split can be drawn from it. Pass --validation-fraction 0 or give the task a validation split."
            )
        return dataclasses.replace(task, validation=held_out(len(task.eval)))
    size = len(task.train)
    count = max(1, round(fraction * size))  # at least one: a tiny split still gets a validation example
    if not 1 <= count < size:
        raise ValueError(
            f"--validation-fraction {fraction} of {size} training examples leaves {count} for validation and "
            f"{size - count} for training; both need at least one. Pass --validation-fraction 0 or use more data."
        )
    rest, held = stratified_split(np.asarray(task.train.with_format("numpy")["labels"]), count, seed)
    return dataclasses.replace(
        task, train=task.train.select(rest.tolist()), validation=task.train.select(held.tolist())
    )


@dataclasses.dataclass
class BestStep:
    """The best validation result so far: its step, score (higher is better; ties go to the lower loss, then the
    earlier step), and, when kept, a copy of the trainable weights then. Registered for checkpointing, so a resumed
    run keeps the same best step."""

    step: int = 0
    score: float = -math.inf
    loss: float = math.inf
    evaluations_since: int = 0
    weights: list[torch.Tensor] | None = None

    def update(self, step: int, score: float, loss: float, trainable: Sequence[torch.Tensor], keep: bool) -> bool:
        """Record the evaluation at ``step``; True when it is the new best (its weights copied when ``keep``)."""
        if (score, -loss) <= (self.score, -self.loss):
            self.evaluations_since += 1
            return False
        self.step, self.score, self.loss, self.evaluations_since = step, score, loss, 0
        self.weights = [p.detach().clone() for p in trainable] if keep else None
        return True

    def restore(self, trainable: Sequence[torch.Tensor]) -> None:
        """Put the best step's weights back into ``trainable``."""
        if self.weights is None:
            raise RuntimeError("BestStep.restore: no weights were kept (keep=False, or no evaluation yet).")
        with torch.no_grad():
            for param, kept in zip(trainable, self.weights, strict=True):
                param.copy_(kept)

    def state_dict(self) -> dict[str, Any]:
        """For ``accelerator.register_for_checkpointing``."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """For ``accelerator.load_state``."""
        for key, value in state.items():
            setattr(self, key, value)
