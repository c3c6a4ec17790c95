"""Writing to disk so that a kill or a full disk never leaves a half-written file (the package's only writer).

Readers of a file written by :func:`write_text_atomically` see the old or the new text, never a part of either,
whenever the writer is killed; concurrent writers each write their own temporary file beside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

PROBE_PREFIX = ".tmp-probe-"  # check_writable's probe files: <prefix><pid>-<random>, cleaned up by adapter_save


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably: a temporary file beside it, fsynced, renamed over it."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp creates 0600; a saved file is readable as any other
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    fsync_dir(folder)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make a file's contents durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of a directory (files created, renamed or removed in it) durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms where a directory cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that do not support fsync on directories
        pass
    finally:
        os.close(fd)


def check_writable(
    path: str | os.PathLike[str], needed_bytes: int = 0, *, saving: str | os.PathLike[str] | None = None
) -> None:
    """Raise a clear ``OSError`` naming ``path`` (or ``saving``, what will be saved there) unless ``needed_bytes`` can
    be written there.

    ``path`` may not exist yet; its nearest existing ancestor must be a directory in which a file can really be
    created (a probe file is created and removed: permission bits say nothing for root or read-only mounts), and its
    filesystem must have ``needed_bytes`` free. Call it before long work whose result will be saved there.
    """
    target = os.path.abspath(os.fspath(path))
    shown = os.path.abspath(os.fspath(saving)) if saving is not None else target
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(
            errno.ENOTDIR, f"Cannot save to {shown!r}: {existing!r} is a file, not a directory", shown
        )
    try:
        fd, probe = tempfile.mkstemp(
            prefix=f"{PROBE_PREFIX}{os.getpid()}-", dir=existing
        )  # pid: see adapter_save._remove_dead_saves
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(
            exc.errno, f"Cannot save to {shown!r}: {existing!r} is not writable ({exc.strerror or exc})", shown
        ) from exc
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise OSError(
            errno.ENOSPC,
            f"Not enough space to save to {shown!r}: about {needed_bytes:,} bytes are needed, {free:,} are free "
            "on its filesystem",
            shown,
        )
