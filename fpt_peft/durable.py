"""Durable writes: a text file replaced atomically, and files and folders synced to disk (the package's only writer).

Readers of a file written by :func:`write_text_atomically` see the old or the new text, never a part of either,
whenever the writer is killed; concurrent writers each write their own temporary file beside it.
"""

from __future__ import annotations

import os
import tempfile


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
