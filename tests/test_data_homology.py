"""Remote homology: vocabulary, parquet/csv loading in the hub schema, and every error."""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from fpt_peft.data import homology
from fpt_peft.data.homology import AMINO_ACIDS, UNK_ID, VOCAB, encode


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


TRAIN = [("MKTAYIAK", 0), ("GAVLI", 1194), ("MXUBZOAC", 17), ("wcy", 5)]
VALID = [("PQRS", 3), ("MKV", 2)]
TEST = [("ACDEFGHIK", 1), ("LMNPQRSTVWY", 100), ("MM", 0)]


def _write(root: Path, fmt: str, splits: dict[str, list[tuple[str, int]]], columns=("seq", "label")) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        frame = pd.DataFrame(rows, columns=list(columns))
        if fmt == "parquet":
            frame.to_parquet(root / f"{name}.parquet")
        else:
            frame.to_csv(root / f"{name}.csv", index=False)
    return str(root)


def test_vocabulary_and_encode() -> None:
    assert VOCAB["<pad>"] == 0 and len(VOCAB) == 27 and UNK_ID == 26
    assert encode(AMINO_ACIDS) == list(range(1, 21))
    assert encode("XUBZO") == [21, 22, 23, 24, 25]
    assert encode("mkJ*") == [VOCAB["M"], VOCAB["K"], UNK_ID, UNK_ID]
    assert len(set(VOCAB.values())) == len(VOCAB)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_loads_local_split_files(tmp_path: Path, fmt: str) -> None:
    source = _write(tmp_path / "fold", fmt, {"train": TRAIN, "valid": VALID, "test": TEST})
    data = homology(source=source, max_tokens=32)
    spec = data.spec
    assert (spec.input_vocab_size, spec.pad_token_id, spec.num_classes) == (27, 0, 1195)
    assert spec.input_dim is None and spec.max_tokens == 11 and spec.metric == "accuracy"
    rows = data.train[:]
    assert rows["input_ids"].shape == (4, 11) and rows["input_ids"].dtype == torch.int64
    assert rows["labels"].tolist() == [y for _, y in TRAIN]
    for ids, mask, (seq, _) in zip(rows["input_ids"], rows["attention_mask"], TRAIN, strict=True):
        assert ids[: len(seq)].tolist() == encode(seq) and int(mask.sum()) == len(seq)
        assert ids[len(seq) :].eq(0).all()
    assert data.eval[:]["labels"].tolist() == [y for _, y in TEST]
    val = homology(source=source, max_tokens=32, eval_split="validation")
    assert val.eval[:]["labels"].tolist() == [y for _, y in VALID]
    capped = homology(source=source, max_tokens=32, num_train=2, num_eval=1, num_classes=2000)
    assert (len(capped.train), len(capped.eval), capped.spec.num_classes) == (2, 1, 2000)
    assert capped.spec.max_tokens == 9  # longest of the kept examples


def test_hub_layout_with_nested_split_files(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    _write(root / "data", "parquet", {"train-00000-of-00001": TRAIN, "validation-00000-of-00001": VALID})
    data = homology(source=str(root), max_tokens=32, eval_split="validation")
    assert data.eval[:]["labels"].tolist() == [y for _, y in VALID]


def test_truncation(tmp_path: Path) -> None:
    source = _write(tmp_path / "fold", "parquet", {"train": TRAIN, "test": TEST})
    with pytest.raises(ValueError, match=r"longest sequence has 11 tokens, more than max_tokens=8.*truncation=True"):
        homology(source=source, max_tokens=8)
    data = homology(source=source, max_tokens=8, truncation=True)
    assert data.spec.max_tokens == 8
    assert data.eval[1]["input_ids"].tolist() == encode(TEST[1][0])[:8]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="looks like a local path but does not exist"):
        homology(source=str(tmp_path / "nowhere"))
    renamed = _write(tmp_path / "renamed", "csv", {"train": TRAIN, "test": TEST}, columns=("sequence", "label"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['seq'\].*found \['sequence', 'label'\]"):
        homology(source=renamed)
    bad = _write(tmp_path / "bad", "parquet", {"train": [*TRAIN, ("MK", 1195)], "test": TEST})
    with pytest.raises(ValueError, match=r"Labels must be in \[0, num_classes=1195\).*e\.g\. \[1195\]"):
        homology(source=bad)
    negative = _write(tmp_path / "neg", "parquet", {"train": TRAIN, "test": [("MK", -1)]})
    with pytest.raises(ValueError, match=r"the eval split has 1 outside it, e\.g\. \[-1\]"):
        homology(source=negative)
    unnamed = _write(tmp_path / "unnamed", "parquet", {"part0": TRAIN})
    with pytest.raises(ValueError, match="none named for a split"):
        homology(source=unnamed)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No parquet or csv files found"):
        homology(source=str(empty))
    single = _write(tmp_path / "single", "parquet", {"train": TRAIN})
    with pytest.raises(ValueError, match="is a single file; pass the directory"):
        homology(source=str(Path(single) / "train.parquet"))
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        homology(source=single, max_tokens=0)
