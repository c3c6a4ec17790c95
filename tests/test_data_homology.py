"""Remote homology: vocabulary, parquet/csv loading in the hub schema, and every error."""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from fpt_peft.data import homology
from fpt_peft.data.homology import AMINO_ACIDS, TAPE_VOCAB, UNK_ID, VOCAB, encode, encode_tape

from .training_utils import assert_adapter_reloads, load_recipe, quick_args, save_tiny_backbone


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


# TAPE's IUPAC vocabulary (songlab-cal/tape, tape/tokenizers.py), written out; TAPETokenizer.encode(text) is
# [<cls>] + list(text) + [<sep>] through it, and RemoteHomologyDataset's collate_fn pads with 0.
TAPE_TOKENS = ["<pad>", "<mask>", "<cls>", "<sep>", "<unk>", "A", "B", "C", "D", "E", "F", "G", "H", "I", "K", "L"]
TAPE_TOKENS += ["M", "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z"]


def _tape_reference(seq: str) -> list[int]:
    return [2, *(TAPE_TOKENS.index(ch) for ch in seq), 3]


def test_tape_vocabulary_and_framing() -> None:
    assert {tok: i for i, tok in enumerate(TAPE_TOKENS)} == TAPE_VOCAB
    assert encode_tape("MKV") == [2, 16, 14, 25, 3]
    for seq, _ in TRAIN[:3] + VALID + TEST:
        assert encode_tape(seq) == _tape_reference(seq)
    assert encode_tape("wcy") == _tape_reference("WCY")  # upper-cased, as the default vocabulary does
    assert encode_tape("MJ*") == [2, 16, 4, 4, 3]  # TAPE raises on J and *; here they are <unk>
    assert encode_tape("") == [2, 3]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tape_vocabulary_task(tmp_path: Path, fmt: str) -> None:
    source = _write(tmp_path / "fold", fmt, {"train": TRAIN, "valid": VALID, "test": TEST})
    data = homology(source=source, max_tokens=32, vocabulary="tape")
    assert (data.spec.input_vocab_size, data.spec.pad_token_id, data.spec.max_tokens) == (30, 0, 13)
    rows = data.train[:]
    for ids, mask, (seq, _) in zip(rows["input_ids"], rows["attention_mask"], TRAIN, strict=True):
        expected = _tape_reference(seq.upper())
        assert ids.tolist() == expected + [0] * (13 - len(expected))
        assert int(mask.sum()) == len(seq) + 2 and ids[int(mask.sum()) - 1] == 3  # the last real token is <sep>


def _lengths(data: object, split: str) -> list[int]:
    return getattr(data, split)[:]["attention_mask"].sum(1).tolist()


def test_length_policies_drop_and_truncate(tmp_path: Path) -> None:
    source = _write(tmp_path / "fold", "parquet", {"train": TRAIN, "test": TEST})
    # TAPE framing: train lengths 10, 7, 10, 5 and test lengths 11, 13, 4; a limit of 8 keeps 2 and 1 of them.
    with pytest.warns(UserWarning) as caught:
        dropped = homology(source=source, max_tokens=8, vocabulary="tape", length_policy="drop")
    assert [str(w.message) for w in caught] == [
        "homology: left out 2 of 4 train examples longer than max_tokens=8 (length_policy='drop').",
        "homology: left out 2 of 3 eval examples longer than max_tokens=8 (length_policy='drop').",
    ]
    assert dropped.train[:]["labels"].tolist() == [1194, 5] and dropped.eval[:]["labels"].tolist() == [0]
    assert _lengths(dropped, "train") == [7, 5] and dropped.spec.max_tokens == 7  # padded to the longest kept
    assert dropped.train[0]["input_ids"].tolist() == _tape_reference("GAVLI")

    cut = homology(source=source, max_tokens=8, vocabulary="tape", length_policy="truncate")
    assert (len(cut.train), len(cut.eval), cut.spec.max_tokens) == (4, 3, 8)
    assert _lengths(cut, "train") == [8, 7, 8, 5]
    assert cut.train[0]["input_ids"].tolist() == [2, *_tape_reference("MKTAYIAK")[1:7], 3]  # <sep> kept at the end
    assert cut.eval[2]["input_ids"].tolist()[:4] == _tape_reference("MM")

    with pytest.warns(UserWarning) as caught:
        compact = homology(source=source, max_tokens=7, length_policy="drop")  # one id per residue
    assert [str(w.message)[:42] for w in caught] == [
        "homology: left out 2 of 4 train examples l",
        "homology: left out 2 of 3 eval examples lo",
    ]
    assert compact.train[:]["labels"].tolist() == [1194, 5] and len(compact.eval) == 1
    assert homology(source=source, max_tokens=7, truncation=True).spec.max_tokens == 7  # today's spelling
    with pytest.raises(ValueError, match=r"longest sequence has 13 tokens, more than max_tokens=8.*'drop'"):
        homology(source=source, max_tokens=8, vocabulary="tape")
    with pytest.raises(
        ValueError, match=r"Every one of the 4 train examples .* max_tokens=4 \(the shortest has 5 tokens\)"
    ):
        homology(source=source, max_tokens=4, vocabulary="tape", length_policy="drop")


def test_folder_without_test_files_evaluates_on_valid(tmp_path: Path) -> None:
    source = _write(tmp_path / "fold", "csv", {"train": TRAIN, "valid": VALID})
    for name in ("valid", "validation", "val"):
        data = homology(source=source, max_tokens=32, eval_split=name, vocabulary="tape")
        assert data.eval[:]["labels"].tolist() == [y for _, y in VALID]
        assert data.eval[0]["input_ids"].tolist()[:6] == _tape_reference("PQRS")
    with pytest.raises(
        ValueError, match=r"No 'test' split files under .*found csv files for \['train', 'validation'\]"
    ):
        homology(source=source, max_tokens=32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocabulary": "iupac"}, r"vocabulary must be one of \('compact', 'tape'\), got 'iupac'"),
        ({"length_policy": "skip"}, r"length_policy must be one of \('error', 'truncate', 'drop'\), got 'skip'"),
        ({"length_policy": "error", "truncation": True}, "truncation=True contradicts length_policy='error'"),
        ({"vocabulary": "tape", "max_tokens": 2}, "max_tokens must be an int >= 3"),
        ({"eval_split": "holdout"}, "eval_split must be 'test' or 'validation'"),
    ],
)
def test_option_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    source = _write(tmp_path / "fold", "parquet", {"train": TRAIN, "test": TEST})
    with pytest.raises(ValueError, match=match):
        homology(source=source, **kwargs)


@pytest.mark.slow
def test_recipe_official_setup_on_a_folder_without_test_files(tmp_path: Path) -> None:
    rows = [(seq * 3, label) for seq, label in TRAIN + TRAIN]  # lengths 9-24 residues
    source = _write(tmp_path / "fold", "parquet", {"train": rows, "valid": VALID + VALID})
    model = save_tiny_backbone(tmp_path / "gpt2", family="gpt2", positions=64)
    data = ["--source", source, "--max-tokens", "20", "--vocabulary", "tape", "--length-policy", "drop"]
    with pytest.warns(UserWarning, match="left out 4 of 8 train examples longer than max_tokens=20"):
        argv = [*quick_args(model, tmp_path / "run"), *data, "--eval-split", "valid", "--validation-fraction", "0"]
        metrics = load_recipe("homology").main(argv)
    assert metrics["step"] == 3
    with pytest.warns(UserWarning):
        task = homology(source=source, max_tokens=20, vocabulary="tape", length_policy="drop", eval_split="valid")
    assert (len(task.train), len(task.eval), task.spec.input_vocab_size) == (4, 4, 30)
    assert_adapter_reloads(tmp_path / "run", model, task, metrics)
    with pytest.raises(SystemExit, match=r"^2$") as exit_info:  # argparse-style: usage and one line, status 2
        load_recipe("homology").main([*quick_args(model, tmp_path / "bad"), *data, "--truncation"])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match=r"No 'test' split files .* Choose the evaluation split with eval_split"):
        load_recipe("homology").main([*quick_args(model, tmp_path / "bad"), *data])  # run_recipe: one line, status 2
