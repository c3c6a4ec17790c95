"""TAPE remote homology (fold classification): protein sequence -> one of 1195 folds.

Vocabulary (27 ids): 0 = pad, 1-20 = the standard amino acids ``ACDEFGHIKLMNPQRSTVWY`` in that order,
21-25 = ``X`` (any), ``U`` (selenocysteine), ``B`` (D or N), ``Z`` (E or Q), ``O`` (pyrrolysine), and
26 = unknown (any other letter). Sequences are upper-cased before encoding.
"""

from __future__ import annotations

import numpy as np

from ._common import cap, check_columns, check_int, fit_lengths, load_splits, symbolic_dataset
from .spec import TaskData, TaskSpec

PAD_ID = 0
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
EXTRA_CODES = "XUBZO"
VOCAB: dict[str, int] = {"<pad>": PAD_ID, **{aa: i + 1 for i, aa in enumerate(AMINO_ACIDS + EXTRA_CODES)}}
UNK_ID = len(VOCAB)
VOCAB["<unk>"] = UNK_ID
NUM_FOLDS = 1195


def encode(seq: str) -> list[int]:
    """Token ids of a protein sequence (one per residue; unknown letters map to ``UNK_ID``)."""
    return [VOCAB.get(ch, UNK_ID) for ch in seq.upper()]


def homology(
    source: str = "proteinglm/fold_prediction",
    max_tokens: int = 1024,
    truncation: bool = False,
    num_train: int | None = None,
    num_eval: int | None = None,
    num_classes: int = NUM_FOLDS,
    eval_split: str = "test",
) -> TaskData:
    """Remote homology as a symbolic task: right-padded ``input_ids`` / ``attention_mask``, fold labels.

    ``source`` is a hub id or a local directory of parquet or csv files named by split (``train*``,
    ``valid*``/``validation*``, ``test*``) with columns ``seq`` (str) and ``label`` (int in
    ``[0, num_classes)``). ``eval_split`` is ``"test"`` or ``"validation"`` (the official FPT code
    evaluates on TAPE's validation split). Sequences longer than ``max_tokens`` raise a ValueError unless
    ``truncation=True`` (the official code drops them instead: 2.6% of TAPE's training set at 1024).
    ``num_train``/``num_eval`` keep the first examples of each split.
    """
    check_int("max_tokens", max_tokens)
    check_int("num_classes", num_classes)
    splits = load_splits(source, eval_split, formats=("parquet", "csv"))
    seqs: list[list[list[int]]] = []
    labels: list[list[int]] = []
    for split, limit, arg in zip(splits, (num_train, num_eval), ("num_train", "num_eval"), strict=True):
        check_columns(split, ["seq", "label"], source)
        split = cap(split, limit, arg)
        y = np.asarray(split["label"])
        if len(y) == 0:
            raise ValueError(f"The {arg[4:]} split of {source!r} is empty.")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"Column 'label' of {source!r} must hold ints, got dtype {y.dtype}.")
        out_of_range = y[(y < 0) | (y >= num_classes)]
        if out_of_range.size:
            raise ValueError(
                f"Labels must be in [0, num_classes={num_classes}); the {arg[4:]} split has "
                f"{out_of_range.size} outside it, e.g. {sorted(set(out_of_range.tolist()))[:5]}."
            )
        seqs.append([encode(s) for s in split["seq"]])
        labels.append(y.astype(np.int64).tolist())
    train_ids, eval_ids, length = fit_lengths(seqs[0], seqs[1], max_tokens, truncation)
    spec = TaskSpec(
        name="homology",
        input_vocab_size=len(VOCAB),
        num_classes=num_classes,
        pad_token_id=PAD_ID,
        max_tokens=length,
        metric="accuracy",
    )
    return TaskData(
        spec=spec,
        train=symbolic_dataset(train_ids, labels[0], length),
        eval=symbolic_dataset(eval_ids, labels[1], length),
        source=source,
    )
