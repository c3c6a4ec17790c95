"""Reading a user's own data into arrays and labels: tables, ``.npy``/``.npz`` arrays, image folders, ``.ts`` files
and ``datasets`` datasets (a local folder or a Hub id).

What comes out is a :class:`RawData`: numeric features per split (train, and test or validation where the data has
them) with the labels as strings, the format that was read and, where the format says it, the kind of data
(table, series or image). Turning it into FPT tokens is :mod:`fpt_peft.data.own_data`'s job. Every error names the
file (or column) and what was expected; local files are read without progress bars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ._common import SPLIT_ALIASES

KINDS = ("table", "series", "image")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".jsonl": None, ".json": None}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_CATEGORIES = 20  # a text feature column with more distinct values is refused rather than one-hot encoded
_ARRAY_SPLIT = {"train": "train", "test": "test", "validation": "val"}  # split -> array key suffix


@dataclass
class RawData:
    """A user's data as read: float features (``(n, ...)``) and string labels per split, before tokenisation."""

    name: str
    """The file or folder name (never a machine path), or the Hub id."""
    format: str
    """What was read, in words (``"CSV table"``, ``"npz arrays"``, ``"image folder"``, ...)."""
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None = None
    validation: tuple[np.ndarray, np.ndarray] | None = None
    kind: str | None = None
    """``"table"``, ``"series"`` or ``"image"`` when the format decides it (arrays: None, inferred from shapes)."""
    columns: tuple[str, ...] = ()
    """The feature names of a table (a one-hot column as ``name=value``)."""
    notes: list[str] = field(default_factory=list)
    """What reading did to the data worth saying (one-hot columns, padded series)."""
    local: bool = True


def read_own_data(
    data: str | os.PathLike[str],
    label_column: str = "label",
    input_column: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    image_size: int | None = None,
) -> RawData:
    """Read ``data``: a table file (CSV, TSV, parquet, JSON lines), an ``.npz`` file or a folder of ``.npy`` files
    (``X_train``/``y_train``[/``X_test``/``y_test``] or ``X``/``y``), an image folder (``train/<class>/*`` and
    optionally ``test/<class>/*``, or ``<class>/*``), a ``.ts`` file (its ``_TEST`` sibling is the test split), a
    folder saved by ``datasets.Dataset.save_to_disk`` or of data files, or a Hub dataset id.

    ``label_column`` and ``input_column`` (default: every other column of a table; the image or array column of a
    dataset) choose the columns of tables and datasets; ``split``/``test_split`` the splits of a dataset;
    ``image_size`` resizes images (needed when they differ in size).
    """
    path = Path(data).expanduser()
    name = path.name or str(data)
    if not path.exists():
        if str(data).startswith((".", "/", "~")) or path.suffix or str(data).count("/") != 1:
            raise FileNotFoundError(f"--data {name}: no such file or folder (nor a Hub dataset id 'owner/name').")
        return _read_dataset(str(data), label_column, input_column, split, test_split, image_size, hub=True)
    if path.is_file():
        suffix = path.suffix.lower()
        if path.stat().st_size == 0:
            raise ValueError(f"--data {name}: the file is empty.")
        if suffix in TABLE_SUFFIXES:
            return _read_table(path, label_column, input_column)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return _arrays(name, "npz arrays", {key: arrays[key] for key in arrays.files})
        if suffix == ".ts":
            return _read_ts(path)
        if suffix == ".npy":
            raise ValueError(
                f"--data {name}: one .npy file holds no labels; pass the folder holding X.npy and y.npy "
                "(or X_train.npy, y_train.npy, X_test.npy, y_test.npy), or an .npz file with those keys."
            )
        raise ValueError(
            f"--data {name}: unknown file type {suffix or '(none)'!r}; expected a table "
            f"({', '.join(TABLE_SUFFIXES)}), .npz, .ts, or a folder."
        )
    npy = {p.stem: p for p in path.glob("*.npy")}
    if npy:
        arrays = {key: np.load(p, allow_pickle=False) for key, p in npy.items()}
        return _arrays(name, "npy arrays", arrays)
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or _has_data_files(path):
        return _read_dataset(str(path), label_column, input_column, split, test_split, image_size, hub=False)
    return _read_image_folder(path, image_size)


def _has_data_files(path: Path) -> bool:
    return any(p.suffix.lower() in (".parquet", ".csv", ".jsonl", ".arrow") for p in path.rglob("*") if p.is_file())


# --- tables -----------------------------------------------------------------------------------------------------


def _read_table(path: Path, label_column: str, input_column: str | None) -> RawData:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_csv(path, sep=TABLE_SUFFIXES[suffix])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"--data {path.name}: not a readable table ({type(exc).__name__}: {exc}).") from exc
    kind = {".parquet": "parquet", ".jsonl": "JSON lines", ".json": "JSON lines"}.get(suffix, suffix[1:].upper())
    train, _, columns, notes = _table_arrays(frame, None, label_column, input_column, path.name)
    return RawData(path.name, f"{kind} table", train, kind="table", columns=columns, notes=notes)


def _table_arrays(
    frame: Any, test_frame: Any, label_column: str, input_column: str | None, name: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None, tuple[str, ...], list[str]]:
    """Features (numeric columns as they are, text columns one-hot from the train split's values) and labels."""
    if len(frame) == 0:
        raise ValueError(f"--data {name}: the table has no rows.")
    if label_column not in frame.columns:
        raise ValueError(
            f"--data {name}: no label column {label_column!r}; columns are {list(map(str, frame.columns))}. "
            "Name it with --label-column."
        )
    inputs = [c for c in frame.columns if c != label_column]
    if input_column is not None:
        inputs = [c.strip() for c in input_column.split(",")]
        missing = [c for c in inputs if c not in frame.columns]
        if missing:
            raise ValueError(f"--data {name}: no input column(s) {missing}; columns are {list(frame.columns)}.")
    if not inputs:
        raise ValueError(f"--data {name}: the table has no feature column besides {label_column!r}.")
    columns: list[str] = []
    notes: list[str] = []
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    for column in inputs:
        values = frame[column]
        test_values = None if test_frame is None else test_frame[column]
        if values.dtype.kind in "biuf":
            parts.append((values.to_numpy(np.float64)[:, None], _numeric(test_values)))
            columns.append(str(column))
            continue
        if values.dtype.kind == "O" and values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            raise ValueError(
                f"--data {name}: column {column!r} holds sequences; a table feature must be one number or category."
            )
        categories = sorted(values.dropna().astype(str).unique())
        if len(categories) > MAX_CATEGORIES:
            raise ValueError(
                f"--data {name}: column {column!r} holds text with {len(categories)} distinct values (a category "
                f"column may have at most {MAX_CATEGORIES}); drop it, or pick the feature columns with --input-column."
            )
        test_part = None if test_values is None else _one_hot(test_values, categories)
        parts.append((_one_hot(values, categories), test_part))
        columns += [f"{column}={c}" for c in categories]
        notes.append(f"{column!r} one-hot ({len(categories)} categories)")
    features = np.concatenate([p for p, _ in parts], axis=1)
    _check_finite_rows(features, columns, name)
    labels = _label_strings(frame[label_column], label_column, name)
    test = None
    if test_frame is not None:
        test_x = np.concatenate([p for _, p in parts if p is not None], axis=1)
        _check_finite_rows(test_x, columns, name + " (test)")
        test = (test_x, _label_strings(test_frame[label_column], label_column, name + " (test)"))
    return (features, labels), test, tuple(columns), notes


def _numeric(values: Any) -> np.ndarray | None:
    return None if values is None else values.to_numpy(np.float64)[:, None]


def _one_hot(values: Any, categories: list[str]) -> np.ndarray:
    text = values.astype(str).to_numpy()
    return (text[:, None] == np.asarray(categories)[None, :]).astype(np.float64)


def _check_finite_rows(features: np.ndarray, columns: list[str], name: str) -> None:
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"--data {name}: {int(bad.any(axis=1).sum())} row(s) with a missing or non-finite value, the first in "
            f"row {row + 1} (of the data, 1-based), column {columns[col]!r}; fill or drop them."
        )


def _label_strings(values: Any, column: str, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "O":
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in array):
            raise ValueError(f"--data {name}: the label column {column!r} has missing values.")
        return array.astype(str)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"--data {name}: the label column {column!r} has missing or non-finite values.")
        if not np.equal(np.round(array), array).all():
            example = array[np.flatnonzero(np.round(array) != array)[0]]
            raise ValueError(
                f"--data {name}: the label column {column!r} holds non-integer numbers (e.g. {example:g}): a "
                "regression target. own_data trains classifiers: labels must be classes (text or integers)."
            )
        array = array.astype(np.int64)
    if array.dtype.kind not in "biuU":
        raise ValueError(f"--data {name}: the label column {column!r} has values of type {array.dtype}.")
    return array.astype(str)


# --- arrays -----------------------------------------------------------------------------------------------------


def _arrays(name: str, format: str, arrays: dict[str, np.ndarray]) -> RawData:
    """``X_train``/``y_train`` (+ ``X_test``/``y_test``, ``X_val``/``y_val``) or ``X``/``y``."""
    keys = set(arrays)
    if {"X_train", "y_train"} <= keys:
        pairs = {"train": ("X_train", "y_train"), "test": ("X_test", "y_test"), "validation": ("X_val", "y_val")}
    elif {"X", "y"} <= keys:
        pairs = {"train": ("X", "y")}
    else:
        raise ValueError(
            f"--data {name}: expected arrays X_train and y_train (with X_test, y_test) or X and y; found "
            f"{sorted(keys) or 'none'}."
        )
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (x_key, y_key) in pairs.items():
        if (x_key in keys) != (y_key in keys):
            raise ValueError(f"--data {name}: {x_key} and {y_key} come together; found only one of them.")
        if x_key not in keys:
            continue
        x, y = arrays[x_key], arrays[y_key]
        if x.dtype.kind not in "biuf":
            raise ValueError(f"--data {name}: {x_key} holds {x.dtype} values; expected numbers (a (n, ...) array).")
        if x.ndim < 2 or x.ndim > 4:
            raise ValueError(
                f"--data {name}: {x_key} has shape {x.shape}; expected (n, features), (n, time), "
                "(n, channels, time) or (n, height, width[, channels])."
            )
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"--data {name}: {y_key} has shape {y.shape}; expected ({len(x)},), one label per row.")
        if len(x) == 0:
            raise ValueError(f"--data {name}: {x_key} has no rows.")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"--data {name}: {x_key} has {int(bad.sum())} row(s) with NaN or infinite values, the first at "
                f"index {int(np.flatnonzero(bad)[0])}; fill or drop them."
            )
        splits[split] = (x.astype(np.float32), _label_strings(y, y_key, name))
    shapes = {s: x.shape[1:] for s, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"--data {name}: the splits' examples differ in shape: {shapes}.")
    return RawData(name, format, splits["train"], splits.get("test"), splits.get("validation"))


# --- time series files ------------------------------------------------------------------------------------------


def _read_ts(path: Path) -> RawData:
    from .time_series import read_ts_file

    test_path = path.with_name(path.name.replace("_TRAIN", "_TEST")) if "_TRAIN" in path.name else None
    notes: list[str] = []
    splits = []
    for file in (path, test_path):
        if file is None or not file.exists():
            continue
        series, labels = read_ts_file(file)
        splits.append((_stack_series(series, notes), labels))
    length = max(x.shape[-1] for x, _ in splits)
    splits = [(_pad_to(x, length, notes), y) for x, y in splits]
    if len({x.shape[1] for x, _ in splits}) > 1:
        raise ValueError(f"--data {path.name}: the train and test series have different numbers of channels.")
    test = splits[1] if len(splits) > 1 else None
    return RawData(path.name, ".ts files" if test else ".ts file", splits[0], test, kind="series", notes=notes)


def _stack_series(series: list[np.ndarray], notes: list[str]) -> np.ndarray:
    if len({x.shape[0] for x in series}) > 1:
        raise ValueError(f"Series with different numbers of channels: {sorted({x.shape[0] for x in series})}.")
    return np.stack([_pad_to(x[None], max(s.shape[-1] for s in series), notes)[0] for x in series])


def _pad_to(x: np.ndarray, length: int, notes: list[str]) -> np.ndarray:
    """Pad the last axis to ``length`` by repeating the last value (as GPT4TS pads its last patch)."""
    if x.shape[-1] == length:
        return x
    note = f"shorter series padded to {length} steps with their last value"
    if note not in notes:
        notes.append(note)
    return np.concatenate([x, np.repeat(x[..., -1:], length - x.shape[-1], axis=-1)], axis=-1)


# --- images -----------------------------------------------------------------------------------------------------


def _read_image_folder(path: Path, image_size: int | None) -> RawData:
    roots = {s: path / s for s in ("train", "test", "validation", "val") if (path / s).is_dir()}
    if "train" not in roots:
        roots = {"train": path}
    classes = sorted(p.name for p in roots["train"].iterdir() if p.is_dir())
    if not classes:
        raise ValueError(
            f"--data {path.name}: found no .npy files, data files or class folders; an image folder holds "
            "train/<class>/<image> (and optionally test/<class>/<image>), or <class>/<image>."
        )
    files: dict[str, list[tuple[Path, str]]] = {}
    for split, root in roots.items():
        files[split] = [
            (f, c.name)
            for c in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(c.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files[split]:
            suffixes = ", ".join(IMAGE_SUFFIXES)
            raise ValueError(f"--data {path.name}: no images ({suffixes}) under {root.name}/<class>/.")
    images = _load_images([f for split in files.values() for f, _ in split], image_size, path)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for split, pairs in files.items():
        out[split] = (images[start : start + len(pairs)], np.array([c for _, c in pairs]))
        start += len(pairs)
    validation = out.get("validation", out.get("val"))
    return RawData(path.name, "image folder", out["train"], out.get("test"), validation, kind="image")


def _load_images(files: list[Path], image_size: int | None, root: Path) -> np.ndarray:
    """``(n, height, width, channels)`` floats in [0, 1]: grey (1 channel) when every image is, else RGB."""
    from PIL import Image, UnidentifiedImageError

    opened = []
    for f in files:
        try:
            with Image.open(f) as image:
                image.load()
                opened.append(image.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"--data {root.name}: {f.relative_to(root)} is not a readable image ({exc}).") from exc
    return _image_array(opened, image_size, root.name, [str(f.relative_to(root)) for f in files])


def _image_array(images: list[Any], image_size: int | None, name: str, labels_of: list[str]) -> np.ndarray:
    grey = all(image.mode in ("1", "L", "I;16", "I") for image in images)
    mode = "L" if grey else "RGB"
    if image_size is None:
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            first = images[0].size
            other = next(i for i, image in enumerate(images) if image.size != first)
            raise ValueError(
                f"--data {name}: images differ in size ({labels_of[0]} is {first[0]}x{first[1]}, {labels_of[other]} "
                f"is {images[other].size[0]}x{images[other].size[1]}); pass --image-size to resize them all."
            )
    arrays = []
    for image in images:
        converted = image.convert(mode)
        if image_size is not None and converted.size != (image_size, image_size):
            converted = converted.resize((image_size, image_size), resample=3)  # bicubic, as torchvision's default
        arrays.append(np.asarray(converted, dtype=np.float32) / 255.0)
    stacked = np.stack(arrays)
    return stacked[..., None] if grey else stacked


# --- datasets -----------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_progress(local: bool) -> Iterator[None]:
    """No progress bars while ``datasets`` reads local files (they would say "Downloading")."""
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    if local and was_enabled:
        datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was_enabled:
            datasets.utils.logging.enable_progress_bar()


def _read_dataset(
    source: str,
    label_column: str,
    input_column: str | None,
    split: str,
    test_split: str | None,
    image_size: int | None,
    hub: bool,
) -> RawData:
    name = source if hub else Path(source).name
    with _quiet_progress(local=not hub):
        path = Path(source)
        if not hub and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded: Any = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source)
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    picked = {"train": _split(splits, split, name, "--split")}
    if test_split is not None:
        picked["test"] = _split(splits, test_split, name, "--test-split")
    elif split == "train":
        picked.update({s: _split(splits, s, name, "") for s in ("test", "validation") if _has(splits, s)})
    train = picked["train"]
    if label_column not in train.column_names:
        raise ValueError(
            f"--data {name}: no label column {label_column!r} in split {split!r}; columns are {train.column_names}. "
            "Name it with --label-column."
        )
    label_feature = train.features[label_column]
    label_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    column = input_column or _input_column(train, label_column)
    if column is None or "," in (input_column or ""):
        frames = {s: d.to_pandas() for s, d in picked.items()}
        for frame in frames.values():
            if label_names is not None:
                frame[label_column] = [label_names[i] for i in frame[label_column]]
        tr, te, columns, notes = _table_arrays(frames["train"], frames.get("test"), label_column, input_column, name)
        return RawData(name, "dataset table", tr, te, kind="table", columns=columns, notes=notes, local=not hub)
    if column not in train.column_names:
        raise ValueError(f"--data {name}: no input column {column!r}; columns are {train.column_names}.")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    is_image = isinstance(train.features[column], datasets.Image)
    for s, dataset in picked.items():
        labels = dataset[label_column]
        if label_names is not None:
            labels = [label_names[i] for i in labels]
        y = _label_strings(np.asarray(labels), label_column, name)
        if is_image:
            images = dataset[column]
            x = _image_array(images, image_size, name, [f"{s} example {i}" for i in range(len(images))])
        else:
            try:
                x = np.asarray(dataset.with_format("numpy")[column], dtype=np.float32)
            except ValueError as exc:
                raise ValueError(
                    f"--data {name}: column {column!r} holds arrays of different shapes (ragged); pad or cut them to "
                    "one shape."
                ) from exc
        out[s] = (x, y)
    if is_image:
        return RawData(name, "dataset of images", out["train"], out.get("test"), out.get("validation"), "image")
    arrays = {f"{k}_{_ARRAY_SPLIT[s]}": value for s, pair in out.items() for k, value in zip("Xy", pair, strict=True)}
    raw = _arrays(name, "dataset arrays", arrays)
    raw.local = not hub
    return raw


def _has(splits: dict[str, Any], split: str) -> bool:
    return any(alias in splits for alias in SPLIT_ALIASES.get(split, (split,)))


def _split(splits: dict[str, Any], split: str, name: str, flag: str) -> Any:
    for alias in SPLIT_ALIASES.get(split, (split,)):
        if alias in splits:
            return splits[alias]
    raise ValueError(f"--data {name}: no split {split!r} ({flag}); found {sorted(splits)}.")


def _input_column(train: datasets.Dataset, label_column: str) -> str | None:
    """The one image or array column of a dataset; None when its features are plain columns (a table)."""
    candidates = [
        c
        for c, f in train.features.items()
        if c != label_column and isinstance(f, (datasets.Image, datasets.Sequence, list, datasets.Array2D))
    ]
    if len(candidates) > 1:
        raise ValueError(
            f"{len(candidates)} image or array columns ({candidates}); choose the input with --input-column."
        )
    return candidates[0] if candidates else None
