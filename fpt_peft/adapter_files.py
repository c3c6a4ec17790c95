"""An adapter folder's files, written and read safely: digests, checked reads, atomic writes, the loading note.

Pure functions over files and tensors (no import of the tuner). ``FPTConfig.save_pretrained`` and
``FPTConfig.from_pretrained``, which peft calls right after writing / right before reading an FPT adapter's weights,
call :func:`write_config` and :func:`read_recorded_digest`: the digest of the weights lives in the folder's
``adapter_config.json`` and is checked when the folder is read, never on a config object in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open

SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
CONFIG_NAME = "adapter_config.json"
DIGEST_KEY = "weights_sha256"  # key of adapter_config.json: digest of the weights file saved beside it
_DIGEST = re.compile(r"[0-9a-f]{64}")
LOADING_NOTE = (
    "## Loading this adapter\n\n"
    "This is a [Frozen Pretrained Transformer](https://arxiv.org/abs/2103.05247) adapter made with "
    '`fpt-peft`. peft resolves its `peft_type` (`"FPT"`) only after **`import fpt_peft`**:\n\n'
    "```python\n"
    "import fpt_peft  # registers the FPT method with peft; without it peft fails with KeyError: 'FPT'\n"
    "from peft import PeftModel\n\n"
    'model = PeftModel.from_pretrained(base_model, "<this repo or folder>")\n'
    "```\n"
)


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


def write_config(folder: str, config: dict[str, object]) -> None:
    """Write ``adapter_config.json`` into ``folder`` atomically, with the digest of the weights file found there
    (peft writes the weights first), and add the loading note to the folder's model card."""
    weights = weights_file(folder)
    recorded = {} if weights is None else {DIGEST_KEY: digest(read_weights(weights))}  # a config alone: plain peft
    write_text(os.path.join(folder, CONFIG_NAME), json.dumps({**config, **recorded}, indent=2, sort_keys=True))
    add_loading_note(folder)


def resolve_folder(source: str, subfolder: str | None = None, **hub_kwargs: Any) -> str | None:
    """The local folder holding the adapter ``source`` (a folder, or a Hub repo id whose config and weights file are
    then fetched into the Hub cache, as peft fetches them next), or None when it cannot be had."""
    local = os.path.join(source, subfolder or "")
    if os.path.isfile(os.path.join(local, CONFIG_NAME)):
        return local
    try:
        config = hf_hub_download(source, CONFIG_NAME, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError):  # not found, offline and not cached, or not a repo id
        return None
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        try:
            hf_hub_download(source, name, subfolder=subfolder, **hub_kwargs)
            break
        except (OSError, ValueError):  # not found, offline and not cached, or not a repo id
            continue
    return os.path.dirname(config)


def check_folder(folder: str, recorded: str | None, declared_weights: int) -> None:
    """Check the weights file in ``folder`` (if any) against its ``adapter_config.json`` before peft builds anything:
    it reads completely, could hold ``declared_weights`` weights, and has the digest ``recorded`` in the config.

    Raises:
        AdapterIntegrityError: naming the file, when any of these fails (a torn, mixed, edited or forged folder).
    """
    weights = weights_file(folder)
    if weights is None:
        return
    tensors = read_weights(weights)
    size = os.path.getsize(weights)
    if declared_weights > size:
        raise AdapterIntegrityError(
            f"The config beside {weights!r} declares new input/output layers of {declared_weights:,} weights, but the "
            f"file has only {size:,} bytes: the config is inconsistent (edited, or from another adapter)."
        )
    if recorded is not None:
        check_digest(tensors, recorded, where=f" {weights!r}")


def add_loading_note(folder: str) -> None:
    """Append the "import fpt_peft" loading note to ``README.md`` in ``folder`` (once, atomically)."""
    path = os.path.join(folder, "README.md")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    if "import fpt_peft" in text:
        return
    if not text:
        text = "---\nlibrary_name: peft\ntags:\n- fpt\n---\n"
    write_text(path, text.rstrip("\n") + "\n\n" + LOADING_NOTE)


def check_digest(tensors: Mapping[str, torch.Tensor], recorded: str, where: str = "") -> None:
    """Raise :class:`AdapterIntegrityError` unless ``tensors`` (weights read, from the file ``where`` names) have the
    digest ``recorded`` (from the ``adapter_config.json`` read with them)."""
    if digest(tensors) != recorded:
        raise AdapterIntegrityError(
            f"The adapter weights{where} do not belong to its adapter_config.json: the config records weights with "
            f"digest {recorded[:16]}..., the weights read have another. They come from different saves (a partial "
            "copy, an edited folder, or a save interrupted half-way); save the adapter again."
        )
