"""Fault injection into fpt_peft's checkpoint saves, for the kill tests (a test helper; the package holds none).

:func:`install` wraps the functions that make up a save (:mod:`fpt_peft.checkpoints`), so that entering each phase
runs the directives of a spec. The spec is a comma-separated list:

- ``trace=PATH``: append ``"<step> <phase>"`` to PATH on entering each phase;
- ``pause=SECONDS``: sleep at each phase, so that an external kill can land inside a checkpoint write;
- ``kill=PHASE[@STEP]``: SIGKILL this process on entering PHASE (of the save of STEP).

The phases, in order (:data:`SAVE_PHASES`): the temporary folder is created; the files are being written (between
the model, optimizer and RNG files and the training progress, on every process); all files are written; they and
the manifest are synced; the folder is renamed to its final name; each older checkpoint is being deleted; the save
is done.

``python -m tests.checkpoint_faults SCRIPT [ARGS ...]`` (also as ``accelerate launch -m tests.checkpoint_faults``)
installs the spec in ``$FPT_PEFT_CHECKPOINT_FAULT`` and runs SCRIPT as ``__main__``.
"""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fpt_peft import checkpoints

FAULT_ENV = "FPT_PEFT_CHECKPOINT_FAULT"
SAVE_PHASES = ("temp_created", "between_files", "files_written", "synced", "renamed", "pruning", "done")


def install(spec: str) -> None:
    """Run ``spec``'s directives at every phase of the checkpoint saves of this process (no-op for ``""``)."""
    directives = [d.strip().partition("=") for d in spec.split(",") if d.strip()]
    if not directives:
        return
    saving = {"step": 0}  # the step of the save in progress (the main process's phases carry no step of their own)

    def enter(phase: str, step: int) -> None:
        for key, _, value in directives:
            if key == "trace":
                with open(value, "a", encoding="utf-8") as handle:
                    handle.write(f"{step} {phase}\n")
            elif key == "pause":
                time.sleep(float(value))
            elif key == "kill" and value in (phase, f"{phase}@{step}"):
                os.kill(os.getpid(), signal.SIGKILL)

    def around(name: str, before: str | None = None, after: str | None = None) -> None:
        original: Callable[..., Any] = getattr(checkpoints, name)

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                enter(before, saving["step"])
            result = original(*args, **kwargs)
            if after:
                enter(after, saving["step"])
            return result

        setattr(checkpoints, name, wrapped)

    create = checkpoints._create_temporary_folder

    def create_temporary_folder(root: Path, step: int) -> Path:
        saving["step"] = step
        folder = create(root, step)
        enter("temp_created", step)
        return folder

    state_dict = checkpoints.TrainingProgress.state_dict

    def progress_state_dict(self: checkpoints.TrainingProgress) -> dict[str, int]:
        enter("between_files", self.step)  # every process saves its progress after its other files
        return state_dict(self)

    checkpoints._create_temporary_folder = create_temporary_folder  # type: ignore[assignment]
    checkpoints.TrainingProgress.state_dict = progress_state_dict  # type: ignore[method-assign]
    around("_write_manifest", before="files_written", after="synced")
    around("_publish", after="renamed")
    around("_remove_renamed", before="pruning")
    around("_prune", after="done")


if __name__ == "__main__":
    install(os.environ.get(FAULT_ENV, ""))
    script, *arguments = sys.argv[1:]
    sys.argv = [script, *arguments]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
