"""Choosing the step to keep on held-out data: the validation split carved from training data, the best step kept
(and resumed), early stopping, and the eval split scored once, at the kept step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from fpt_peft.arguments import FPTTrainingArguments
from fpt_peft.data import TaskData, load_task
from fpt_peft.modeling import load_backbone
from fpt_peft.selection import BestStep, with_validation
from fpt_peft.training import train

from .training_utils import model_batch, save_tiny_backbone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_task("digits")


def _ids(dataset: Any) -> set[bytes]:
    return {row.numpy().tobytes() for row in dataset["inputs_embeds"]}


def test_the_validation_split_is_a_stratified_disjoint_part_of_train(digits: TaskData) -> None:
    carved = with_validation(digits, 0.1, seed=0)
    assert carved.validation is not None and carved.eval is digits.eval
    assert len(carved.validation) == round(0.1 * len(digits.train))
    assert len(carved.train) + len(carved.validation) == len(digits.train)
    assert not _ids(carved.train) & _ids(carved.validation)
    assert _ids(carved.train) | _ids(carved.validation) == _ids(digits.train)
    train_share = np.bincount(np.asarray(digits.train["labels"]), minlength=10) / len(digits.train)
    held_share = np.bincount(np.asarray(carved.validation["labels"]), minlength=10) / len(carved.validation)
    assert np.abs(train_share - held_share).max() < 0.02  # every class in proportion
    again = with_validation(digits, 0.1, seed=0)
    assert _ids(again.validation) == _ids(carved.validation)
    assert _ids(with_validation(digits, 0.1, seed=1).validation) != _ids(carved.validation)


def test_a_task_s_own_validation_split_is_kept_and_zero_carves_none(digits: TaskData) -> None:
    carved = with_validation(digits, 0.1, seed=0)
    assert with_validation(carved, 0.3, seed=5) is carved
    assert with_validation(digits, 0.0, seed=0).validation is None


@pytest.mark.parametrize(("fraction", "match"), [(1.0, r"in \[0, 1\)"), (-0.1, r"in \[0, 1\)")])
def test_a_validation_fraction_that_cannot_work_is_refused(digits: TaskData, fraction: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        with_validation(digits, fraction, seed=0)


def test_a_tiny_split_gives_one_validation_example_and_one_example_is_refused(digits: TaskData) -> None:
    tiny = dataclasses.replace(digits, train=digits.train.select(range(3)))
    carved = with_validation(tiny, 1e-4, seed=0)
    assert carved.validation is not None and (len(carved.train), len(carved.validation)) == (2, 1)
    with pytest.raises(ValueError, match="leaves 1 for validation and 0 for training"):
        with_validation(dataclasses.replace(digits, train=digits.train.select([0])), 0.1, seed=0)


def test_a_stream_draws_fresh_validation_examples() -> None:
    task = load_task("bit_xor", n_bits=5, patch_size=5, num_eval=50, stream=True)
    carved = with_validation(task, 0.1, seed=0)
    assert carved.validation is not None and len(carved.validation) == 50
    assert _ids(carved.validation) != _ids(task.eval)
    first_train = [task.train.example(i)["inputs_embeds"].numpy().tobytes() for i in range(50)]
    assert _ids(carved.validation) != set(first_train)


def test_best_step_prefers_higher_scores_then_lower_losses_then_earlier_steps() -> None:
    best, weight = BestStep(), [torch.zeros(2)]
    assert best.update(1, 0.5, 1.0, weight, keep=True)
    weight[0].fill_(1.0)
    assert not best.update(2, 0.5, 1.0, weight, keep=True)  # a tie: the earlier step stays
    assert best.update(3, 0.5, 0.9, weight, keep=True)  # same score, lower loss
    weight[0].fill_(2.0)
    assert not best.update(4, 0.4, 0.1, weight, keep=True) and best.evaluations_since == 1
    best.restore(weight)
    assert best.step == 3 and torch.equal(weight[0], torch.ones(2))


def _run(task: TaskData, model: str, out: Path, **options: Any) -> dict[str, float]:
    defaults: dict[str, Any] = {"batch_size": 16, "eval_every": 2, "save_every": 0, "learning_rate": 0.05}
    return train(task, FPTTrainingArguments(model=model, output_dir=str(out), **{**defaults, **options}))


def _score(folder: Path, model: str, data: Any) -> float:
    reloaded = PeftModel.from_pretrained(load_backbone(model), str(folder / "adapter")).eval()
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    with torch.no_grad():
        right = [(reloaded(**model_batch(b)).logits.argmax(-1) == b["labels"]) for b in loader]
    return float(torch.cat(right).double().mean())


def test_keep_best_saves_and_scores_the_best_validation_step(tiny: str, digits: TaskData, tmp_path: Path) -> None:
    """An unstable rate (0.05) makes the validation score jump; the kept step is the best one, the saved adapter is
    its weights (it reproduces the recorded validation and test scores), and keep=last keeps the last step."""
    best = _run(digits, tiny, tmp_path / "best", max_steps=24)
    last = _run(digits, tiny, tmp_path / "last", max_steps=24, keep="last")
    assert last["kept_step"] == 24 and best["kept_step"] < 24, (best, last)
    assert best["validation_accuracy"] >= last.get("validation_accuracy", 0.0)
    carved = with_validation(digits, 0.1, seed=0)
    assert _score(tmp_path / "best", tiny, carved.validation) == pytest.approx(best["validation_accuracy"], abs=1e-9)
    assert _score(tmp_path / "best", tiny, digits.eval) == pytest.approx(best["accuracy"], abs=1e-9)
    saved = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert saved["kept_step"] == best["kept_step"] and saved["step"] == 24


def test_a_resumed_run_keeps_the_same_best_step(tiny: str, digits: TaskData, tmp_path: Path) -> None:
    options: dict[str, Any] = {"save_every": 8}
    straight = _run(digits, tiny, tmp_path / "straight", max_steps=24, **options)
    _run(digits, tiny, tmp_path / "stopped", max_steps=16, **options)
    resumed = _run(digits, tiny, tmp_path / "stopped", max_steps=24, resume=True, **options)
    assert resumed == straight
    a = load_file(str(tmp_path / "straight/adapter/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "stopped/adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_ends_after_patience_evaluations_without_progress(
    tiny: str, digits: TaskData, tmp_path: Path
) -> None:
    # A rate far below float32's resolution of the weights: nothing changes, so no evaluation is ever better.
    metrics = _run(digits, tiny, tmp_path, max_steps=40, learning_rate=1e-12, eval_every=1, early_stopping_patience=2)
    assert metrics["step"] == 3 and metrics["kept_step"] == 1, metrics


def test_early_stopping_without_a_validation_split_is_refused(tiny: str, digits: TaskData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--early-stopping-patience needs a validation split"):
        _run(digits, tiny, tmp_path, max_steps=4, validation_fraction=0.0, early_stopping_patience=2)


def test_without_validation_the_eval_split_is_scored_as_before(tiny: str, digits: TaskData, tmp_path: Path) -> None:
    metrics = _run(digits, tiny, tmp_path, max_steps=4, validation_fraction=0.0)
    assert "kept_step" not in metrics and "validation_accuracy" not in metrics and metrics["step"] == 4
    assert _score(tmp_path, tiny, digits.eval) == pytest.approx(metrics["accuracy"], abs=1e-9)  # the last step
