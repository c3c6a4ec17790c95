"""Saving an adapter folder atomically: written and synced beside the target, then swapped in with one rename.

Several writers may save to one folder at once, and any of them may be killed at any moment: the folder holds the old
adapter or one whole new one, never a mix (see :func:`save_adapter`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoints import TEMP_PREFIX, is_adapter_key
from .durable import PROBE_PREFIX, check_writable, fsync_dir, fsync_file

SAVE_MARGIN_BYTES = 64 * 1024  # config, model card and filesystem blocks on top of the adapter weights


def estimate_save_bytes(model: torch.nn.Module) -> int:
    """About how many bytes ``model.save_pretrained`` needs: the adapter weights plus :data:`SAVE_MARGIN_BYTES`."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return SAVE_MARGIN_BYTES + sum(t.numel() * t.element_size() for name, t in tensors if is_adapter_key(name))


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return bool(result == 0)


def save_adapter(
    model: Any,
    folder: str | os.PathLike[str],
    card: str | None = None,
    extra_files: dict[str, str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """``model.save_pretrained(folder)`` so that ``folder`` holds the old adapter or the new one whenever the process
    is killed, also with several writers at once: each save is written and synced into its own folder beside it, then
    swapped in with one atomic rename (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, between which
    a kill leaves no folder). A save that fails (no space, no permission) raises an ``OSError`` naming ``folder`` and
    leaves the adapter saved there before as it was. ``card``, if given, replaces the model card (``README.md``);
    ``extra_files`` (file name -> text) are written into the same save. ``state_dict`` (a sharded model's gathered
    adapter weights, see :func:`fpt_peft.sharding.gather_adapter_state`) is saved instead of ``model.state_dict()``.
    """
    final = Path(folder).absolute()
    check_writable(final.parent, estimate_save_bytes(model), saving=final)  # ``final`` itself may be swapped meanwhile
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_saves(final)
    temp = Path(tempfile.mkdtemp(prefix=f"{_save_prefix(final)}{os.getpid()}-", dir=final.parent))
    try:
        model.save_pretrained(str(temp), **({} if state_dict is None else {"state_dict": state_dict}))
        if card is not None:
            (temp / "README.md").write_text(card, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (temp / name).write_text(text, encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        for path in sorted(temp.rglob("*")):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)  # safetensors writes 0600; mkdtemp 0700
            if path.is_file():
                fsync_file(path)
        os.chmod(temp, 0o777 & ~mask)
        fsync_dir(temp)
        _swap_in(temp, final)
    except Exception as exc:
        shutil.rmtree(temp, ignore_errors=True)
        code = getattr(exc, "errno", None) or (errno.ENOSPC if "No space left" in str(exc) else errno.EIO)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OSError(
            code,
            f"Saving the adapter to {str(final)!r} failed ({reason}); the adapter saved there before is unchanged",
        ) from exc
    return final


def _save_prefix(final: Path) -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{TEMP_PREFIX}{final.name}-{host}-"


def _remove_dead_saves(final: Path) -> None:
    """Remove the folders (and write probes) that saves of ``final`` by processes of this host that have died left
    beside it."""
    prefix = _save_prefix(final)
    for entry in final.parent.glob(f"{glob.escape(prefix)}*"):
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
    for entry in final.parent.glob(f"{glob.escape(PROBE_PREFIX)}*"):  # a process killed inside check_writable
        pid = entry.name[len(PROBE_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                entry.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _swap_in(temp: Path, final: Path) -> None:
    """Put the complete folder ``temp`` at ``final`` atomically; ``temp`` is gone afterwards."""
    for _ in range(100):  # another writer may create or swap ``final`` between two of these calls
        if _rename_exchange(temp, final):
            fsync_dir(final.parent)
            shutil.rmtree(temp, ignore_errors=True)  # now the adapter that was there before
            return
        try:
            if final.exists():  # no atomic exchange on this system
                trash = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}old-{final.name}-", dir=final.parent))
                os.replace(final, trash / final.name)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(temp, final)
            fsync_dir(final.parent)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise
    raise OSError(errno.EBUSY, f"{str(final)!r} kept changing under concurrent saves")
