"""Safe adapter files: safetensors-only loading, integrity checks, atomic and concurrency-safe saves.

:func:`install` (run by ``fpt_peft.registration.register()``) routes peft's ``PeftModel.save_pretrained``,
``PeftModel.from_pretrained``, ``PeftModel.load_adapter`` and transformers' ``load_adapter`` through this module
for FPT adapters; other adapters pass through untouched.

- Untrusted files: weights load from ``adapter_model.safetensors`` only. A pickled ``adapter_model.bin`` is refused
  unless the caller opts in (``with fpt_peft.allow_pickled_adapters():`` or ``FPT_PEFT_ALLOW_PICKLE=1``).
- Integrity: a save records the SHA-256 of the weights file in ``adapter_config.json`` (``weights_sha256``); every
  load verifies it, so a config and weights from different saves are refused (:class:`AdapterIntegrityError`).
- Atomic saves: peft writes into a staging folder inside the target; the files are then moved in with
  ``os.replace`` under an exclusive ``flock`` on ``.fpt_peft.lock``, following a journal (``.fpt_peft.journal``)
  so that a save killed half-way is completed by the next process that opens the folder. Loads hold a shared
  lock. A reader therefore sees the old or the new adapter, never a mix. (Locks need ``fcntl``, i.e. POSIX, and
  a filesystem where ``flock`` works across the processes involved; without them the digest still refuses mixes.)
- Faults: an unwritable directory or a full disk is reported by :func:`check_writable` before anything is written;
  a write that fails half-way leaves the adapter previously saved there as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import hashlib
import inspect
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: saves stay atomic per file, digests still refuse mixes
    fcntl = None  # type: ignore[assignment]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
LOCK_NAME = ".fpt_peft.lock"
JOURNAL_NAME = ".fpt_peft.journal"
STAGING_PREFIX = ".fpt_peft.staging-"
PICKLE_ENV = "FPT_PEFT_ALLOW_PICKLE"
SAVE_MARGIN_BYTES = 64 * 1024  # config, model card and filesystem blocks on top of the weights

_allow_pickle: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fpt_peft_allow_pickle", default=None)
_local = threading.local()  # .locks: {lock path: [fd, exclusive, depth]}, .guarded: set of keys being loaded


class PickledAdapterError(ValueError):
    """The adapter's weights are only available as a pickle, which fpt-peft does not load unless allowed."""


class AdapterIntegrityError(ValueError):
    """An adapter's config and weights do not belong together, or an interrupted save cannot be completed."""


# ---------------------------------------------------------------------------------------------- pickle opt-in
def pickle_allowed() -> bool:
    """Whether pickled adapter weights may be loaded (and saved) here: the context manager, else the env var."""
    allowed = _allow_pickle.get()
    if allowed is not None:
        return allowed
    return os.environ.get(PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def allow_pickled_adapters(allow: bool = True) -> Iterator[None]:
    """Allow (or, with ``allow=False``, forbid) loading pickled ``adapter_model.bin`` files inside the block.

    Only for files you trust: unpickling can run code. peft reads them with ``torch.load(weights_only=True)``, which
    narrows but has not always closed that hole. Better: load once, then ``save_pretrained`` writes safetensors.
    """
    token = _allow_pickle.set(allow)
    try:
        yield
    finally:
        _allow_pickle.reset(token)


def _pickle_refusal(where: str) -> PickledAdapterError:
    return PickledAdapterError(
        f"{where} holds the adapter weights only as a pickle ({PICKLE_NAME}), and fpt-peft loads "
        f"{SAFETENSORS_NAME} only: unpickling an untrusted file can run code. If you trust it, load it inside "
        f"`with fpt_peft.allow_pickled_adapters():` (or set {PICKLE_ENV}=1), then save it again with "
        "save_pretrained, which writes safetensors."
    )


# ---------------------------------------------------------------------------------------------- checks
def check_writable(path: str | os.PathLike[str], needed_bytes: int = 0) -> None:
    """Raise a clear ``OSError`` naming ``path`` unless ``needed_bytes`` can be written there.

    ``path`` is a directory that may not exist yet; its nearest existing ancestor must be a directory in which a file
    can really be created (a probe file is created and removed: permission bits alone say nothing for root or for
    read-only mounts), and its filesystem must have ``needed_bytes`` free. Call it before long work whose result
    will be saved there.
    """
    target = os.path.abspath(os.fspath(path))
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(
            errno.ENOTDIR, f"Cannot save to {target!r}: {existing!r} is a file, not a directory", target
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".fpt_peft.probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(
            exc.errno, f"Cannot save to {target!r}: {existing!r} is not writable ({exc.strerror or exc})", target
        ) from exc
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise OSError(
            errno.ENOSPC,
            f"Not enough space to save to {target!r}: about {needed_bytes:,} bytes are needed, {free:,} are free "
            "on its filesystem",
            target,
        )


def file_sha256(path: str) -> str:
    """SHA-256 of a file, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_fpt(config: dict[str, Any] | None) -> bool:
    return config is not None and config.get("peft_type") == "FPT"


def verify_adapter_files(
    config_path: str, weights_path: str | None, *, where: str, hidden_size: int | None = None
) -> None:
    """Check an adapter's weights file against its config: format, completeness, digest, plausible sizes.

    ``weights_path`` is None when there is no weights file; ``where`` names the adapter in errors.
    """
    if weights_path is None:
        raise FileNotFoundError(
            f"{where} has an adapter_config.json but no {SAFETENSORS_NAME}: the adapter was not saved completely. "
            "Save it again with model.save_pretrained(...)."
        )
    if weights_path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(weights_path, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118  (safe_open is not iterable; reading all catches truncation)
                    handle.get_tensor(key)  # one tensor at a time: memory stays at the largest tensor
        except Exception as exc:
            raise ValueError(
                f"{weights_path!r} is corrupted or truncated and cannot be read as safetensors ({exc})."
            ) from exc
    config = _read_json(config_path) or {}
    recorded = config.get("weights_sha256")
    if isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{64}", recorded):  # else the config load names it
        actual = file_sha256(weights_path)
        if actual != recorded:
            raise AdapterIntegrityError(
                f"{weights_path!r} does not belong to {config_path!r}: the config records weights with SHA-256 "
                f"{recorded[:16]}..., the file has {actual[:16]}.... They come from different saves (a partial copy, "
                "an edited folder, or a writer that does not use fpt-peft); save the adapter again."
            )
    _check_declared_sizes(config, os.path.getsize(weights_path), hidden_size, config_path)


def _check_declared_sizes(config: dict[str, Any], file_bytes: int, hidden_size: int | None, config_path: str) -> None:
    """Refuse configs whose new layers could not fit in the weights file (before peft allocates them)."""
    from .config import FPTConfig

    known = {f for f in FPTConfig.__dataclass_fields__ if f != "peft_type"}
    try:
        fpt_config = FPTConfig(**{k: v for k, v in config.items() if k in known})
    except (TypeError, ValueError):
        return  # loading the config reports the problem, naming the field
    hidden = fpt_config.base_hidden_size or hidden_size  # the recorded width sized the saved layers
    if hidden is None:
        return
    declared = fpt_config.new_layer_parameters(hidden)
    if declared > file_bytes:  # every saved weight takes at least one byte
        raise ValueError(
            f"{config_path!r} declares new input/output layers of {declared:,} weights for a base of width {hidden}, "
            f"but the adapter's weights file has only {file_bytes:,} bytes: the config is inconsistent (edited or "
            "from another adapter). Refusing before allocating those layers."
        )


def _local_weights(folder: str) -> str | None:
    """The weights file peft will load from ``folder`` (refusing a pickle unless allowed), or None."""
    safetensors_path = os.path.join(folder, SAFETENSORS_NAME)
    if os.path.isfile(safetensors_path):
        return safetensors_path
    pickle_path = os.path.join(folder, PICKLE_NAME)
    if os.path.isfile(pickle_path):
        if not pickle_allowed():
            raise _pickle_refusal(repr(folder))
        return pickle_path
    return None


def verify_adapter_folder(folder: str | os.PathLike[str], hidden_size: int | None = None) -> None:
    """:func:`verify_adapter_files` for a local adapter folder."""
    folder = os.fspath(folder)
    if os.path.abspath(folder) in _guarded():  # verified by the load this call is part of, under its lock
        return
    verify_adapter_files(
        os.path.join(folder, CONFIG_NAME), _local_weights(folder), where=repr(folder), hidden_size=hidden_size
    )


def _hub_files(repo_id: str, subfolder: str | None, download_kwargs: dict[str, Any]) -> tuple[str, str | None] | None:
    """(config file, weights file or None) of an FPT adapter on the Hub, via the HF cache; None if not FPT."""
    from huggingface_hub import file_exists, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    accepted = inspect.signature(hf_hub_download).parameters
    kwargs = {k: v for k, v in download_kwargs.items() if k in accepted and k not in ("filename", "subfolder")}
    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, subfolder=subfolder, **kwargs)
    except Exception:
        return None  # not a Hub adapter (or unreachable): peft reports it
    if not _is_fpt(_read_json(config_path)):
        return None
    where = f"Hub repo {repo_id!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        return config_path, hf_hub_download(repo_id, SAFETENSORS_NAME, subfolder=subfolder, **kwargs)
    except LocalEntryNotFoundError:  # offline (or the Hub unreachable) and not in the cache
        remote = False
    except EntryNotFoundError:  # the Hub says the repo has no safetensors file
        remote = True
    try:
        if remote:
            pickle_name = f"{subfolder}/{PICKLE_NAME}" if subfolder else PICKLE_NAME
            revision, token = kwargs.get("revision"), kwargs.get("token")
            has_pickle = file_exists(repo_id, pickle_name, revision=revision, token=token)
        else:
            hf_hub_download(repo_id, PICKLE_NAME, subfolder=subfolder, **{**kwargs, "local_files_only": True})
            has_pickle = True
    except Exception:
        has_pickle = False
    if has_pickle and not pickle_allowed():
        raise _pickle_refusal(where)
    if has_pickle or not remote:
        return None  # peft loads the allowed pickle, or reports what is not cached
    return config_path, None


# ---------------------------------------------------------------------------------------------- locks
def _guarded() -> set[str]:
    """Adapters (folder paths, Hub keys) whose load is in progress in this thread, verified and locked."""
    guarded: set[str] = _local.__dict__.setdefault("guarded", set())
    return guarded


def _lock_table() -> dict[str, list[Any]]:
    if not hasattr(_local, "locks"):
        _local.locks = {}
    table: dict[str, list[Any]] = _local.locks
    return table


def _open_lock(path: str, create: bool) -> int | None:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o666)
    except OSError:
        pass
    try:  # a read-only folder or lock file: a shared lock on a read-only descriptor still works
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


@contextlib.contextmanager
def folder_lock(folder: str, *, exclusive: bool) -> Iterator[bool]:
    """Hold a shared or exclusive ``flock`` on ``folder/.fpt_peft.lock``; yields whether a lock is held.

    Re-entrant within a thread (a nested request reuses the outer lock, upgrading shared to exclusive if asked).
    A folder where the lock file cannot be created (read-only, no such folder) yields False: nothing is locked.
    """
    if fcntl is None:
        yield False
        return
    path = os.path.join(os.path.realpath(folder), LOCK_NAME)  # one entry per folder, whatever the spelling
    table = _lock_table()
    held = table.get(path)
    if held is not None:
        upgrade = exclusive and not held[1]
        if upgrade:
            fcntl.flock(held[0], fcntl.LOCK_EX)
            held[1] = True
        held[2] += 1
        try:
            yield True
        finally:
            held[2] -= 1
            if upgrade:
                fcntl.flock(held[0], fcntl.LOCK_SH)
                held[1] = False
        return
    fd = _open_lock(path, create=os.path.isdir(folder))
    if fd is None:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        table[path] = [fd, exclusive, 1]
        yield True
    finally:
        table.pop(path, None)
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def reading(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Shared lock on an adapter folder for a load; first completes a save that was interrupted there."""
    folder = os.fspath(folder)
    with folder_lock(folder, exclusive=False) as locked:
        if os.path.exists(os.path.join(folder, JOURNAL_NAME)):
            if not locked:
                raise AdapterIntegrityError(
                    f"A save into {folder!r} was interrupted and cannot be completed from here (the folder is not "
                    "writable). Open it once with write access, or save the adapter again."
                )
            with folder_lock(folder, exclusive=True):
                try:
                    roll_forward(folder)
                except OSError as exc:
                    raise AdapterIntegrityError(
                        f"A save into {folder!r} was interrupted, and completing it failed ({exc}). Open it once "
                        "with write access, or save the adapter again."
                    ) from exc
        yield


# ---------------------------------------------------------------------------------------------- journal
def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_journal(folder: str, staging: str, moves: list[tuple[str, str]]) -> None:
    """Record the moves (relative to ``folder``) that complete a save, atomically and durably."""
    tmp = os.path.join(folder, JOURNAL_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"version": 1, "staging": staging, "moves": moves}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(folder, JOURNAL_NAME))
    _fsync_dir(folder)


def _journal_moves(folder: str, journal: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """Validated (staging dir, [(source, destination)]) of a journal: sources inside a staging folder next to or
    inside ``folder``, destinations plain file names in ``folder``. A journal is read from a folder that may come
    from elsewhere, so nothing outside those places may be touched."""
    root = os.path.realpath(folder)
    allowed = (root, os.path.dirname(root))
    staging = os.path.realpath(os.path.join(folder, str(journal.get("staging", ""))))
    valid = os.path.dirname(staging) in allowed and os.path.basename(staging).startswith(STAGING_PREFIX)
    moves: list[tuple[str, str]] = []
    items = journal.get("moves") if valid else None
    for item in items if isinstance(items, list) else []:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)):
            valid = False
            break
        source, name = item
        source_path = os.path.realpath(os.path.join(folder, source))
        inside = os.path.commonpath([staging, source_path]) == staging
        plain_name = name not in ("", ".", "..") and os.sep not in name and not is_internal_file(name)
        if not (inside and plain_name and os.path.basename(source_path) == name):
            valid = False
            break
        moves.append((source_path, os.path.join(folder, name)))
    valid = valid and isinstance(items, list)
    if not valid:
        raise AdapterIntegrityError(
            f"{os.path.join(folder, JOURNAL_NAME)!r} is not a journal fpt-peft wrote; refusing to act on it. Remove "
            "it if you know the folder's files are complete."
        )
    return staging, moves


def roll_forward(folder: str) -> bool:
    """Complete the save recorded in ``folder``'s journal (idempotent); the caller holds the exclusive lock.

    Returns whether there was one.
    """
    path = os.path.join(folder, JOURNAL_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            journal = json.load(handle)
    except FileNotFoundError:
        return False
    except ValueError:  # cannot happen for a journal written by _write_journal (atomic rename of a complete file)
        journal = {}
    staging, moves = _journal_moves(folder, journal if isinstance(journal, dict) else {})
    for source, destination in moves:
        if os.path.lexists(source):
            os.replace(source, destination)
    _fsync_dir(folder)
    os.unlink(path)
    _fsync_dir(folder)
    for directory in sorted({os.path.dirname(s) for s, _ in moves} | {staging}, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only once every folder of that save has moved its files out
    return True


def _staging_name() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{STAGING_PREFIX}{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_stagings(root: str) -> None:
    """Remove staging folders left by processes of this host that died before their journal was written."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    referenced = set()
    for folder in [root] + [os.path.join(root, d) for d in os.listdir(root)]:
        journal = _read_json(os.path.join(folder, JOURNAL_NAME)) if os.path.isdir(folder) else None
        if journal is not None:
            referenced.add(os.path.realpath(os.path.join(folder, str(journal.get("staging", "")))))
    for entry in os.listdir(root):
        match = re.fullmatch(re.escape(STAGING_PREFIX) + r"([A-Za-z0-9]+)-(\d+)-[0-9a-f]+", entry)
        path = os.path.join(root, entry)
        stale = match is not None and match.group(1) == host and not _pid_alive(int(match.group(2)))
        if stale and os.path.realpath(path) not in referenced:
            shutil.rmtree(path, ignore_errors=True)


def is_internal_file(name: str) -> bool:
    """Whether a file or folder name is fpt-peft's bookkeeping (lock, journal, staging), not part of an adapter."""
    return name.startswith((LOCK_NAME, JOURNAL_NAME, STAGING_PREFIX, ".fpt_peft.probe-"))


# ---------------------------------------------------------------------------------------------- saving
def _install(target: str, staging: str, committed: Callable[[], None]) -> None:
    """Move every file of ``staging`` into ``target`` (same relative paths), atomically per adapter folder.

    ``committed`` is called once the journals are written, i.e. when the save can no longer be undone.
    """
    groups: dict[str, list[str]] = {"": []}
    for dirpath, _dirnames, filenames in os.walk(staging):
        relative = os.path.relpath(dirpath, staging)
        relative = "" if relative == "." else relative
        for name in filenames:
            _fsync_file(os.path.join(dirpath, name))
            groups.setdefault(relative, []).append(name)
    # Weights first and config last, so that even a reader that does not lock sees a digest mismatch, not a mix.
    order = {SAFETENSORS_NAME: 0, PICKLE_NAME: 0, CONFIG_NAME: 2}
    with contextlib.ExitStack() as stack:
        for relative in sorted(groups):  # the root first: every writer locks in the same order
            folder = os.path.join(target, relative)
            os.makedirs(folder, exist_ok=True)
            stack.enter_context(folder_lock(folder, exclusive=True))
        for relative in sorted(groups):
            roll_forward(os.path.join(target, relative))  # finish an earlier interrupted save first
        _remove_stale_stagings(target)
        written: list[str] = []
        try:
            for relative in sorted(groups):
                folder = os.path.join(target, relative)
                names = sorted(groups[relative], key=lambda n: (order.get(n, 1), n))
                moves = [(os.path.relpath(os.path.join(staging, relative, n), folder), n) for n in names]
                _write_journal(folder, os.path.relpath(staging, folder), moves)
                written.append(folder)
        except BaseException:
            for folder in written:  # not committed yet: nothing has changed, and nothing will
                for name in (JOURNAL_NAME, JOURNAL_NAME + ".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))
            raise
        committed()  # every journal is written: from here on, the next opener completes this save
        for relative in sorted(groups):
            roll_forward(os.path.join(target, relative))


def _adapter_folder(root: str, adapter_name: str) -> str:
    return root if adapter_name == "default" else os.path.join(root, adapter_name)


def estimate_save_bytes(model: Any, adapter_names: list[str] | None = None) -> int:
    """About how many bytes ``model.save_pretrained`` needs for ``adapter_names`` (default: all its adapters).

    The adapter weights plus :data:`SAVE_MARGIN_BYTES`; for :func:`check_writable` before training.
    """
    from .registration import PREFIX

    names = list(adapter_names or getattr(model, "peft_config", {}))
    total = SAVE_MARGIN_BYTES
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        owned = any(f".{a}." in name or name.endswith(f".{a}") for a in names)
        if owned and (PREFIX in name or "modules_to_save" in name):
            total += tensor.numel() * tensor.element_size()
    return total


def _record_digests(staging: str, adapter_names: list[str]) -> None:
    """Write the SHA-256 of each staged weights file into the staged adapter_config.json next to it."""
    for adapter_name in adapter_names:
        folder = _adapter_folder(staging, adapter_name)
        config_path = os.path.join(folder, CONFIG_NAME)
        present = [n for n in (SAFETENSORS_NAME, PICKLE_NAME) if os.path.isfile(os.path.join(folder, n))]
        weights = os.path.join(folder, present[0]) if present else None
        config = _read_json(config_path)
        if weights is None or config is None:
            continue
        config["weights_sha256"] = file_sha256(weights)
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(config, indent=2, sort_keys=True))


def save_adapter(original: Callable[..., Any], model: Any, save_directory: str, **kwargs: Any) -> None:
    """Run peft's ``save_pretrained`` (``original``) for an FPT model so that the result appears atomically."""
    from peft.utils.save_and_load import WEIGHTS_NAME

    target = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(target):
        raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
    if not kwargs.get("safe_serialization", True) and not pickle_allowed():
        raise PickledAdapterError(
            f"safe_serialization=False would save the adapter as a pickle ({WEIGHTS_NAME}), which fpt-peft refuses "
            f"to load by default. Save safetensors (the default), or opt in with allow_pickled_adapters() or "
            f"{PICKLE_ENV}=1."
        )
    names = list(kwargs.get("selected_adapters") or model.peft_config)
    check_writable(target, estimate_save_bytes(model, names))
    os.makedirs(target, exist_ok=True)
    staging = os.path.join(target, _staging_name())
    os.mkdir(staging)
    state = {"committed": False}
    try:
        for name in [*names, ""]:  # keep model cards written there before (peft and fpt-peft update them)
            readme = os.path.join(_adapter_folder(target, name) if name else target, "README.md")
            if os.path.isfile(readme):
                copy_to = os.path.join(_adapter_folder(staging, name) if name else staging, "README.md")
                os.makedirs(os.path.dirname(copy_to), exist_ok=True)
                shutil.copyfile(readme, copy_to)
        original(model, staging, **kwargs)
        _record_digests(staging, names)
        _install(target, staging, committed=lambda: state.update(committed=True))
    except OSError as exc:
        outcome = (
            "the new files are staged and will be moved in by the next save or load of that folder"
            if state["committed"]
            else "the adapter saved there before (if any) is unchanged"
        )
        raise OSError(
            exc.errno, f"Saving the FPT adapter to {target!r} failed ({exc.strerror or exc}); {outcome}", target
        ) from exc
    finally:
        if not state["committed"]:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(staging)  # empty once every folder has moved its files in


# ---------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def guarded_load(
    model_id: str | os.PathLike[str] | None,
    *,
    subfolder: str | None = None,
    hidden_size: int | None = None,
    download_kwargs: dict[str, Any] | None = None,
) -> Iterator[None]:
    """Around loading an adapter from ``model_id``: if it is an FPT adapter, verify its files (no pickle unless
    allowed, digest, sizes) and, for a local folder, hold a shared lock until the load is done."""
    if model_id is None:
        yield
        return
    model_id = os.fspath(model_id)
    local = os.path.join(model_id, subfolder) if subfolder else model_id
    key = os.path.abspath(local) if os.path.isdir(local) else f"hub:{model_id}:{subfolder}"
    guarded = _guarded()
    if key in guarded:  # an outer call already verified and locked it
        yield
        return
    if os.path.isdir(local):
        if not _is_fpt(_read_json(os.path.join(local, CONFIG_NAME))):
            yield
            return
        with reading(local):
            verify_adapter_folder(local, hidden_size=hidden_size)
            guarded.add(key)
            try:
                yield
            finally:
                guarded.discard(key)
        return
    files = None if os.path.isabs(model_id) else _hub_files(model_id, subfolder, download_kwargs or {})
    if files is not None:
        config_path, weights_path = files
        verify_adapter_files(config_path, weights_path, where=f"Hub repo {model_id!r}", hidden_size=hidden_size)
    guarded.add(key)
    try:
        yield
    finally:
        guarded.discard(key)


# ---------------------------------------------------------------------------------------------- installation
_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _hidden_size(model: Any) -> int | None:
    from .model import hidden_size_of

    try:
        return hidden_size_of(model)
    except Exception:
        return None


def install() -> None:
    """Route peft's and transformers' adapter save / load entry points through this module (idempotent)."""
    from peft import PeftModel
    from transformers.integrations.peft import PeftAdapterMixin

    from .hub import has_fpt_adapter

    if getattr(PeftModel.__dict__["save_pretrained"], "_fpt_peft", False):
        return
    original_save = PeftModel.__dict__["save_pretrained"]
    original_from = PeftModel.__dict__["from_pretrained"].__func__
    original_load = PeftModel.__dict__["load_adapter"]
    original_hf_load = PeftAdapterMixin.__dict__["load_adapter"]
    _ORIGINALS.update(save=original_save, from_pretrained=original_from, load=original_load, hf_load=original_hf_load)

    @functools.wraps(original_save)
    def save_pretrained(self: PeftModel, save_directory: str, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(original_save).bind(self, save_directory, *args, **kwargs)
        options = {k: v for k, v in bound.arguments.items() if k not in ("self", "save_directory", "kwargs")}
        options.update(bound.arguments.get("kwargs", {}))
        plain = (
            not has_fpt_adapter(self)
            or not options.get("is_main_process", True)
            or options.get("path_initial_model_for_weight_conversion") is not None
        )
        if plain:
            return original_save(self, save_directory, *args, **kwargs)  # type: ignore[no-any-return]
        return save_adapter(original_save, self, save_directory, **options)

    def from_pretrained(cls: type[PeftModel], model: Any, model_id: Any, *args: Any, **kwargs: Any) -> Any:
        download = PeftModel._split_kwargs(dict(kwargs))[0]
        with guarded_load(
            model_id,
            subfolder=kwargs.get("subfolder"),
            hidden_size=_hidden_size(model),
            download_kwargs=download,
        ):
            return original_from(cls, model, model_id, *args, **kwargs)

    from_pretrained = functools.wraps(original_from)(from_pretrained)

    @functools.wraps(original_load)
    def load_adapter(self: PeftModel, model_id: Any, *args: Any, **kwargs: Any) -> Any:
        if not has_fpt_adapter(self):
            return original_load(self, model_id, *args, **kwargs)
        download = PeftModel._split_kwargs(dict(kwargs))[0]
        with guarded_load(
            model_id,
            subfolder=kwargs.get("subfolder"),
            hidden_size=_hidden_size(self.get_base_model()),
            download_kwargs=download,
        ):
            return original_load(self, model_id, *args, **kwargs)

    hf_signature = inspect.signature(original_hf_load)

    @functools.wraps(original_hf_load)
    def hf_load_adapter(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            given = hf_signature.bind(self, *args, **kwargs).arguments
        except TypeError:
            return original_hf_load(self, *args, **kwargs)  # let transformers report the bad call
        model_id = given.get("peft_model_id")
        if model_id is None or given.get("adapter_state_dict") is not None:
            return original_hf_load(self, *args, **kwargs)
        download = {
            "local_files_only": given.get("local_files_only", False),
            **given.get("kwargs", {}),
            **(given.get("adapter_kwargs") or {}),
        }
        with guarded_load(
            model_id, subfolder=download.get("subfolder"), hidden_size=_hidden_size(self), download_kwargs=download
        ):
            return original_hf_load(self, *args, **kwargs)

    for wrapper in (save_pretrained, from_pretrained, load_adapter, hf_load_adapter):
        setattr(wrapper, "_fpt_peft", True)  # noqa: B010  (marks our wrappers, for idempotence)
    PeftModel.save_pretrained = save_pretrained  # type: ignore[method-assign]
    PeftModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign,assignment]
    PeftModel.load_adapter = load_adapter  # type: ignore[method-assign]
    PeftAdapterMixin.load_adapter = hf_load_adapter  # type: ignore[method-assign]
