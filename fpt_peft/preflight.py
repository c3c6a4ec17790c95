"""Before the first step: can the run write what it will write (checkpoints, the adapter, the metric's cache)?"""

from __future__ import annotations

import errno
from pathlib import Path

import torch
from accelerate import Accelerator

from .adapter_save import estimate_save_bytes
from .arguments import FPTTrainingArguments
from .checkpoints import checkpoint_bytes, estimate_checkpoint_bytes, list_checkpoints
from .durable import check_writable
from .metrics import load_metric


def check_output_space(
    accelerator: Accelerator, args: FPTTrainingArguments, model: torch.nn.Module, output_dir: Path, metric: str
) -> None:
    """Before the first step: fail unless ``output_dir`` is writable and has room for the checkpoints and adapter.

    A checkpoint is estimated by :func:`~fpt_peft.checkpoints.estimate_checkpoint_bytes` (adapter weights, Adam's
    two moments, RNG states); at its peak a run holds ``keep_checkpoints`` of them plus the one being written, and
    the final adapter. Checkpoints already there (``--resume``, ``--overwrite-output-dir``) count as space that
    will be reused. The evaluation metric is created once too (``evaluate`` makes a cache folder for it). Every
    process checks; if any fails, all raise, so that none waits for the others forever.
    """
    checkpoints = output_dir / "checkpoints"
    one = estimate_checkpoint_bytes(model, accelerator.num_processes)
    adapter = estimate_save_bytes(model)
    existing = sum(checkpoint_bytes(p) for p in list_checkpoints(checkpoints))
    needed = max(0, (args.keep_checkpoints + 1) * one - existing) + adapter
    error: OSError | None = None
    try:
        check_writable(output_dir, needed)
        for folder in (checkpoints, output_dir / "adapter"):  # either may exist already, with other permissions
            check_writable(folder)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            hint = (
                f"this run needs about {needed:,} bytes there: {args.keep_checkpoints} checkpoint(s) plus one being "
                f"written (about {one:,} bytes each) and the final adapter (about {adapter:,} bytes). Free some space "
                "or pass another --output-dir (or a lower --keep-checkpoints)."
            )
        else:
            hint = "pass a writable --output-dir."
        error = type(exc)(exc.errno, f"{exc.strerror}. Checked before training: {hint}")
        error.__cause__ = exc
    if error is None:
        try:
            load_metric(metric)
        except OSError as exc:
            error = type(exc)(
                exc.errno,
                f"Cannot create the {metric!r} metric, checked before training: the evaluate library needs a "
                f"writable cache folder ({exc.strerror}: {exc.filename!r}). Set HF_METRICS_CACHE (or HF_HOME) to a "
                "writable folder.",
            )
            error.__cause__ = exc
    failures = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
    if error is not None:
        raise error
    if float(failures) > 0:
        raise OSError(
            f"Another process failed the checks of --output-dir {str(output_dir)!r} before training; see its error."
        )
