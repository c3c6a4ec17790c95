"""Time-series classification from the UCR/UEA archives, fed to FPT as patches the way GPT4TS feeds GPT-2.

GPT4TS ("One Fits All", Zhou et al., NeurIPS 2023) trains the same groups as FPT (layer norms, positions, input and
output layers) of a GPT-2 cut to 6 blocks, on series cut into patches. Here each series goes through:

1. per-instance normalisation (``normalize=True``; off by default): per series and channel, subtract the mean and
   divide by ``sqrt(var + 1e-5)`` (population variance), the RevIN-style formula of GPT4TS's forecasting model. Off
   is the default because it measured better: on JapaneseVowels normalising removes the channel levels that carry
   the class (test accuracy 77% with, 98% without; ``benchmarks/time_series.py``), and UCR's univariate series are
   already z-normalised;
2. patching as GPT4TS: replicate the last value ``stride`` times (``nn.ReplicationPad1d((0, stride))``), then windows
   of ``patch_len`` every ``stride`` steps (``unfold``);
3. channel handling: ``"mix"`` puts all channels of a window into one token, flattened as GPT4TS's
   ``'b m n p -> b n (p m)'`` (``input_dim = patch_len * channels``); ``"separate"`` makes one token per channel and
   window, channel after channel (``input_dim = patch_len``), as channel-independent models embed them (attention
   then mixes the channels).

Series of unequal length (JapaneseVowels: 7 to 29 steps) are each normalised and patched on their own length; the
token sequences are right-padded with zeros to the longest and masked (``attention_mask``), and the output layer reads
the last real token. Labels are mapped to ids in sorted order (numerically when every label is a number); the names
travel as :attr:`TaskData.label_names` and are saved beside the adapter.

Data comes through aeon (``pip install 'fpt-peft[timeseries]'``): the datasets bundled in its wheel load offline; any
other archive name loads from ``data_dir`` (``<data_dir>/<Name>/<Name>_TRAIN.ts`` and ``_TEST.ts``, the archives'
layout) or, where the network allows, is downloaded by aeon. The archive's own train/test split is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import datasets
import numpy as np

from ._common import check_int
from .spec import TaskData, TaskSpec

Channels = Literal["mix", "separate"]
NORM_EPS = 1e-5  # GPT4TS: torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
BUNDLED = ("ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "JapaneseVowels", "OSULeaf")
"""UCR/UEA classification datasets that aeon ships in its wheel (readable offline) and that the benchmark uses."""


def load_archive(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[list, np.ndarray]:
    """The ``split`` (``"train"`` or ``"test"``) of archive dataset ``name``: a list of float32 arrays of shape
    ``(channels, length)`` and the labels as strings, read by ``aeon.datasets.load_classification``."""
    try:
        from aeon.datasets import load_classification
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Time-series tasks read the UCR/UEA archives with aeon: pip install 'fpt-peft[timeseries]'."
        ) from exc
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir={os.fspath(data_dir)!r} is not a folder.")
    try:
        X, y = load_classification(name, split=split, extract_path=None if data_dir is None else os.fspath(data_dir))
    except (OSError, ValueError) as exc:  # aeon: unknown name (ValueError), no network (URLError is an OSError)
        where = f"under {os.fspath(data_dir)!r} ({name}/{name}_TRAIN.ts, {name}_TEST.ts)" if data_dir else "in aeon"
        raise ValueError(
            f"dataset={name!r}: not found {where} and not downloadable from here ({type(exc).__name__}: {exc}). "
            f"Offline, aeon bundles {', '.join(BUNDLED)} and a few more; other UCR/UEA datasets need a folder of "
            ".ts files (--data-dir) or network access."
        ) from exc
    return _checked(X, y, f"dataset={name!r}, {split}")


def read_ts_file(path: str | os.PathLike[str]) -> tuple[list, np.ndarray]:
    """One ``.ts`` file of a classification problem (any name, e.g. ``heart_TRAIN.ts``), checked as
    :func:`load_archive` checks an archive split: float32 ``(channels, length)`` arrays and the labels as strings."""
    try:
        from aeon.datasets import load_from_ts_file
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("Reading .ts files needs aeon: pip install 'fpt-peft[timeseries]'.") from exc
    name = os.path.basename(os.fspath(path))
    try:
        X, y = load_from_ts_file(os.fspath(path))
    except (OSError, ValueError, IndexError) as exc:  # aeon: a malformed header or data line
        raise ValueError(f"{name}: not a readable .ts classification file ({type(exc).__name__}: {exc}).") from exc
    if y is None or len(y) != len(X):
        raise ValueError(f"{name}: expected a class label after every series (@classLabel true), found none.")
    return _checked(X, y, name)


def _checked(X: Iterable[Any], y: Any, where: str) -> tuple[list, np.ndarray]:
    series = [np.asarray(x, dtype=np.float32) for x in X]
    for i, x in enumerate(series):
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError(
                f"{where} example {i}: expected a finite (channels, length) series, got shape "
                f"{x.shape}{' with missing values' if x.ndim == 2 else ''}."
            )
    return series, np.asarray(y).astype(str)


def normalize_instance(series: np.ndarray) -> np.ndarray:
    """Per-channel normalisation of one ``(channels, length)`` series: ``(x - mean) / sqrt(var + 1e-5)``."""
    centered = series - series.mean(axis=-1, keepdims=True)
    return (centered / np.sqrt(centered.var(axis=-1, keepdims=True) + NORM_EPS)).astype(np.float32)


def patch_series(series: np.ndarray, patch_len: int, stride: int) -> np.ndarray:
    """Windows of one ``(channels, length)`` series as GPT4TS cuts them: ``(windows, channels, patch_len)``.

    The end is padded by repeating the last value ``stride`` times (and further, up to ``patch_len`` values, for a
    series shorter than one window), then a window starts every ``stride`` steps.
    """
    check_int("patch_len", patch_len)
    check_int("stride", stride)
    length = series.shape[-1]
    padded_length = max(length + stride, patch_len)
    padded = np.concatenate([series, np.repeat(series[:, -1:], padded_length - length, axis=1)], axis=1)
    starts = range(0, padded_length - patch_len + 1, stride)
    return np.stack([padded[:, s : s + patch_len] for s in starts])


def series_tokens(series: np.ndarray, patch_len: int, stride: int, channels: Channels) -> np.ndarray:
    """One series as FPT input tokens: ``(windows, patch_len * channels)`` flattened as ``(p m)`` for ``"mix"``,
    ``(channels * windows, patch_len)`` channel after channel for ``"separate"``."""
    windows = patch_series(series, patch_len, stride)  # (n, m, p)
    if channels == "mix":
        return windows.transpose(0, 2, 1).reshape(windows.shape[0], -1)
    if channels == "separate":
        return windows.transpose(1, 0, 2).reshape(-1, patch_len)
    raise ValueError(f"channels must be 'mix' or 'separate', got {channels!r}.")


def label_order(labels: Sequence[str]) -> list[str]:
    """The distinct labels as strings, in numeric order where they are all numbers, else in text order."""
    names = sorted({str(label) for label in labels})
    try:
        return sorted(names, key=float)
    except ValueError:
        return names


def _padded_dataset(tokens: list[np.ndarray], labels: np.ndarray, length: int) -> datasets.Dataset:
    dim = tokens[0].shape[1]
    inputs = np.zeros((len(tokens), length, dim), dtype=np.float32)
    mask = np.zeros((len(tokens), length), dtype=np.int8)
    for row, seq in enumerate(tokens):
        inputs[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    features = datasets.Features(
        {
            "inputs_embeds": datasets.Array2D(shape=(length, dim), dtype="float32"),
            "attention_mask": datasets.Sequence(datasets.Value("int8"), length=length),
            "labels": datasets.Value("int64"),
        }
    )
    data = {"inputs_embeds": inputs, "attention_mask": mask, "labels": labels.astype(np.int64)}
    return datasets.Dataset.from_dict(data, features=features).with_format("torch")


def time_series(
    dataset: str,
    patch_len: int = 8,
    stride: int = 4,
    normalize: bool = False,
    channels: Channels = "mix",
    data_dir: str | os.PathLike[str] | None = None,
) -> TaskData:
    """Classification task on UCR/UEA archive dataset ``dataset`` (e.g. ``"JapaneseVowels"``), on its own split.

    Inputs: ``inputs_embeds`` ``(tokens, input_dim)`` and ``attention_mask`` ``(tokens,)``; labels: int64 class ids
    (names in ``label_names``). See the module docstring for the options.
    """
    check_int("patch_len", patch_len)
    check_int("stride", stride)
    if channels not in ("mix", "separate"):
        raise ValueError(f"channels must be 'mix' or 'separate', got {channels!r}.")
    (train_x, train_y), (test_x, test_y) = (load_archive(dataset, s, data_dir) for s in ("train", "test"))
    widths = {x.shape[0] for x in train_x + test_x}
    if len(widths) != 1:
        raise ValueError(f"dataset={dataset!r}: series have different numbers of channels {sorted(widths)}.")
    names = label_order(list(train_y))
    unseen = sorted({str(label) for label in test_y} - set(names))
    if unseen:
        raise ValueError(f"dataset={dataset!r}: test labels {unseen} never occur in the train split.")
    ids = {name: i for i, name in enumerate(names)}

    def tokens_of(xs: list[np.ndarray]) -> list[np.ndarray]:
        return [series_tokens(normalize_instance(x) if normalize else x, patch_len, stride, channels) for x in xs]

    train_tokens, test_tokens = tokens_of(train_x), tokens_of(test_x)
    longest = max(len(t) for t in train_tokens + test_tokens)
    spec = TaskSpec(
        name="time_series",
        input_dim=int(train_tokens[0].shape[1]),
        num_classes=len(names),
        max_tokens=longest,
    )
    train = _padded_dataset(train_tokens, np.array([ids[y] for y in train_y]), longest)
    test = _padded_dataset(test_tokens, np.array([ids[y] for y in test_y]), longest)
    source = os.fspath(data_dir) if data_dir is not None else f"aeon:{dataset}"
    return TaskData(spec=spec, train=train, eval=test, source=source, label_names=tuple(names), kind="series")
