"""Continuing a run: the last intact checkpoint restored into the run, damaged ones set aside."""

from __future__ import annotations

import typing
from pathlib import Path

from accelerate import Accelerator

from .checkpoints import CheckpointError, TrainingProgress, list_checkpoints, set_aside_damaged, verify_checkpoint
from .sharding import SHARDED_STATE_DIR


def resume_latest(
    accelerator: Accelerator,
    checkpoints: Path,
    progress: TrainingProgress,
    strict: bool,
    read_sharded_state: typing.Callable[[Path], None] | None = None,
) -> None:
    """Load the last complete checkpoint, if any (model adapter, optimizer, scheduler, RNG states, progress), and
    what ``read_sharded_state(folder)`` restores (a sharded model's adapter and optimizer state).

    Checkpoints whose files no longer match their manifest (damaged after they were written) are renamed to
    ``step_XXXXXX.damaged`` and the previous one is used.
    """
    last = None
    damaged = []
    for candidate in reversed(list_checkpoints(checkpoints)):
        try:
            verify_checkpoint(candidate)
        except CheckpointError as exc:
            accelerator.print(f"--resume: skipping a damaged checkpoint. {exc}")
            damaged.append(candidate)
            continue
        last = candidate
        break
    accelerator.wait_for_everyone()  # every process has verified before the damaged ones move
    if damaged and accelerator.is_main_process:
        for folder in damaged:
            accelerator.print(f"--resume: moved {folder} to {set_aside_damaged(folder)}.")
    accelerator.wait_for_everyone()
    if last is None:
        if strict:
            raise FileNotFoundError(f"--resume: no intact checkpoint in {str(checkpoints)!r} to continue from.")
        accelerator.print(f"No complete checkpoint in {checkpoints}: training afresh.")
        return
    sharded = (last / SHARDED_STATE_DIR).is_dir()
    if sharded != (read_sharded_state is not None):
        written, now = ("a sharded (FSDP)", "unsharded") if sharded else ("an unsharded", "sharded (FSDP)")
        raise ValueError(
            f"{last} was written by {written} run, and this run is {now}: resume it the way it was started (with or "
            "without --config_file recipes/accelerate_configs/fsdp.yaml), or start afresh with --overwrite-output-dir."
        )
    processes = accelerator.num_processes
    accelerator.load_state(str(last))
    if progress.num_processes != processes:
        raise ValueError(
            f"{last} was written by a run with {progress.num_processes} process(es); resume it with the same number "
            f"(this run has {processes})."
        )
    if read_sharded_state is not None:
        read_sharded_state(last)
    accelerator.print(f"Resumed from {last} at step {progress.step}.")
