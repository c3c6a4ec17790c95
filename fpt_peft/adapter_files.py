"""An adapter folder's files, written and read safely: digests, checked reads, atomic writes, the loading note.

Functions over files and tensors, and two mixins that put them where peft writes and reads an adapter (no import of
the tuner): :class:`CheckedConfigFiles` for the config (``save_pretrained`` records the digest of the weights file
beside it, ``from_pretrained`` checks the folder), :class:`CheckedAdapterLoads` for the tuner (the first weights
loaded into an adapter whose config was read from a folder must have that folder's digest, and exactly the adapter's
keys). The digest lives in the folder's ``adapter_config.json``, never in a config field.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open

from .durable import write_text_atomically

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


def write_config(folder: str, config: dict[str, object]) -> None:
    """Write ``adapter_config.json`` into ``folder`` atomically, with the digest of the weights file found there
    (peft writes the weights first), and add the loading note to the folder's model card."""
    weights = weights_file(folder)
    recorded = {} if weights is None else {DIGEST_KEY: digest(read_weights(weights))}  # a config alone: plain peft
    write_text_atomically(
        os.path.join(folder, CONFIG_NAME), json.dumps({**config, **recorded}, indent=2, sort_keys=True)
    )
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
    write_text_atomically(path, text.rstrip("\n") + "\n\n" + LOADING_NOTE)


def check_digest(tensors: Mapping[str, torch.Tensor], recorded: str, where: str = "") -> None:
    """Raise :class:`AdapterIntegrityError` unless ``tensors`` (weights read, from the file ``where`` names) have the
    digest ``recorded`` (from the ``adapter_config.json`` read with them)."""
    if digest(tensors) != recorded:
        raise AdapterIntegrityError(
            f"The adapter weights{where} do not belong to its adapter_config.json: the config records weights with "
            f"digest {recorded[:16]}..., the weights read have another. They come from different saves (a partial "
            "copy, an edited folder, or a save interrupted half-way); save the adapter again."
        )


# Where a config read from a folder keeps that folder's weights digest until a tuner takes it on injection; not a
# field, so never saved, compared or shown.
_READ_DIGEST = "_fpt_read_digest"


class CheckedConfigFiles:
    """Mixin for a ``PeftConfig`` whose folders are checked: :meth:`save_pretrained` writes ``adapter_config.json``
    atomically with the digest of the weights file peft wrote just before it; :meth:`from_pretrained` checks the
    folder's weights file against the config before peft builds anything and keeps the digest for the first load."""

    def keep_read_digest(self, recorded: str | None) -> None:
        """Hold ``recorded`` (the digest a config file declares) for the tuner's first load of this config."""
        if recorded is not None:
            self.__dict__[_READ_DIGEST] = recorded

    def pop_read_digest(self) -> str | None:
        """The digest held by :meth:`keep_read_digest`, taken off the config (None: not read from a folder)."""
        return self.__dict__.pop(_READ_DIGEST, None)  # type: ignore[no-any-return]

    def declared_weights(self) -> int:
        """How many weights the config's own new layers need at least (a file smaller than that is refused)."""
        return 0

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any) -> Any:
        """Load a config from a folder or Hub repo, after checking the folder's weights file against it.

        A malformed ``adapter_config.json``, or a weights file beside it that is truncated, corrupt, from another save
        or too small for the layers the config declares, raises an error naming the file before peft builds
        anything. A folder holding only the config loads.
        """
        try:
            config = super().from_pretrained(  # type: ignore[misc]
                pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"adapter_config.json at {pretrained_model_name_or_path!r} is not valid JSON ({exc})."
            ) from exc
        hub_kwargs = cls._split_kwargs(kwargs)[0]  # type: ignore[attr-defined]
        folder = resolve_folder(os.fspath(pretrained_model_name_or_path), subfolder, **hub_kwargs)
        if folder is not None and isinstance(config, CheckedConfigFiles):
            check_folder(folder, config.__dict__.get(_READ_DIGEST), config.declared_weights())
        return config

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` atomically, with the digest of the weights file beside it, and the model
        card's loading note."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        output = {k: sorted(v) if isinstance(v, set) else v for k, v in self.to_dict().items()}  # type: ignore[attr-defined]
        if kwargs.get("auto_mapping_dict") is not None:
            output["auto_mapping"] = kwargs["auto_mapping_dict"]
        write_config(save_directory, output)


LoadCheck = Callable[[Mapping[str, torch.Tensor]], None]
"""A check of the weights an adapter loads (raises when they must not be loaded)."""


class CheckedAdapterLoads:
    """Mixin for a peft ``BaseTuner``: checks held for the next weights loaded into an adapter run on those weights,
    and lapse once the adapter is saved. The first is the digest of an adapter whose config was read from a folder (a
    save racing the read would otherwise pair one save's config with another's weights). Every load must hold exactly
    the adapter's keys."""

    prefix: str
    _pending_load_checks: Mapping[str, tuple[LoadCheck, ...]] = {}  # adapter -> its checks; replaced, never changed

    def check_next_load(self, adapter_name: str, check: LoadCheck) -> None:
        """Run ``check`` on the weights next loaded into ``adapter_name`` (unless it is saved first)."""
        pending = dict(self._pending_load_checks)
        pending[adapter_name] = (*pending.get(adapter_name, ()), check)
        self._pending_load_checks = pending

    def hold_read_digest(self, adapter_name: str, config: Any) -> None:
        """Check the digest ``config`` was read with (if any) on the next load into ``adapter_name``."""
        recorded = config.pop_read_digest() if isinstance(config, CheckedConfigFiles) else None
        if recorded:
            self.check_next_load(adapter_name, functools.partial(check_digest, recorded=recorded))

    @classmethod
    def _take_load_checks(cls, model: torch.nn.Module, adapter_name: str) -> tuple[LoadCheck, ...]:
        tuner = getattr(model, "base_model", None)
        if not isinstance(tuner, CheckedAdapterLoads) or adapter_name not in tuner._pending_load_checks:
            return ()
        pending = dict(tuner._pending_load_checks)
        checks = pending.pop(adapter_name)
        tuner._pending_load_checks = pending
        return checks

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: torch.nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The checks held for ``adapter_name``, then peft's remapping, then the keys."""
        for check in cls._take_load_checks(model, adapter_name):
            check(state_dict)
        remapped: dict[str, torch.Tensor] = super()._remap_adapter_state_dict_for_load(  # type: ignore[misc]
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        check_adapter_keys(model, adapter_name, remapped, cls.prefix)
        return remapped

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: torch.nn.Module,
        config: Any,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """peft's selection of the adapter's weights for saving; a saved adapter owes no check to its config's
        folder or base any more."""
        cls._take_load_checks(model, adapter_name)
        return super()._get_adapter_state_dict(  # type: ignore[misc,no-any-return]
            model=model,
            config=config,
            adapter_name=adapter_name,
            state_dict=state_dict,
            unwanted_adapter_names=unwanted_adapter_names,
        )


def check_adapter_keys(model: torch.nn.Module, adapter_name: str, state_dict: dict[str, Any], prefix: str) -> None:
    """Raise a ValueError unless ``state_dict`` (peft's, remapped for loading) holds exactly the weights (attributes
    starting with ``prefix``) and saved modules of ``adapter_name`` in ``model``: a file with a key missing or extra
    belongs to something else."""
    expected = set()
    for name in model.state_dict():
        parts = name.removeprefix("base_model.model.").split(".")
        for i, part in enumerate(parts[:-1]):
            if (part.startswith(prefix) or part == "modules_to_save") and parts[i + 1] == adapter_name:
                expected.add(".".join(parts))
                break
    given = {k.removeprefix("base_model.model.") for k in state_dict}
    if given != expected:
        raise ValueError(
            f"The FPT adapter weights do not match its config for this model: missing {_listed(expected - given)}, "
            f"unexpected {_listed(given - expected)}. The adapter file is incomplete or belongs to another adapter "
            "or model."
        )


def _listed(names: set[str], count: int = 5) -> str:
    ordered = sorted(names)
    return str(ordered[:count]) + (" ..." if len(ordered) > count else "")
