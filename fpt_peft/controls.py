"""Controls for "does the frozen LM help?": a model without the LM, and inputs whose token order is shuffled.

- :class:`NoLM` is FPT with the language model removed (Tan et al., NeurIPS 2024, "w/o LLM"): the new input layer
  maps every token to the model's width, and the output layer reads all of them at once (flattened), as the output
  heads of GPT4TS-style models do. A linear model of the whole input, trained the way FPT is: what FPT's new layers
  reach without any transformer between them.
- :func:`shuffle_tokens` permutes each example's real tokens (Tan et al.'s input shuffling): a model that scores as
  well on shuffled inputs does not use their order.

The other controls are options of :func:`fpt_peft.modeling.build_model`: a random backbone (``init="random"``), the
pretrained weights shuffled within each tensor (``init="shuffled"``), full finetuning and training from scratch
(``finetune="full"``), and one randomly initialised trainable block in place of the LM (``num_layers=1``).
"""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .data.spec import TaskData, TaskSpec
from .loss import fpt_loss


class NoLM(nn.Module, PyTorchModelHubMixin):  # type: ignore[misc]
    """FPT's new input layer straight into its output layer, which reads every token (flattened); no LM between.

    Takes the inputs and ``labels`` of the task ``spec`` describes and returns ``loss`` and ``logits`` shaped as an
    FPT model's (:class:`~fpt_peft.data.spec.TaskSpec`), so :func:`fpt_peft.training.train` trains it like one;
    ``save_pretrained`` / ``from_pretrained`` (huggingface_hub) write and read it with its config. Parameter names
    start with ``fpt_``: checkpoints keep all of them.
    """

    def __init__(
        self,
        hidden_size: int,
        max_tokens: int,
        num_classes: int,
        num_outputs: int = 1,
        input_dim: int | None = None,
        input_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if (input_dim is None) == (input_vocab_size is None):
            raise ValueError("NoLM needs exactly one of input_dim and input_vocab_size.")
        self.max_tokens, self.num_classes, self.num_outputs = max_tokens, num_classes, num_outputs
        self.fpt_input: nn.Module = (
            nn.Linear(input_dim, hidden_size)
            if input_dim is not None
            else nn.Embedding(int(input_vocab_size or 0), hidden_size)
        )
        self.fpt_output = nn.Linear(max_tokens * hidden_size, num_outputs * num_classes)

    @classmethod
    def for_task(cls, spec: TaskSpec, hidden_size: int) -> NoLM:
        """The control for the task ``spec`` at the width ``hidden_size`` of the backbone it stands beside."""
        return cls(
            hidden_size=hidden_size,
            max_tokens=spec.max_tokens,
            num_classes=spec.num_classes,
            num_outputs=spec.num_outputs,
            input_dim=spec.input_dim,
            input_vocab_size=spec.input_vocab_size,
        )

    def forward(
        self,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Logits ``(batch, num_classes)`` (one output) or ``(batch, num_outputs, num_classes)``; ``loss`` with
        ``labels``: the mean cross-entropy over every output, as FPT's."""
        inputs = inputs_embeds if inputs_embeds is not None else input_ids
        if inputs is None:
            raise ValueError("NoLM needs inputs_embeds or input_ids.")
        hidden = self.fpt_input(inputs)
        if attention_mask is not None:
            hidden = hidden * attention_mask[..., None].to(hidden.dtype)
        if hidden.shape[1] > self.max_tokens:
            raise ValueError(f"NoLM reads {self.max_tokens} tokens; the input has {hidden.shape[1]}.")
        hidden = nn.functional.pad(hidden, (0, 0, 0, self.max_tokens - hidden.shape[1]))
        logits = self.fpt_output(hidden.flatten(1)).view(len(hidden), self.num_outputs, self.num_classes)
        if self.num_outputs == 1:
            logits = logits[:, 0]
        loss = None if labels is None else fpt_loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def shuffle_tokens(task: TaskData, seed: int) -> TaskData:
    """``task`` with the real tokens of every example of every finite split in a random order of their own (seeded by
    ``seed`` and the split); padding stays at the end. An endless train stream is refused (ValueError)."""
    if not isinstance(task.train, datasets.Dataset):
        raise ValueError("Shuffled inputs need a finite train split; pass the task without stream=True.")
    validation = task.validation
    return dataclasses.replace(
        task,
        train=_shuffled(task.train, np.random.default_rng([seed, 0])),
        eval=_shuffled(task.eval, np.random.default_rng([seed, 1])),
        validation=None if validation is None else _shuffled(validation, np.random.default_rng([seed, 2])),
    )


def _shuffled(split: datasets.Dataset, rng: np.random.Generator) -> datasets.Dataset:
    columns = split.with_format("numpy")[:]
    key = "inputs_embeds" if "inputs_embeds" in columns else "input_ids"
    inputs = np.array(columns[key])
    mask = np.asarray(columns["attention_mask"]) if "attention_mask" in columns else None
    for row in range(len(inputs)):
        real = int(mask[row].sum()) if mask is not None else inputs.shape[1]  # right-padded
        inputs[row, :real] = inputs[row, rng.permutation(real)]
    return datasets.Dataset.from_dict({**columns, key: inputs}, features=split.features).with_format("torch")
