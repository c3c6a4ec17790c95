"""Where a result came from: the code (git commit, uncommitted changes), the package versions and the device."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "fpt-peft",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "numpy",
    "scikit-learn",
    "aeon",
)


def git_state(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``folder`` (default: this package's source);
    both None where it is not in a checkout or git is missing (an installed wheel)."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def versions() -> dict[str, str | None]:
    """The installed version of each package of :data:`PACKAGES` (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_name(device: str = "cpu") -> str:
    """The device in words: the GPU's name for ``"cuda"``, else the processor and its core count."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Git state, versions and device, for a result file."""
    return {"git": git_state(), "versions": versions(), "device": device_name(device)}
