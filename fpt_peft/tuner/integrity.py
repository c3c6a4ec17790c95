"""Adapter file checks: reading weights files with errors that name them, digests, atomic small writes.

Pure functions over files and tensors; the config and the tuner call them from the hooks peft runs for FPT adapters.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping

import torch
from safetensors import safe_open

SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class AdapterIntegrityError(ValueError):
    """An adapter's config and weights do not belong together, or its weights file cannot be read."""


def is_digest(value: object) -> bool:
    """Whether ``value`` looks like a digest written by :func:`digest` (64 lowercase hex digits)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def weights_file(folder: str) -> str | None:
    """The weights file peft loads from ``folder`` (safetensors first, as peft does), or None."""
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of an adapter weights file, read as peft reads them (a pickle with ``weights_only=True``).

    Raises:
        AdapterIntegrityError: the file is truncated, corrupt or not a tensor file; the message names it.
    """
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterIntegrityError(f"{path!r} is corrupted or truncated and cannot be read ({exc}).") from exc
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise AdapterIntegrityError(f"{path!r} does not hold a dict of tensors.")
    return loaded


def check_weights_file(path: str, declared_weights: int) -> None:
    """Raise :class:`AdapterIntegrityError` unless ``path`` reads completely and could hold ``declared_weights``
    weights (every weight takes at least one byte), so a forged config cannot make peft allocate huge layers."""
    read_weights(path)
    size = os.path.getsize(path)
    if declared_weights > size:
        raise AdapterIntegrityError(
            f"The config beside {path!r} declares new input/output layers of {declared_weights:,} weights, but the "
            f"file has only {size:,} bytes: the config is inconsistent (edited, or from another adapter)."
        )


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' dtypes, shapes and bytes, independent of key names, order, file format and device.

    Key names are left out because peft and transformers may rename keys between the file and the model.
    """
    parts = []
    for tensor in tensors.values():
        data = tensor.detach().to("cpu").contiguous()
        one = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
        one.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        parts.append(one.hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()


def write_text(path: str, text: str) -> None:
    """Write ``path`` atomically and durably: readers see the old or the new text, never a part."""
    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
