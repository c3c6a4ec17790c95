"""The paper's metrics as ``evaluate`` metrics that work offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; these subclasses of :class:`evaluate.Metric` live in
the package instead and compute the same numbers. Use :func:`load_metric` with a :class:`TaskSpec` metric name.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

_CITATION = """@article{lu2021pretrained,
  title={Pretrained Transformers as Universal Computation Engines},
  author={Lu, Kevin and Grover, Aditya and Abbeel, Pieter and Mordatch, Igor},
  journal={arXiv preprint arXiv:2103.05247}, year={2021}}"""


class Accuracy(evaluate.Metric):  # type: ignore[misc]
    """Fraction of examples whose predicted class equals the label."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy: the fraction of examples whose predicted class equals the reference.",
            citation=_CITATION,
            inputs_description="predictions, references: int class indices, one per example.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        p, r = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((p == r).mean()) if p.size else float("nan")}


class PerBitAccuracy(evaluate.Metric):  # type: ignore[misc]
    """Fraction of predicted values (bits) that are right, and fraction of examples with every value right."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Per-bit accuracy over every predicted value, and exact match over whole examples.",
            citation=_CITATION,
            inputs_description="predictions, references: sequences of int class indices (one per bit) per example.",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        p, r = np.asarray(predictions), np.asarray(references)
        if not p.size:
            return {"per_bit_accuracy": float("nan"), "exact_match": float("nan")}
        correct = p == r
        return {"per_bit_accuracy": float(correct.mean()), "exact_match": float(correct.all(axis=1).mean())}


METRICS: dict[str, type[evaluate.Metric]] = {"accuracy": Accuracy, "per_bit_accuracy": PerBitAccuracy}


def load_metric(name: str) -> evaluate.Metric:
    """An in-memory instance of the metric ``name`` (``"accuracy"`` or ``"per_bit_accuracy"``)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; expected one of {sorted(METRICS)}.")
    return METRICS[name](keep_in_memory=True)
