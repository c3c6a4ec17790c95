"""ListOps: vocabulary, evaluator, LRA-grammar generator, tsv loading, padding and truncation."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fpt_peft.data import evaluate_listops, generate_listops, listops
from fpt_peft.data.listops import VOCAB, encode


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _reference_value(tokens: list[str]) -> int:
    """Independent recursive evaluator (LRA's semantics: np.median floored by int(), sum mod 10)."""

    def parse(i: int) -> tuple[int, int]:
        tok = tokens[i]
        if tok.isdigit():
            return int(tok), i + 1
        args, i = [], i + 1
        while tokens[i] != "]":
            value, i = parse(i)
            args.append(value)
        ops = {"[MAX": max, "[MIN": min, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}
        return ops[tok](args), i + 1

    value, end = parse(0)
    assert end == len(tokens)
    return value


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("7", 7),
        ("[MAX 2 9 4 ]", 9),
        ("[MIN 3 5 8 ]", 3),
        ("[MED 5 1 3 ]", 3),
        ("[MED 1 2 3 4 ]", 2),  # median 2.5, floored
        ("[MED 0 9 ]", 4),
        ("[SM 9 8 7 ]", 4),  # 24 mod 10
        ("[MAX 1 [MIN 4 7 ] 0 ]", 4),
        ("[SM [MAX 9 9 ] [MED 2 4 6 8 ] 3 ]", 7),  # 9 + 5 + 3 = 17
        ("( ( ( [MAX 4 ) 3 ) ] )", 4),  # LRA's text format, parentheses included
        ("( ( ( ( [MIN ( ( ( [SM 6 ) 7 ) ] ) ) 2 ) 8 ) ] )", 2),
    ],
)
def test_evaluator_on_hand_written_expressions(source: str, value: int) -> None:
    assert evaluate_listops(source) == value


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("[MAX 1 2", "Incomplete ListOps expression"),
        ("[MAX 1 2 ] ]", "Trailing token"),
        ("[AVG 1 2 ]", "Unknown ListOps token '\\[AVG'"),
        ("[MAX ]", "needs at least one argument"),
        ("]", "Unbalanced"),
    ],
)
def test_evaluator_rejects_malformed_expressions(source: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_listops(source)


def test_vocabulary_and_encode() -> None:
    assert len(VOCAB) == 16 and VOCAB["<pad>"] == 0
    assert [VOCAB[str(d)] for d in range(10)] == list(range(1, 11))
    assert encode("( ( [MAX 0 ) 9 ) ] )") == [VOCAB["[MAX"], 1, 10, VOCAB["]"]]
    assert encode("( ( [MAX 0 ) 9 ) ] )", keep_closing=False) == [VOCAB["[MAX"], 1, 10]
    assert len(set(VOCAB.values())) == 16
    with pytest.raises(ValueError, match="Unknown ListOps token 'foo'"):
        encode("[MAX foo ]")


def test_generator_follows_lra_grammar() -> None:
    sources, targets = generate_listops(150, max_depth=4, max_args=5, min_length=10, max_length=60, seed=3)
    assert len(set(sources)) == 150
    for source, target in zip(sources, targets, strict=True):
        tokens = [t for t in source.split() if t not in "()"]
        assert 10 < len(tokens) < 60 and len(encode(source)) == len(tokens)
        assert source.count("(") == source.count(")")
        assert _reference_value(tokens) == target  # re-evaluated independently
        depth = max_depth = 0
        for tok in tokens:
            depth += tok.startswith("[") - (tok == "]")
            max_depth = max(max_depth, depth)
        assert 1 <= max_depth <= 3  # operators stop one level above max_depth
    assert set(targets) <= set(range(10)) and len(set(targets)) > 3


def test_generator_operator_arity_and_determinism() -> None:
    sources, _ = generate_listops(50, max_depth=2, max_args=3, min_length=2, max_length=10, seed=0)
    for source in sources:  # depth 2: a single operator over 2-3 digits
        tokens = [t for t in source.split() if t not in "()"]
        assert 2 <= len(tokens) - 2 <= 3
    assert generate_listops(20, min_length=20, max_length=80, seed=1) == generate_listops(
        20, min_length=20, max_length=80, seed=1
    )
    assert generate_listops(20, min_length=20, max_length=80, seed=1) != generate_listops(
        20, min_length=20, max_length=80, seed=2
    )


def test_generated_task_is_padded_and_consistent() -> None:
    data = listops(num_train=40, num_eval=10, max_tokens=64, seed=0)
    spec = data.spec
    assert spec.input_vocab_size == 16 and spec.pad_token_id == 0 and spec.num_classes == 10
    assert spec.input_dim is None and spec.metric == "accuracy" and spec.max_tokens <= 64
    rows = data.train[:]
    ids, mask = rows["input_ids"], rows["attention_mask"]
    assert ids.dtype == torch.int64 and ids.shape == (40, spec.max_tokens) and mask.shape == ids.shape
    assert mask.sum(dim=1).max() == spec.max_tokens and (mask.sum(dim=1) > 32).all()
    assert torch.equal(ids == 0, mask == 0)  # pad exactly where the mask is 0, and only on the right
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)
    id_to_token = {v: k for k, v in VOCAB.items()}
    for row, m, label in zip(ids, mask, rows["labels"], strict=True):
        tokens = [id_to_token[i] for i in row[m.bool()].tolist()]
        assert _reference_value(tokens) == label
    batch = next(iter(DataLoader(data.eval, batch_size=4)))
    assert batch["input_ids"].shape == (4, spec.max_tokens)
    again = listops(num_train=40, num_eval=10, max_tokens=64, seed=0)
    assert torch.equal(again.train[:]["input_ids"], ids)
    other = listops(num_train=40, num_eval=10, max_tokens=64, seed=1)
    assert not torch.equal(other.train[:]["input_ids"], ids)


def test_too_long_sequences_need_truncation() -> None:
    with pytest.raises(ValueError, match=r"longest sequence has \d+ tokens, more than max_tokens=20.*truncation=True"):
        listops(num_train=5, num_eval=5, max_tokens=20, min_length=30, max_length=60)
    data = listops(num_train=5, num_eval=5, max_tokens=20, min_length=30, max_length=60, truncation=True)
    assert data.spec.max_tokens == 20 and data.train[:]["attention_mask"].all()


def _write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", newline="") as f:  # as LRA writes them
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)


def test_loads_lra_tsv_files(tmp_path: Path) -> None:
    train, _ = generate_listops(12, min_length=5, max_length=40, seed=4)
    rows = [(s, evaluate_listops(s)) for s in train]
    _write_tsv(tmp_path / "basic_train.tsv", rows[:8])
    _write_tsv(tmp_path / "basic_test.tsv", rows[8:10])
    _write_tsv(tmp_path / "basic_val.tsv", rows[10:])
    data = listops(data_dir=str(tmp_path), max_tokens=64)
    longest = max(len(encode(s)) for s, _ in rows[:10])
    assert (len(data.train), len(data.eval), data.spec.max_tokens) == (8, 2, longest)
    for split, expected in ((data.train, rows[:8]), (data.eval, rows[8:10])):
        for example, (source, target) in zip(split, expected, strict=True):
            ids = encode(source)
            assert example["input_ids"][: len(ids)].tolist() == ids
            assert int(example["attention_mask"].sum()) == len(ids) and int(example["labels"]) == target
    val = listops(data_dir=str(tmp_path), max_tokens=64, eval_split="val")
    assert val.eval[:]["labels"].tolist() == [t for _, t in rows[10:]]


def test_tsv_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"basic_train\.tsv"):
        listops(data_dir=str(tmp_path))
    long_source = "[SM " + " ".join(["1"] * 30) + " ]"
    _write_tsv(tmp_path / "basic_train.tsv", [(long_source, 0)])
    _write_tsv(tmp_path / "basic_test.tsv", [("[MAX 1 2 ]", 2)])
    with pytest.raises(ValueError, match="longest sequence has 32 tokens, more than max_tokens=16"):
        listops(data_dir=str(tmp_path), max_tokens=16)
    assert listops(data_dir=str(tmp_path), max_tokens=16, truncation=True).spec.max_tokens == 16
    with pytest.raises(ValueError, match="eval_split must be 'test' or 'val'"):
        listops(data_dir=str(tmp_path), eval_split="dev")
    _write_tsv(tmp_path / "basic_test.tsv", [("[MAX 1 2 ]", 12)])
    with pytest.raises(ValueError, match=r"targets must be in \[0, 10\), found \[12\]"):
        listops(data_dir=str(tmp_path), max_tokens=64)
