"""FPT's training objective: cross-entropy over the classes, in float32, per position and averaged.

One formula for the tuner's ``loss`` output, the :class:`~fpt_peft.controls.NoLM` control and the evaluation loss of
:func:`fpt_peft.training.evaluate_model` (which needs it per example, to drop the padding that Accelerate adds to the
last batch of a distributed evaluation).
"""

from __future__ import annotations

import torch
from torch import nn


def fpt_loss(logits: torch.Tensor, labels: torch.Tensor, per_example: bool = False) -> torch.Tensor:
    """Cross-entropy of ``logits`` (``[batch, classes]`` or ``[batch, positions, classes]``) against ``labels``
    (``[batch]`` or ``[batch, positions]``; ``-100`` marks a position to ignore), in float32: the mean over every
    counted position, or with ``per_example`` one value per example (the mean over its counted positions)."""
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    if not per_example:
        return nn.functional.cross_entropy(flat_logits, flat_labels)
    losses = nn.functional.cross_entropy(flat_logits, flat_labels, reduction="none").reshape(labels.shape[0], -1)
    counted = (labels.reshape(labels.shape[0], -1) != -100).sum(dim=1)
    return losses.sum(dim=1) / counted.clamp(min=1)
