"""Resumable training checkpoints with Accelerate: atomic, durable, verified, and holding only the adapter.

A checkpoint is ``accelerator.save_state`` of the model (its FPT adapter weights only, see
:func:`install_adapter_state_hooks`), optimizer, scheduler, every process's RNG states, and a
:class:`TrainingProgress` (optimizer steps done and position in the training data), plus a manifest
(``checkpoint.json``: the step, and the size and SHA-256 of every file).

How a save survives being killed at any moment (SIGKILL, power loss):

1. Every file is written to ``<root>/.tmp-step_XXXXXX``; once all processes are done, the main process fsyncs each
   file, writes the manifest last (fsynced too) and fsyncs the folder.
2. The folder is renamed to ``<root>/step_XXXXXX`` (``os.replace``, atomic) and ``<root>`` is fsynced. Only now does
   the checkpoint exist: a folder with the final name always holds a complete, durable checkpoint.
3. Only then are the checkpoints beyond the last ``keep`` deleted (never the one just written): each is first
   renamed to a ``.tmp-`` name (atomic, made durable), then removed, so a deletion killed half-way leaves a
   temporary folder, never a half-deleted checkpoint under a final name.

Accelerate's own ``ProjectConfiguration(total_limit=...)`` is not used for step 3: it deletes the oldest checkpoints
with ``shutil.rmtree`` *before* the new one is written, so a kill in between can leave fewer good checkpoints than
asked for, or a half-deleted one under a final name.

Anything starting with ``.tmp-`` is ignored by :func:`latest_checkpoint` and removed by the next save.
:func:`list_checkpoints` also ignores ``step_*`` folders whose manifest is missing or whose files do not have the
recorded sizes; before a resume, :func:`verify_checkpoint` checks the digests as well, and the trainer falls back to
the previous checkpoint if the latest one was damaged after it was written.

Each step of the protocol is a function of its own (:func:`_create_temporary_folder`, ``accelerator.save_state``,
:func:`_write_manifest`, :func:`_publish`, :func:`_prune`), so that the kill tests can stop a save between any two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from .durable import fsync_dir, fsync_file
from .tuner import PREFIX

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
TEMP_PREFIX = ".tmp-"
WEIGHTS_NAME = "model.safetensors"  # the file accelerate's save_state writes the (filtered) model state to
MANIFEST_NAME = "checkpoint.json"
MANIFEST_FORMAT = 1
# Checkpoints written by fpt-peft 0.1.0 have no manifest; they count as complete when these files are there.
LEGACY_FILES = (WEIGHTS_NAME, "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl")


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or damaged (missing files, wrong sizes or digests)."""


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
        """For ``accelerator.register_for_checkpointing`` (saved after the model, optimizer and RNG files)."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """For ``accelerator.load_state``."""
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:06d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step of a checkpoint folder, from its name."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (step_XXXXXX).")
    return int(match.group(1))


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    return manifest


def _why_incomplete(folder: Path, digests: bool) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None if it is."""
    if not folder.is_dir():
        return "no such folder"
    manifest = _read_manifest(folder)
    if manifest is None:
        if (folder / MANIFEST_NAME).exists():
            return f"its {MANIFEST_NAME} is unreadable"
        missing = [name for name in LEGACY_FILES if not (folder / name).is_file()]  # fpt-peft 0.1.0's format
        return f"it has no {MANIFEST_NAME} and lacks {missing}" if missing else None
    if manifest.get("step") != checkpoint_step(folder):
        return f"its {MANIFEST_NAME} records step {manifest.get('step')}"
    for name, entry in manifest["files"].items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry.get("bytes"):
            return f"{name} has {size} bytes, {entry.get('bytes')} were written"
        if digests and _sha256(path) != entry.get("sha256"):
            return f"{name} does not have the SHA-256 recorded when it was written"
    return None


def verify_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` is a complete checkpoint whose files match its manifest."""
    problem = _why_incomplete(Path(folder), digests=True)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {str(folder)!r} is incomplete or damaged: {problem}.")


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first.

    Temporary folders (``.tmp-*``: a save or deletion in progress, or killed) and ``step_*`` folders without a valid
    manifest or with files of the wrong size are not listed. Digests are checked by :func:`verify_checkpoint`.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if _why_incomplete(p, digests=False) is None]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The most recent complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes taken by the files of a checkpoint folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def estimate_checkpoint_bytes(model: torch.nn.Module, num_processes: int = 1) -> int:
    """About how many bytes one checkpoint of ``model`` takes (an upper estimate, for ``check_writable``).

    The adapter weights (everything :func:`install_adapter_state_hooks` saves), Adam's two moments per trainable
    weight, serialisation overhead per tensor, and each process's RNG states (CPU, NumPy, Python, CUDA).
    """
    saved = trainable = tensors = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if is_adapter_key(name):
            saved += tensor.numel() * tensor.element_size()
            tensors += 1
    for param in model.parameters():
        if param.requires_grad:
            trainable += param.numel() * param.element_size()
            tensors += 2
    return saved + 2 * trainable + 1024 * tensors + 32 * 1024 * num_processes + 32 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_dirs(folder: Path) -> None:
    """``mkdir -p folder``, with every new directory entry made durable."""
    new = []
    while not folder.exists():
        new.append(folder)
        folder = folder.parent
    for path in reversed(new):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


def _write_manifest(folder: Path, step: int, num_processes: int) -> None:
    """Fsync every file of ``folder``, then write (and fsync) the manifest recording their sizes and digests."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fsync_file(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "num_processes": num_processes, "files": files}
    with open(folder / MANIFEST_NAME, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(sub)


def _delete_atomically(root: Path, folders: Iterable[Path]) -> None:
    """Delete ``folders`` (under ``root``) so that a kill at any moment leaves no half-deleted checkpoint: each is
    renamed to a ``.tmp-`` name first (atomic, made durable), and only then removed."""
    moved = []
    for folder in folders:
        trash = root / f"{TEMP_PREFIX}delete-{folder.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        moved.append(trash)
    if moved:
        fsync_dir(root)
    for trash in moved:
        _remove_renamed(trash)


def _remove_renamed(trash: Path) -> None:
    """Remove a folder :func:`_delete_atomically` has renamed out of the way."""
    shutil.rmtree(trash, ignore_errors=True)


def _remove_temporary(root: Path) -> None:
    """Remove what saves and deletions killed half-way left behind (every ``.tmp-*`` entry of ``root``)."""
    for entry in root.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def save_checkpoint(
    accelerator: Accelerator,
    root: str | os.PathLike[str],
    step: int,
    keep: int,
    write_extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Save the training state after ``step`` steps atomically and durably (all processes call this).

    ``write_extra_files(folder)``, if given, is called on every process after ``accelerator.save_state`` to write
    more files into the checkpoint (the sharded state of :mod:`fpt_peft.sharding`); they are part of its manifest.
    Keeps the last ``keep`` complete checkpoints (at least this one); see the module docstring for the protocol.
    """
    root = Path(root)
    temp = _temporary_folder(root, step)
    if accelerator.is_main_process:
        _create_temporary_folder(root, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    if write_extra_files is not None:
        write_extra_files(temp)
    accelerator.wait_for_everyone()
    final = root / checkpoint_name(step)
    if accelerator.is_main_process:
        _write_manifest(temp, step, accelerator.num_processes)
        _publish(temp, final)
        _prune(root, keep, final)
    accelerator.wait_for_everyone()
    return final


def _temporary_folder(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is renamed to its final name."""
    return root / f"{TEMP_PREFIX}{checkpoint_name(step)}"


def _create_temporary_folder(root: Path, step: int) -> Path:
    """Step 1 begins: ``<root>/.tmp-step_XXXXXX``, empty, after removing what killed saves left in ``root``."""
    _make_dirs(root)
    _remove_temporary(root)
    temp = _temporary_folder(root, step)
    temp.mkdir()
    return temp


def _publish(temp: Path, final: Path) -> None:
    """Step 2: rename the complete, synced ``temp`` to ``final`` (atomic, made durable); the checkpoint now exists.

    A folder already named ``final`` is incomplete or damaged (a complete one would have been resumed): deleted first.
    """
    if final.exists():
        _delete_atomically(final.parent, [final])
    os.replace(temp, final)
    fsync_dir(final.parent)


def _prune(root: Path, keep: int, final: Path) -> None:
    """Step 3: delete the complete checkpoints before the last ``keep`` (never ``final``, the one just written)."""
    complete = list_checkpoints(root)
    _delete_atomically(root, [p for p in complete[: -max(keep, 1)] if p != final])


def remove_checkpoints(root: str | os.PathLike[str]) -> None:
    """Delete the checkpoint folder ``root`` and everything in it, atomically: it is renamed first, then removed.

    A kill half-way leaves no checkpoint behind that a later ``--resume`` could mistake for the new run's.
    """
    root = Path(root)
    trash = root.with_name(f"{TEMP_PREFIX}removed-{root.name}")
    shutil.rmtree(trash, ignore_errors=True)  # left by an earlier kill
    if root.exists():
        os.replace(root, trash)
        fsync_dir(root.parent)
        shutil.rmtree(trash, ignore_errors=True)


def set_aside_damaged(folder: str | os.PathLike[str]) -> Path:
    """Rename a damaged checkpoint to ``step_XXXXXX.damaged[-N]`` (kept for inspection, never listed or pruned)."""
    folder = Path(folder)
    target = folder.with_name(f"{folder.name}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.damaged-{n}")
    os.replace(folder, target)
    fsync_dir(folder.parent)
    return target


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key of a PeftModel belongs to its adapter (what checkpoints and saves keep)."""
    return PREFIX in key or "modules_to_save" in key


def install_adapter_state_hooks(accelerator: Accelerator) -> None:
    """Make ``save_state`` / ``load_state`` store only the adapter weights of the model, not the frozen base.

    Keys are those of the unwrapped model, so a checkpoint reloads whatever wraps the model (DDP or not).
    Not peft's ``get_peft_model_state_dict`` / ``set_peft_model_state_dict``: they need a ``PeftModel``, and
    ``train(model=...)`` checkpoints controls such as :class:`~fpt_peft.controls.NoLM` that are not one (their
    trained weights are named ``fpt_*``, which :func:`is_adapter_key` keeps).
    """

    def save_hook(models: list[torch.nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, model in enumerate(models):
            state = accelerator.unwrap_model(model, keep_torch_compile=False).state_dict()
            weights[i] = {k: v.detach().contiguous() for k, v in state.items() if is_adapter_key(k)}

    def load_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        if len(models) != 1:
            raise ValueError(f"Expected one model to restore, got {len(models)}.")
        model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
        saved = load_file(os.path.join(input_dir, WEIGHTS_NAME))
        expected = {k for k in model.state_dict() if is_adapter_key(k)}
        missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {input_dir!r} does not match this model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}): it was written by a run with another model or task options."
            )
        model.load_state_dict(saved, strict=False)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
