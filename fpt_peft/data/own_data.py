"""A user's own data as an FPT task: the kind inferred (table, series or image), tokens cut the way this project cuts
that kind, features standardised with the training split's statistics, any number of named classes.

- **table** ``(n, features)``: ``patch_size`` features per token (default 1; the last token zero-padded), as FPT feeds
  bits a group per token.
- **series** ``(n, time)`` or ``(n, channels, time)``: GPT4TS patches
  (:func:`~fpt_peft.data.time_series.series_tokens`, every channel of a patch in one token), ``patch_size`` steps
  (default: 8, more for long series so that at most about 128 tokens are made) every ``stride`` steps (default half
  a patch).
- **image** ``(n, height, width[, channels])``: square patches of ``patch_size`` pixels per side (default: the divisor
  of the side closest to side / 8, 4 for 28 or 32 pixels as the paper's MNIST and CIFAR-10), row by row.

Each feature (table), channel (series, image) is standardised with the mean and standard deviation of the training
examples only (after the validation and test examples are set aside). Without a test split, ``test_fraction`` of the
examples (stratified) becomes one. See :func:`own_data`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from ._common import check_int, continuous_dataset, stratified_split
from .images import patchify
from .own_files import KINDS, RawData, read_own_data
from .spec import TaskData, TaskSpec
from .time_series import label_order, series_tokens

MAX_SERIES_TOKENS = 128  # default series patches grow with the length to stay about this many tokens
MAX_CLASS_SHARE = 0.5  # more distinct labels than this share of the rows: an identifier or a regression target


def own_data(
    data: str | os.PathLike[str],
    kind: str | None = None,
    label_column: str = "label",
    input_column: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    test_fraction: float = 0.2,
    image_size: int | None = None,
    patch_size: int | None = None,
    stride: int | None = None,
    seed: int = 0,
) -> TaskData:
    """The classification task of the user's ``data`` (any source :func:`~fpt_peft.data.own_files.read_own_data`
    reads), as tokens of its ``kind`` (None: inferred, and said in ``TaskData.description``).

    ``patch_size`` is features per token (table), steps per patch (series) or pixels per patch side (image);
    ``stride`` the steps between series patches. Without a test split, ``test_fraction`` of the examples is held out
    (stratified, ``seed``). Raises a ValueError naming the file or column for data that cannot be a classification
    task (one class, labels that look like a regression target, test classes never trained on).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}.")
    for name, value in (("--patch-size", patch_size), ("--stride", stride), ("--image-size", image_size)):
        if value is not None:
            check_int(name, value)
    raw = read_own_data(data, label_column, input_column, split, test_split, image_size)
    inferred, why = infer_kind(raw)
    chosen = kind or inferred
    shape = raw.train[0].shape[1:]
    if chosen == "image" and raw.train[0].ndim not in (3, 4):
        raise ValueError(f"--kind image: {raw.name}'s examples have shape {shape}; images are (height, width[, c]).")
    if chosen == "series" and raw.train[0].ndim not in (2, 3):
        raise ValueError(f"--kind series: {raw.name}'s examples have shape {shape}; series are (time) or (c, time).")
    train, test = _with_test(raw, test_fraction, seed)
    names, ids = _classes(raw, train[1], test[1])
    validation = raw.validation
    x_train, x_test = train[0], test[0]
    x_val = None if validation is None else validation[0]
    if chosen == "table":  # an array's example flattened: its values are the features
        flat_val = None if x_val is None else x_val.reshape(len(x_val), -1)
        flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
        tokens, detail = _table_tokens(flat_train, flat_test, flat_val, patch_size or 1)
    elif chosen == "series":
        tokens, detail = _series_tokens(x_train, x_test, x_val, patch_size, stride)
    else:
        tokens, detail = _image_tokens(x_train, x_test, x_val, patch_size)
    spec = TaskSpec(
        name="own_data", input_dim=int(tokens[0].shape[2]), num_classes=len(names), max_tokens=int(tokens[0].shape[1])
    )
    splits = [continuous_dataset(x, ids(y)) for x, y in zip(tokens, (train[1], test[1]), strict=True)]
    counts = f"{len(x_train)} train / {len(x_test)} test" + ("" if x_val is None else f" / {len(x_val)} validation")
    description = (
        f"{raw.format} `{raw.name}`, read as kind {chosen} ({'--kind' if kind else why}): {counts} examples of shape "
        f"{tuple(shape)}; {len(names)} classes ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}); "
        f"{detail}; standardised with the train split's statistics"
        + "".join(f"; {note}" for note in raw.notes)
        + ("" if raw.test is not None else f"; test split: {test_fraction:g} of the data (stratified, seed {seed})")
        + "."
    )
    return TaskData(
        spec=spec,
        train=splits[0],
        eval=splits[1],
        source=raw.name,
        label_names=tuple(names),
        local_source=raw.local,
        description=description,
        validation=None if validation is None else continuous_dataset(tokens[2], ids(validation[1])),
        kind=chosen,
    )


def infer_kind(raw: RawData) -> tuple[str, str]:
    """The kind of ``raw`` (``"table"``, ``"series"`` or ``"image"``) and the reason, in a phrase."""
    if raw.kind is not None:
        return raw.kind, f"inferred: {'an' if raw.format[0] in 'aeiou' else 'a'} {raw.format}"
    shape = raw.train[0].shape[1:]
    if len(shape) == 3:
        return "image", f"inferred: examples of shape {shape} are (height, width, channels)"
    if len(shape) == 2:
        small, large = sorted(shape)
        if small >= 8 and large <= 4 * small:
            return "image", f"inferred: {shape[0]}x{shape[1]} examples are (height, width); --kind series for (c, t)"
        return "series", f"inferred: {shape[0]}x{shape[1]} examples are (channels, time); --kind image otherwise"
    x = raw.train[0]
    if shape[0] >= 16:
        lag = _neighbour_correlation(x)
        if lag > 0.5:
            return "series", f"inferred: neighbouring columns correlate {lag:.2f} like time steps; else --kind table"
    return "table", "inferred: a (n, features) array; --kind series to read its columns as time steps"


def _neighbour_correlation(x: np.ndarray) -> float:
    """The mean over rows of the correlation between each row's values and the same row shifted by one column."""
    a, b = x[:, :-1] - x[:, :-1].mean(1, keepdims=True), x[:, 1:] - x[:, 1:].mean(1, keepdims=True)
    denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    valid = denominator > 0
    return float(((a * b).sum(1)[valid] / denominator[valid]).mean()) if valid.any() else 0.0


def _with_test(
    raw: RawData, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if raw.test is not None:
        return raw.train, raw.test
    if not 0 < fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {fraction}.")
    x, y = raw.train
    count = max(1, round(fraction * len(y)))
    if count >= len(y):
        raise ValueError(f"--data {raw.name}: {len(y)} example(s) are too few to hold out a test split.")
    _, codes = np.unique(y, return_inverse=True)
    rest, held = stratified_split(codes, count, seed)
    return (x[rest], y[rest]), (x[held], y[held])


def _classes(raw: RawData, train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[list[str], Any]:
    names = label_order(list(train_labels))
    if len(names) < 2:
        raise ValueError(f"--data {raw.name}: the training examples have one class only ({names[0]!r}).")
    if len(names) > MAX_CLASS_SHARE * len(train_labels):
        raise ValueError(
            f"--data {raw.name}: {len(names)} distinct labels in {len(train_labels)} training examples; that is an "
            "identifier or a regression target, not classes. Name the class column with --label-column."
        )
    others = [*test_labels, *([] if raw.validation is None else raw.validation[1])]
    unseen = sorted(set(map(str, others)) - set(names))
    if unseen:
        raise ValueError(f"--data {raw.name}: held-out labels {unseen[:5]} never occur in the training examples.")
    index = {name: i for i, name in enumerate(names)}
    return names, lambda labels: np.array([index[str(label)] for label in labels], dtype=np.int64)


def _standardise(splits: list[np.ndarray], axes: tuple[int, ...]) -> list[np.ndarray]:
    """Every split minus the train split's mean, over its std (1 where it is 0), reduced over ``axes``."""
    mean = splits[0].mean(axis=axes, keepdims=True, dtype=np.float64)
    std = splits[0].std(axis=axes, keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in splits]


def _table_tokens(
    train: np.ndarray, test: np.ndarray, val: np.ndarray | None, per_token: int
) -> tuple[list[np.ndarray], str]:
    splits = _standardise([x for x in (train, test, val) if x is not None], axes=(0,))
    features = train.shape[1]
    count = math.ceil(features / per_token)
    padded = [np.pad(x, ((0, 0), (0, count * per_token - features))) for x in splits]
    tokens = [x.reshape(len(x), count, per_token) for x in padded]
    return tokens, f"{count} tokens of {per_token} feature{'s' if per_token > 1 else ''} (--patch-size)"


def _series_tokens(
    train: np.ndarray, test: np.ndarray, val: np.ndarray | None, patch: int | None, stride: int | None
) -> tuple[list[np.ndarray], str]:
    splits = [x if x.ndim == 3 else x[:, None, :] for x in (train, test, val) if x is not None]
    splits = _standardise(splits, axes=(0, 2))
    length = splits[0].shape[2]
    patch = patch or max(8, math.ceil(2 * length / MAX_SERIES_TOKENS))
    stride = stride or max(1, patch // 2)
    tokens = [np.stack([series_tokens(s, patch, stride, "mix") for s in x]) for x in splits]
    channels = splits[0].shape[1]
    return tokens, (
        f"{tokens[0].shape[1]} tokens, each a patch of {patch} steps (--patch-size) x {channels} channel(s), "
        f"every {stride} steps (--stride)"
    )


def _image_tokens(
    train: np.ndarray, test: np.ndarray, val: np.ndarray | None, patch: int | None
) -> tuple[list[np.ndarray], str]:
    splits = [x if x.ndim == 4 else x[..., None] for x in (train, test, val) if x is not None]
    splits = _standardise(splits, axes=(0, 1, 2))
    height, width, channels = splits[0].shape[1:]
    if patch is None:
        side = math.gcd(height, width)
        divisors = [d for d in range(1, side + 1) if side % d == 0]
        patch = min(divisors, key=lambda d: (abs(d - side / 8), -d))
    if height % patch or width % patch:
        raise ValueError(f"--patch-size {patch} does not divide {height}x{width} images; pick a divisor of both.")
    tokens = [patchify(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), patch).numpy() for x in splits]
    return tokens, f"{tokens[0].shape[1]} tokens of {patch}x{patch} pixels x {channels} channel(s) (--patch-size)"
