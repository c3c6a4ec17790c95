"""Classical baselines on a task's tokens: the majority class, logistic regression, a random forest, MiniRocket.

Each is fitted on the same training examples an FPT run trains on (the validation examples set aside) and scored
with the task's metric on the validation and test splits. The tokens are the inputs: for a table, its standardised
features; for an image, its standardised pixels, patch by patch; for a series, its patches read as a multivariate
series (one channel per value of a patch, one step per patch), which is what MiniRocket (aeon) takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np

from .data.spec import TaskData
from .metrics import load_metric

BASELINES_BY_KIND: dict[str | None, tuple[str, ...]] = {
    None: ("majority",),
    "table": ("majority", "logistic_regression", "random_forest"),
    "image": ("majority", "logistic_regression", "random_forest"),
    "series": ("majority", "minirocket"),
}
BASELINES = ("majority", "logistic_regression", "random_forest", "minirocket")


def _arrays(split: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    columns = split.with_format("numpy")[:]
    key = "inputs_embeds" if "inputs_embeds" in columns else "input_ids"
    return np.asarray(columns[key]), np.asarray(columns["labels"])


def _majority(x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Predicts the most frequent training label (per output, for tasks with several)."""
    labels = y.reshape(len(y), -1)
    most = np.array([np.bincount(column).argmax() for column in labels.T])
    return lambda inputs: np.broadcast_to(most if y.ndim > 1 else most[0], (len(inputs), *y.shape[1:]))


def _sklearn(name: str) -> Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]:
    def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        try:
            from sklearn.ensemble import RandomForestClassifier
            from sklearn.linear_model import LogisticRegression
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"The {name} baseline needs scikit-learn: pip install 'fpt-peft[extras]'."
            ) from exc
        model: Any = (
            LogisticRegression(max_iter=2000)
            if name == "logistic_regression"
            else RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
        )
        model.fit(x.reshape(len(x), -1), y)
        return lambda inputs: model.predict(inputs.reshape(len(inputs), -1))

    return fit


def _minirocket(x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from aeon.classification.convolution_based import MiniRocketClassifier
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("The minirocket baseline needs aeon: pip install 'fpt-peft[timeseries]'.") from exc
    model = MiniRocketClassifier(random_state=seed, n_jobs=1)
    model.fit(np.ascontiguousarray(x.transpose(0, 2, 1)), y)  # (n, tokens, values) -> (n, channels, time)
    return lambda inputs: model.predict(np.ascontiguousarray(inputs.transpose(0, 2, 1)))


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]] = {
    "majority": _majority,
    "logistic_regression": _sklearn("logistic_regression"),
    "random_forest": _sklearn("random_forest"),
    "minirocket": _minirocket,
}


def fit_baseline(name: str, task: TaskData, seed: int) -> dict[str, float]:
    """Fit the baseline ``name`` on ``task.train`` (seeded by ``seed`` where it is random) and score it with the task's
    metric: ``{"validation": ..., "test": ...}`` (validation: None without a validation split)."""
    if name not in FITTERS:
        raise ValueError(f"Unknown baseline {name!r}; expected one of {list(FITTERS)}.")
    if not isinstance(task.train, datasets.Dataset):
        raise ValueError(f"The {name} baseline needs a finite train split; pass the task without stream=True.")
    predict = FITTERS[name](*_arrays(task.train), seed)
    scores: dict[str, float] = {}
    for split_name, split in (("validation", task.validation), ("test", task.eval)):
        if split is None:
            continue
        x, y = _arrays(split)
        metric = load_metric(task.spec.metric)
        metric.add_batch(predictions=np.asarray(predict(x)), references=y)
        scores[split_name] = float(metric.compute()[task.spec.metric])
    return scores
