"""Run by ``test_recipes.py`` under ``accelerate launch``: the digits recipe, instrumented per process.

Usage: ``accelerate launch ... tests/ddp_probe.py DUMP_DIR <digits recipe arguments>``. Each process writes
``DUMP_DIR/rank<i>.pt`` with its world size, the hashes of the training batches it saw and its final trainable
weights, so the test can check that the processes formed one group, split the data and ended in sync.
"""

from __future__ import annotations

import hashlib
import runpy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator

import fpt_peft.training as training

dump_dir = Path(sys.argv.pop(1))
seen: list[str] = []
_build_model = training.build_model
_end_training = Accelerator.end_training


def recording_build_model(*args: Any, **kwargs: Any) -> Any:
    model = _build_model(*args, **kwargs)

    def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            seen.append(hashlib.sha1(kwargs["inputs_embeds"].numpy().tobytes()).hexdigest())

    model.register_forward_pre_hook(record, with_kwargs=True)
    return model


def dumping_end_training(self: Accelerator) -> None:
    model = self.unwrap_model(self._models[0])
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.save({"world_size": world, "seen": seen, "weights": weights}, dump_dir / f"rank{self.process_index}.pt")
    _end_training(self)


training.build_model = recording_build_model  # type: ignore[assignment]
Accelerator.end_training = dumping_end_training  # type: ignore[method-assign]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "recipes" / "digits.py"), run_name="__main__")
