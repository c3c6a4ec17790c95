"""Task data for FPT: the paper's seven tasks, an offline image task, UCR/UEA time series and the user's own data.

Every loader returns a :class:`TaskData` (a :class:`TaskSpec` plus train and eval
``datasets.Dataset`` splits in torch format, ready for a ``DataLoader`` with the default collate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bits import BitStream, bit_memory, bit_xor
from .homology import homology
from .images import cifar10, cifar10_lra, digits, mnist, patchify, unpatchify
from .listops import evaluate_listops, generate_listops, listops
from .own_data import own_data
from .spec import TaskData, TaskSpec
from .time_series import normalize_instance, patch_series, series_tokens, time_series

TASKS: dict[str, Callable[..., TaskData]] = {
    "bit_memory": bit_memory,
    "bit_xor": bit_xor,
    "listops": listops,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar10_lra": cifar10_lra,
    "homology": homology,
    "digits": digits,
    "time_series": time_series,
    "own_data": own_data,
}


def load_task(name: str, **kwargs: Any) -> TaskData:
    """Build the task registered as ``name`` in :data:`TASKS`, passing ``kwargs`` to its loader."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {sorted(TASKS)}.")
    return TASKS[name](**kwargs)


__all__ = [
    "TASKS",
    "BitStream",
    "TaskData",
    "TaskSpec",
    "bit_memory",
    "bit_xor",
    "cifar10",
    "cifar10_lra",
    "digits",
    "evaluate_listops",
    "generate_listops",
    "homology",
    "listops",
    "load_task",
    "mnist",
    "normalize_instance",
    "own_data",
    "patch_series",
    "patchify",
    "series_tokens",
    "time_series",
    "unpatchify",
]
