"""ListOps: vocabulary, evaluator, LRA-grammar generator, tsv loading, padding and truncation."""

from __future__ import annotations

import csv
import random
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fpt_peft.data import evaluate_listops, generate_listops, listops
from fpt_peft.data.listops import OFFICIAL_VOCAB, VOCAB, encode, encode_official
from fpt_peft.modeling import build_model
from fpt_peft.tuner.layer import FPTOutputLayer

from .training_utils import assert_adapter_reloads, load_recipe, quick_args, save_tiny_backbone


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
    with pytest.raises(ValueError, match=r"eval_split must be 'test' or 'validation' \(or 'valid', 'val', 'dev'\)"):
        listops(data_dir=str(tmp_path), eval_split="holdout")
    _write_tsv(tmp_path / "basic_test.tsv", [("[MAX 1 2 ]", 12)])
    with pytest.raises(ValueError, match=r"targets must be in \[0, 10\), found \[12\]"):
        listops(data_dir=str(tmp_path), max_tokens=64)


# ---------------------------------------------------------------- the official loader, written out independently
# universal_computation/datasets/helpers/listops.py (from LRA): vocab_set = the tokens of the first training examples
# under tfds.deprecated.text.Tokenizer() (alphanumeric only: the pieces between runs of \W), vocab_list =
# list(set(...)), TokenTextEncoder(vocab_list).encode: id = position in vocab_list + 1 (0 is padding; an unknown
# token gets len(vocab_list) + 1), then `[:max_length]` and padded_batch to exactly max_length with 0.
OFFICIAL_ORDER = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "MAX", "MIN", "MED", "SM"]


def _tfds_tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _official_rows(sources: list[str], vocab_list: list[str], max_length: int) -> list[list[int]]:
    index = {tok: i for i, tok in enumerate(vocab_list)}
    rows = []
    for source in sources:
        ids = [index.get(tok, len(vocab_list)) + 1 for tok in _tfds_tokens(source)][:max_length]
        rows.append(ids + [0] * (max_length - len(ids)))
    return rows


def _official_vocab_list(train_sources: list[str], seed: int) -> list[str]:
    """The official vocabulary list: a set's order, here shuffled to stand for another PYTHONHASHSEED."""
    vocab = sorted({tok for source in train_sources[:1002] for tok in _tfds_tokens(source)})
    random.Random(seed).shuffle(vocab)
    return vocab


def _same_up_to_renaming(ours: list[list[int]], theirs: list[list[int]]) -> None:
    """Equal up to a fixed one-to-one renaming of ids that keeps 0 (padding) as 0."""
    mapping: dict[int, int] = {}
    for row_ours, row_theirs in zip(ours, theirs, strict=True):
        assert len(row_ours) == len(row_theirs)
        for a, b in zip(row_ours, row_theirs, strict=True):
            assert mapping.setdefault(a, b) == b
    assert mapping.get(0, 0) == 0 and len(set(mapping.values())) == len(mapping)


def test_official_tokenizer_keeps_alphanumeric_tokens_only() -> None:
    assert {"<pad>": 0, **{tok: i + 1 for i, tok in enumerate(OFFICIAL_ORDER)}} == OFFICIAL_VOCAB
    source = "( ( ( [MAX 4 ) ( ( [SM 1 ) 9 ) ] ) ] )"
    assert _tfds_tokens(source) == ["MAX", "4", "SM", "1", "9"]  # brackets and parentheses gone
    assert encode_official(source) == _official_rows([source], OFFICIAL_ORDER, 5)[0]
    assert encode_official("[MIN 0 [MED 2 3 ] ]") == [12, 1, 13, 3, 4]
    with pytest.raises(ValueError, match="Unknown ListOps token 'AVG' for the official tokenizer"):
        encode_official("[AVG 1 2 ]")


def test_official_formulation_matches_the_official_loader_on_generated_data() -> None:
    lo, hi, n_train, n_eval = 30, 90, 40, 12
    data = listops(
        num_train=n_train, num_eval=n_eval, max_tokens=48, min_length=lo, max_length=hi, formulation="official"
    )
    sources, targets = generate_listops(n_train + n_eval, min_length=lo, max_length=hi, seed=0)
    spec = data.spec
    assert (spec.input_vocab_size, spec.pad_token_id, spec.max_tokens) == (15, 0, 48)
    assert "attention_mask" not in data.train.column_names and "attention_mask" not in data.eval.column_names
    train_ids = data.train[:]["input_ids"].tolist()
    eval_ids = data.eval[:]["input_ids"].tolist()
    assert _official_rows(sources[:n_train], OFFICIAL_ORDER, 48) == train_ids
    assert _official_rows(sources[n_train:], OFFICIAL_ORDER, 48) == eval_ids
    assert data.train[:]["labels"].tolist() == targets[:n_train]
    for seed in range(3):  # the official ids are a run-dependent permutation of these
        vocab_list = _official_vocab_list(sources[:n_train], seed)
        assert len(vocab_list) == 14
        _same_up_to_renaming(train_ids + eval_ids, _official_rows(sources, vocab_list, 48))
    lengths = [len(_tfds_tokens(s)) for s in sources]
    assert min(lengths) < 48 < max(lengths)  # both padded and silently truncated examples are in the test


def _lra_rows(n: int, seed: int) -> list[tuple[str, int]]:
    sources, targets = generate_listops(n, min_length=20, max_length=120, seed=seed)
    return list(zip(sources, targets, strict=True))


def test_official_and_fixed_formulations_on_lra_tsv_files(tmp_path: Path) -> None:
    hand_written = [
        ("( ( ( [MAX 4 ) 3 ) ] )", 4),
        ("( ( ( ( [MIN ( ( ( [SM 6 ) 7 ) ] ) ) 2 ) 8 ) ] )", 2),
        ("( ( ( ( ( [MED 1 ) 2 ) 3 ) 4 ) ] )", 2),
    ]
    train, val, test = _lra_rows(20, 1) + hand_written, hand_written + _lra_rows(6, 2), _lra_rows(5, 3)
    _write_tsv(tmp_path / "basic_train.tsv", train)
    _write_tsv(tmp_path / "basic_val.tsv", val)
    _write_tsv(tmp_path / "basic_test.tsv", test)
    official = listops(data_dir=str(tmp_path), max_tokens=64, formulation="official", eval_split="validation")
    assert official.eval[:]["labels"].tolist() == [t for _, t in val]  # basic_val.tsv, not basic_test.tsv
    assert official.eval[:]["input_ids"].tolist() == _official_rows([s for s, _ in val], OFFICIAL_ORDER, 64)
    assert official.train[:]["input_ids"].tolist() == _official_rows([s for s, _ in train], OFFICIAL_ORDER, 64)
    assert official.eval[0]["input_ids"][:3].tolist() == [11, 5, 4] and not official.eval[0]["input_ids"][3:].any()
    for alias in ("val", "valid"):
        again = listops(data_dir=str(tmp_path), max_tokens=64, formulation="official", eval_split=alias)
        assert torch.equal(again.eval[:]["input_ids"], official.eval[:]["input_ids"])

    # Rothermel et al.'s fixes: ']' kept (LRA's bracketed operator tokens), nothing cut without being asked.
    fixed_vocab = {**{str(d): d + 1 for d in range(10)}, "[MAX": 11, "[MIN": 12, "[MED": 13, "[SM": 14, "]": 15}

    def fixed_row(source: str, length: int) -> list[int]:
        ids = [fixed_vocab[tok] for tok in re.findall(r"\[\w+|\w+|\]", source)]
        return ids + [0] * (length - len(ids))

    longest = max(len(re.findall(r"\[\w+|\w+|\]", s)) for s, _ in train + val)
    fixed = listops(data_dir=str(tmp_path), max_tokens=longest + 3, formulation="fixed", eval_split="val")
    assert fixed.spec.input_vocab_size == 16 and fixed.spec.max_tokens == longest + 3
    assert "attention_mask" not in fixed.train.column_names
    assert fixed.eval[:]["input_ids"].tolist() == [fixed_row(s, longest + 3) for s, _ in val]
    assert fixed.eval[0]["input_ids"][:4].tolist() == [11, 5, 4, 15]
    with pytest.raises(ValueError, match=rf"longest sequence has {longest} tokens, more than max_tokens=40"):
        listops(data_dir=str(tmp_path), max_tokens=40, formulation="fixed", eval_split="val")
    cut = listops(data_dir=str(tmp_path), max_tokens=40, formulation="fixed", length_policy="truncate")
    assert cut.train[:]["input_ids"].tolist() == [fixed_row(s, 200)[:40] for s, _ in train]


def test_drop_policy_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    train, val = _lra_rows(30, 4), _lra_rows(10, 5)
    _write_tsv(tmp_path / "basic_train.tsv", train)
    _write_tsv(tmp_path / "basic_val.tsv", val)
    limit = 60

    def length(source: str) -> int:
        return len(re.findall(r"\[\w+|\w+|\]", source))

    kept_train = [(s, t) for s, t in train if length(s) <= limit]
    kept_val = [(s, t) for s, t in val if length(s) <= limit]
    assert 0 < len(kept_train) < len(train) and 0 < len(kept_val) < len(val)
    with pytest.warns(UserWarning) as caught:
        data = listops(
            data_dir=str(tmp_path), max_tokens=limit, formulation="fixed", length_policy="drop", eval_split="val"
        )
    messages = [str(w.message) for w in caught]
    assert f"listops: left out {len(train) - len(kept_train)} of {len(train)} train examples" in messages[0]
    assert f"left out {len(val) - len(kept_val)} of {len(val)} eval examples longer than max_tokens=60" in messages[1]
    assert data.train[:]["labels"].tolist() == [t for _, t in kept_train]
    assert data.eval[:]["labels"].tolist() == [t for _, t in kept_val]
    assert data.spec.max_tokens == limit and data.train[:]["input_ids"].shape == (len(kept_train), limit)
    with pytest.warns(UserWarning, match="left out"):  # ']' dropped: fewer tokens, fewer examples left out
        official = listops(
            data_dir=str(tmp_path), max_tokens=limit, formulation="official", length_policy="drop", eval_split="val"
        )
    assert len(official.train) >= len(kept_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        listops(data_dir=str(tmp_path), max_tokens=500, formulation="fixed", length_policy="drop", eval_split="val")
    with pytest.raises(
        ValueError, match=r"Every one of the 30 train examples of 'listops' is longer than max_tokens=3"
    ):
        listops(data_dir=str(tmp_path), max_tokens=3, formulation="fixed", length_policy="drop", eval_split="val")


def test_default_formulation_is_unchanged_and_masked() -> None:
    data = listops(num_train=10, num_eval=4, max_tokens=64, seed=0)
    assert data.spec.input_vocab_size == 16 and "attention_mask" in data.train.column_names
    assert data.spec.max_tokens < 64  # padded to the longest, not to max_tokens
    no_closing = listops(num_train=10, num_eval=4, max_tokens=64, seed=0, keep_closing=False)
    assert no_closing.spec.input_vocab_size == 16 and not (no_closing.train[:]["input_ids"] == VOCAB["]"]).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formulation": "lra"}, r"formulation must be one of \('default', 'official', 'fixed'\), got 'lra'"),
        ({"formulation": "official", "keep_closing": True}, "keep_closing=True contradicts formulation='official'"),
        ({"formulation": "fixed", "keep_closing": False}, "keep_closing=False contradicts formulation='fixed'"),
        ({"length_policy": "cut"}, r"length_policy must be one of \('error', 'truncate', 'drop'\), got 'cut'"),
        ({"length_policy": "drop", "truncation": True}, "truncation=True contradicts length_policy='drop'"),
        ({"eval_split": "train"}, "eval_split must be 'test' or 'validation'"),
    ],
)
def test_formulation_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        listops(num_train=4, num_eval=2, max_tokens=32, **kwargs)


def test_fixed_length_input_is_read_at_the_last_position(tmp_path: Path) -> None:
    data = listops(num_train=8, num_eval=4, max_tokens=32, min_length=5, max_length=20, formulation="official")
    batch = next(iter(DataLoader(data.train, batch_size=4)))
    assert set(batch) == {"input_ids", "labels"} and (batch["input_ids"][:, -1] == 0).all()  # the last one is a pad
    for family in ("gpt2", "bert"):
        model = build_model(data.spec, save_tiny_backbone(tmp_path / family, family=family, positions=64), seed=0)
        model.eval()
        out = model(input_ids=batch["input_ids"])
        head = next(m for m in model.modules() if isinstance(m, FPTOutputLayer))
        linear = head.fpt_output["default"]
        expected = linear(out.last_hidden_state[:, -1])
        assert torch.allclose(out.logits, expected, atol=1e-6)
        # The default formulation's mask reads the last real token instead.
        mask = (batch["input_ids"] != 0).long()
        masked = model(input_ids=batch["input_ids"], attention_mask=mask)
        last = mask.sum(1) - 1
        assert torch.allclose(masked.logits, linear(masked.last_hidden_state[torch.arange(4), last]), atol=1e-6)
        assert not torch.allclose(masked.logits, out.logits)


@pytest.mark.slow
def test_recipe_trains_on_the_official_formulation(tmp_path: Path) -> None:
    _write_tsv(tmp_path / "basic_train.tsv", _lra_rows(16, 6))
    _write_tsv(tmp_path / "basic_val.tsv", _lra_rows(8, 7))  # no basic_test.tsv: not needed for validation
    model = save_tiny_backbone(tmp_path / "gpt2", family="gpt2", positions=64)
    data = ["--data-dir", str(tmp_path), "--formulation", "official", "--max-tokens", "64", "--eval-split", "val"]
    metrics = load_recipe("listops").main([*quick_args(model, tmp_path / "run"), *data])
    assert metrics["step"] == 3
    task = listops(data_dir=str(tmp_path), max_tokens=64, formulation="official", eval_split="val")
    assert_adapter_reloads(tmp_path / "run", model, task, metrics)
    with pytest.raises(SystemExit, match=r"^2$") as exit_info:
        load_recipe("listops").main([*quick_args(model, tmp_path / "bad"), "--truncation", "--length-policy", "drop"])
    assert exit_info.value.code == 2
