"""Resumable training checkpoints with Accelerate, written atomically and holding only the adapter.

A checkpoint is ``accelerator.save_state`` of the model (its FPT adapter weights only, see
:func:`install_adapter_state_hooks`), optimizer, scheduler, every process's RNG states, and a
:class:`TrainingProgress` (optimizer steps done and position in the training data). It is written to
``<root>/.tmp-step_XXXXXX`` and renamed to ``<root>/step_XXXXXX`` once every process has finished writing, so a
folder with the final name is always complete; a run killed while saving leaves only a temporary folder, which
:func:`latest_checkpoint` ignores and the next save replaces.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from .registration import PREFIX

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
TEMP_PREFIX = ".tmp-"
WEIGHTS_NAME = "model.safetensors"  # the file accelerate's save_state writes the (filtered) model state to


@dataclass
class TrainingProgress:
    """Where training stands: optimizer steps done, and the position in the training data.

    ``epoch`` is the pass over the training set in progress, ``batch`` the number of its batches (per process)
    already consumed, ``num_processes`` the world size they were counted with.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    num_processes: int = 1

    def state_dict(self) -> dict[str, int]:
        """For ``accelerator.register_for_checkpointing``."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """For ``accelerator.load_state``."""
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:06d}"


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The most recent complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, root: str | os.PathLike[str], step: int, keep: int) -> Path:
    """Save the training state after ``step`` steps atomically (all processes call this); keep the last ``keep``."""
    root = Path(root)
    final = root / checkpoint_name(step)
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)  # left over by a run killed while saving
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        for old in list_checkpoints(root)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _is_adapter_key(key: str) -> bool:
    return PREFIX in key or "modules_to_save" in key


def install_adapter_state_hooks(accelerator: Accelerator) -> None:
    """Make ``save_state`` / ``load_state`` store only the adapter weights of the model, not the frozen base.

    Keys are those of the unwrapped model, so a checkpoint reloads whatever wraps the model (DDP or not).
    """

    def save_hook(models: list[torch.nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, model in enumerate(models):
            state = accelerator.unwrap_model(model).state_dict()
            weights[i] = {k: v.detach().contiguous() for k, v in state.items() if _is_adapter_key(k)}

    def load_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        if len(models) != 1:
            raise ValueError(f"Expected one model to restore, got {len(models)}.")
        model = accelerator.unwrap_model(models.pop())
        saved = load_file(os.path.join(input_dir, WEIGHTS_NAME))
        expected = {k for k in model.state_dict() if _is_adapter_key(k)}
        missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {input_dir!r} does not match this model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}): it was written by a run with another model or task options."
            )
        model.load_state_dict(saved, strict=False)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
