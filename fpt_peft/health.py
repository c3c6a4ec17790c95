"""The NaN policy: NaN or Inf anywhere in training stops it, on every process, before anything broken is saved.

What is watched: a batch's inputs, the loss, the gradient norm and, before each save, the trainable weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .checkpoints import latest_checkpoint


class NonFiniteError(FloatingPointError):
    """Training met NaN or Inf: in a batch's inputs (``kind="inputs"``), the loss (``"loss"``), the gradient norm
    (``"gradients"``, with gradient clipping on) or, checked before each save, the trainable weights (``"weights"``).

    ``step`` is the optimizer step (1-based) it happened at (for ``"weights"``: the step after which it was found).
    Raised on every process alike. No checkpoint of that step or later is written, and every checkpoint written
    holds finite weights, so the last complete checkpoint is the last good state.
    """

    def __init__(self, message: str, *, step: int, kind: str) -> None:
        super().__init__(message)
        self.step, self.kind = step, kind


HEALTH = ("inputs", "loss", "gradients", "weights")  # what ``health`` tracks, in order (see :func:`check_health`)


def check_health(
    accelerator: Accelerator, health: torch.Tensor, embeds: str | None, args: Any, checkpoints: Path
) -> None:
    """Raise :class:`NonFiniteError` on every process if any process has seen NaN or Inf (see ``health``)."""
    width = len(HEALTH)
    if accelerator.num_processes > 1:
        rows = accelerator.gather(health).reshape(-1, width).tolist()  # every process gets every row
    else:
        rows = [health.tolist()]
    # The earliest step; at one step, the first cause in HEALTH's order (bad inputs explain a bad loss, ...).
    seen = [(row[kind], kind, rank) for rank, row in enumerate(rows) for kind in range(width) if row[kind] > 0]
    if not seen:
        return
    step, kind, rank = min(seen)
    last = latest_checkpoint(checkpoints)
    kept = f"the last complete checkpoint, {str(last)!r}, is intact" if last else "no checkpoint had been written"
    where = f" (process {rank})" if accelerator.num_processes > 1 else ""
    settings = (
        f"--learning-rate {args.learning_rate:g}, --max-grad-norm {args.max_grad_norm:g}, --mixed-precision "
        f"{accelerator.mixed_precision}"
    )
    if HEALTH[kind] == "inputs":
        message = (
            f"{embeds} contain NaN or Inf in the batch of step {step}{where}: the training data (or a transform of "
            f"it) has non-finite values. Nothing after step {step - 1} was saved; {kept}."
        )
    elif HEALTH[kind] == "loss":
        message = (
            f"Non-finite training loss (NaN or Inf) at step {step}{where}, with finite inputs: training diverged "
            f"({settings}), or a weight became non-finite. Nothing after step {step - 1} was saved; {kept}."
        )
    elif HEALTH[kind] == "gradients":
        message = (
            f"Non-finite gradient norm (NaN or Inf) at step {step}{where}, with a finite loss: training diverged "
            f"({settings}); that step's update made the weights non-finite. Nothing after step {step - 1} was "
            f"saved; {kept}."
        )
    else:
        message = (
            f"Trainable weights are non-finite (NaN or Inf) after step {step}{where}, though every loss was finite: "
            f"training diverged ({settings}). This state was not saved; {kept}."
        )
    raise NonFiniteError(message, step=step, kind=HEALTH[kind])
