"""Helpers shared by the task modules: argument checks, dataset builders and source loading."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

# Split names accepted for the evaluation split, with the names datasets on the hub and on disk use.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "test": ("test",),
    "validation": ("validation", "valid", "val", "dev"),
}
_DATA_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}
LENGTH_POLICIES = ("error", "truncate", "drop")
"""What a loader does with sequences longer than ``max_tokens``: raise, cut them, or leave those examples out."""


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ValueError naming ``name``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def stratified_split(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the examples left and of ``count`` examples held out, every class in proportion for
    one label per example (evenly spaced picks from a seeded permutation sorted by label), at random otherwise."""
    size = len(labels)
    order = np.random.default_rng(seed).permutation(size)
    if labels.ndim == 1:
        order = order[np.argsort(labels[order], kind="stable")]
    picked = np.zeros(size, dtype=bool)
    picked[np.round(np.linspace(0, size - 1, count)).astype(int)] = True
    return np.sort(order[~picked]), np.sort(order[picked])


def continuous_dataset(inputs: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """In-memory dataset with ``inputs_embeds`` (float32, (N, tokens, dim)) and int64 ``labels``."""
    _, tokens, dim = inputs.shape
    label_feature: datasets.Value | datasets.Sequence = datasets.Value("int64")
    if labels.ndim == 2:
        label_feature = datasets.Sequence(datasets.Value("int64"), length=labels.shape[1])
    features = datasets.Features(
        {"inputs_embeds": datasets.Array2D(shape=(tokens, dim), dtype="float32"), "labels": label_feature}
    )
    data = {"inputs_embeds": inputs.astype(np.float32), "labels": labels.astype(np.int64)}
    return datasets.Dataset.from_dict(data, features=features).with_format("torch")


def symbolic_dataset(
    ids: Sequence[Sequence[int]], labels: Sequence[int], length: int, attention_mask: bool = True
) -> datasets.Dataset:
    """In-memory dataset of right-padded ``input_ids`` (pad id 0), ``attention_mask`` and ``labels``.

    With ``attention_mask=False`` the mask column is left out: the model then attends to the padding too and the
    output layer reads the last position (the official FPT code's fixed-length, unmasked ListOps input).
    Ids and mask are stored as int16 to save memory; the torch format returns them as int64.
    """
    padded = np.zeros((len(ids), length), dtype=np.int16)
    mask = np.zeros((len(ids), length), dtype=np.int16)
    for row, seq in enumerate(ids):
        padded[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    columns: dict[str, datasets.Sequence | datasets.Value] = {
        "input_ids": datasets.Sequence(datasets.Value("int16"), length=length)
    }
    data: dict[str, np.ndarray] = {"input_ids": padded}
    if attention_mask:
        columns["attention_mask"] = datasets.Sequence(datasets.Value("int16"), length=length)
        data["attention_mask"] = mask
    columns["labels"] = datasets.Value("int64")
    data["labels"] = np.asarray(labels, dtype=np.int64)
    return datasets.Dataset.from_dict(data, features=datasets.Features(columns)).with_format("torch")


def fit_lengths(
    train: list[list[int]], eval_: list[list[int]], max_tokens: int, truncation: bool
) -> tuple[list[list[int]], list[list[int]], int]:
    """Check (or cut) sequences against ``max_tokens``; return both splits and their common padded length."""
    longest = max(len(s) for s in train + eval_)
    if longest > max_tokens:
        if not truncation:
            raise ValueError(
                f"The longest sequence has {longest} tokens, more than max_tokens={max_tokens}. "
                "Pass truncation=True (length_policy='truncate') to cut sequences to max_tokens, "
                "length_policy='drop' to leave those examples out, or raise max_tokens."
            )
        train = [s[:max_tokens] for s in train]
        eval_ = [s[:max_tokens] for s in eval_]
        longest = max_tokens
    return train, eval_, longest


def resolve_length_policy(length_policy: str | None, truncation: bool, default: str = "error") -> str:
    """The length policy a loader applies: ``length_policy`` if given, else ``"truncate"`` when ``truncation`` is
    set, else ``default``. Raises a ValueError for an unknown policy or one that contradicts ``truncation=True``."""
    if length_policy is None:
        return "truncate" if truncation else default
    if length_policy not in LENGTH_POLICIES:
        raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {length_policy!r}.")
    if truncation and length_policy != "truncate":
        raise ValueError(f"truncation=True contradicts length_policy={length_policy!r}; pass one of them.")
    return length_policy


def drop_longer(
    ids: list[list[int]], labels: list[int], max_tokens: int, split: str, task: str
) -> tuple[list[list[int]], list[int]]:
    """Leave out the examples of ``split`` whose sequence is longer than ``max_tokens`` (length policy ``"drop"``).

    Warns with the count when any is left out; raises a ValueError naming ``max_tokens`` when none is left.
    """
    keep = [i for i, seq in enumerate(ids) if len(seq) <= max_tokens]
    dropped = len(ids) - len(keep)
    if not keep:
        raise ValueError(
            f"Every one of the {len(ids)} {split} examples of {task!r} is longer than max_tokens={max_tokens} "
            f"(the shortest has {min(len(s) for s in ids)} tokens); raise max_tokens or use another length policy."
        )
    if dropped:
        warnings.warn(
            f"{task}: left out {dropped} of {len(ids)} {split} examples longer than max_tokens={max_tokens} "
            "(length_policy='drop').",
            stacklevel=3,
        )
    return [ids[i] for i in keep], [labels[i] for i in keep]


def eval_split_name(eval_split: str) -> str:
    """``"test"`` or ``"validation"`` for an evaluation split's name or alias (``"valid"``, ``"val"``, ``"dev"``);
    a ValueError for anything else."""
    for split in ("test", "validation"):
        if eval_split in SPLIT_ALIASES[split]:
            return split
    aliases = ", ".join(repr(a) for a in SPLIT_ALIASES["validation"][1:])
    raise ValueError(f"eval_split must be 'test' or 'validation' (or {aliases}), got {eval_split!r}.")


def cap(dataset: datasets.Dataset, limit: int | None, name: str) -> datasets.Dataset:
    """The first ``limit`` examples of ``dataset`` (all of them when ``limit`` is None)."""
    if limit is None:
        return dataset
    check_int(name, limit)
    return dataset.select(range(min(limit, len(dataset))))


def check_columns(dataset: datasets.Dataset, required: Sequence[str], source: str) -> None:
    """Raise a ValueError naming the missing columns and the columns found."""
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source!r} is missing column(s) {missing}; expected {list(required)}, found {dataset.column_names}."
        )


def _split_of(path: Path, root: Path) -> str | None:
    """Split a data file belongs to, from its file name or else its folder names (hub layouts)."""
    for part in [path.stem, *reversed(path.relative_to(root).parent.parts)]:
        lowered = part.lower()
        for split, aliases in SPLIT_ALIASES.items():
            if any(lowered.startswith(alias) for alias in aliases):
                return split
    return None


def _find_split_files(root: Path, formats: Sequence[str]) -> tuple[str, dict[str, list[str]]] | None:
    """The first format in ``formats`` with data files under ``root``, and those files by split."""
    for fmt in formats:
        files = sorted(p for p in root.rglob("*") if p.is_file() and _DATA_SUFFIXES.get(p.suffix) == fmt)
        if not files:
            continue
        by_split: dict[str, list[str]] = {}
        for path in files:
            split = _split_of(path, root)
            if split is not None:
                by_split.setdefault(split, []).append(str(path))
        if not by_split:
            raise ValueError(
                f"Found {fmt} files under {str(root)!r} but none named for a split "
                f"(train*, test*, valid*/validation*): {[str(p) for p in files[:10]]}."
            )
        return fmt, by_split
    return None


def _looks_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~", "\\"))
        or source.count("/") > 1
        or Path(source).suffix in _DATA_SUFFIXES
        or os.path.splitdrive(source)[0] != ""
    )


def _pick(splits: dict[str, datasets.Dataset], split: str, source: str) -> datasets.Dataset:
    for alias in SPLIT_ALIASES.get(split, (split,)):
        if alias in splits:
            return splits[alias]
    raise ValueError(f"{source!r} has no {split!r} split; found splits {sorted(splits)}.")


def load_splits(
    source: str, eval_split: str, formats: Sequence[str], image_folder: bool = False
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Load the train and ``eval_split`` splits of ``source``.

    ``source`` is a hub dataset id (loaded with ``datasets.load_dataset(source)``) or a local directory:
    data files (``formats``, e.g. parquet or csv) are found recursively and assigned to splits by name
    (``train*``, ``test*``, ``valid*``/``validation*``); only the train and ``eval_split`` files need to be there
    (``eval_split`` is ``"test"``, ``"validation"`` or an alias of it: ``"valid"``, ``"val"``, ``"dev"``). With
    ``image_folder=True`` a directory without such files is loaded as an ``imagefolder`` tree
    (``train/<class>/*.png``, ``test/<class>/*.png``).
    """
    eval_split = eval_split_name(eval_split)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"source={source!r} is a single file; pass the directory holding the split files "
                "(train*, test*, valid*/validation*)."
            )
        found = _find_split_files(path, formats)
        if found is not None:
            fmt, files = found
            for split in ("train", eval_split):
                if split not in files:
                    hint = (
                        " Choose the evaluation split with eval_split (--eval-split)." if split == eval_split else ""
                    )
                    raise ValueError(
                        f"No {split!r} split files under {source!r}; found {fmt} files for {sorted(files)}.{hint}"
                    )
            wanted = {split: files[split] for split in ("train", eval_split)}
            loaded = datasets.load_dataset(fmt, data_files=wanted)
        elif image_folder:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            raise ValueError(f"No {' or '.join(formats)} files found under {source!r}.")
    elif _looks_local(source):
        raise FileNotFoundError(f"source={source!r} looks like a local path but does not exist.")
    else:
        loaded = datasets.load_dataset(source)
    if not isinstance(loaded, datasets.DatasetDict):
        raise TypeError(f"Expected a DatasetDict from {source!r}, got {type(loaded).__name__}.")
    splits = dict(loaded)
    return _pick(splits, "train", source), _pick(splits, eval_split, source)
