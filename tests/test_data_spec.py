"""TaskSpec validation and the task registry."""

from __future__ import annotations

import dataclasses

import pytest

from fpt_peft.data import TASKS, TaskData, TaskSpec, load_task


def _spec(**overrides: object) -> TaskSpec:
    kwargs: dict = {"name": "t", "input_dim": 4, "num_classes": 10, "max_tokens": 16}
    kwargs.update(overrides)
    return TaskSpec(**kwargs)


def test_valid_specs_and_properties() -> None:
    cont = _spec(output_tokens=2, values_per_token=5, metric="per_bit_accuracy")
    assert not cont.is_symbolic and cont.num_outputs == 10
    sym = _spec(input_dim=None, input_vocab_size=16, pad_token_id=0)
    assert sym.is_symbolic and sym.num_outputs == 1


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'num_classes'"):
        _spec().num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"input_dim": None}, "exactly one of input_dim"),
        ({"input_vocab_size": 10}, "exactly one of input_dim"),
        ({"input_dim": 0}, "input_dim must be a positive int"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"max_tokens": -1}, "max_tokens must be a positive int"),
        ({"pad_token_id": 0}, "pad_token_id is only meaningful for symbolic"),
        ({"input_dim": None, "input_vocab_size": 5, "pad_token_id": 5}, r"pad_token_id must be in \[0, "),
        ({"output_tokens": 17}, r"output_tokens \(17\) cannot exceed max_tokens \(16\)"),
        ({"metric": "f1"}, "metric must be one of"),
    ],
)
def test_spec_rejects_bad_fields(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _spec(**overrides)


def test_registry_has_every_task() -> None:
    assert set(TASKS) == {
        "bit_memory",
        "bit_xor",
        "listops",
        "mnist",
        "cifar10",
        "cifar10_lra",
        "homology",
        "digits",
        "time_series",
        "own_data",
    }


def test_load_task_builds_and_rejects_unknown_names() -> None:
    data = load_task("bit_xor", num_train=4, num_eval=2)
    assert isinstance(data, TaskData) and data.spec.name == "bit_xor"
    assert (len(data.train), len(data.eval)) == (4, 2)
    with pytest.raises(ValueError, match=r"Unknown task 'mnsit'; known tasks: \['bit_memory'"):
        load_task("mnsit")
