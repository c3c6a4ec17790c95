"""TAPE remote homology (fold classification): protein sequence -> one of 1195 folds.

Two vocabularies (the ``vocabulary`` argument of :func:`homology`):

- ``"compact"`` (default, 27 ids): 0 = pad, 1-20 = the standard amino acids ``ACDEFGHIKLMNPQRSTVWY`` in that order,
  21-25 = ``X`` (any), ``U`` (selenocysteine), ``B`` (D or N), ``Z`` (E or Q), ``O`` (pyrrolysine), and 26 = unknown
  (any other letter). One id per residue.
- ``"tape"`` (30 ids): TAPE's IUPAC vocabulary (``tape/tokenizers.py``, ``IUPAC_VOCAB``), which the official FPT code
  uses through TAPE's ``RemoteHomologyDataset``: 0 ``<pad>``, 1 ``<mask>``, 2 ``<cls>``, 3 ``<sep>``, 4 ``<unk>``,
  then the letters ``ABCDEFGHIKLMNOPQRSTUVWXYZ`` (no J) as 5-29. Each sequence is framed as ``<cls>`` residues
  ``<sep>`` (TAPE's ``encode``), so it takes two more tokens than it has residues. TAPE raises a KeyError on a
  letter outside its vocabulary; here it maps to ``<unk>``.

Sequences are upper-cased before encoding in both.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    cap,
    check_columns,
    check_int,
    drop_longer,
    fit_lengths,
    load_splits,
    resolve_length_policy,
    symbolic_dataset,
)
from .spec import TaskData, TaskSpec

PAD_ID = 0
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
EXTRA_CODES = "XUBZO"
VOCAB: dict[str, int] = {"<pad>": PAD_ID, **{aa: i + 1 for i, aa in enumerate(AMINO_ACIDS + EXTRA_CODES)}}
UNK_ID = len(VOCAB)
VOCAB["<unk>"] = UNK_ID
TAPE_VOCAB: dict[str, int] = {
    tok: i for i, tok in enumerate(["<pad>", "<mask>", "<cls>", "<sep>", "<unk>", *"ABCDEFGHIKLMNOPQRSTUVWXYZ"])
}
"""TAPE's IUPAC vocabulary, in TAPE's order."""
TAPE_CLS_ID, TAPE_SEP_ID, TAPE_UNK_ID = TAPE_VOCAB["<cls>"], TAPE_VOCAB["<sep>"], TAPE_VOCAB["<unk>"]
VOCABULARIES = ("compact", "tape")
NUM_FOLDS = 1195


def encode(seq: str) -> list[int]:
    """Token ids of a protein sequence (one per residue; unknown letters map to ``UNK_ID``)."""
    return [VOCAB.get(ch, UNK_ID) for ch in seq.upper()]


def encode_tape(seq: str) -> list[int]:
    """TAPE's token ids of a protein sequence: ``<cls>``, one id per residue (unknown: ``<unk>``), ``<sep>``."""
    residues = seq.upper()
    return [TAPE_CLS_ID, *(TAPE_VOCAB.get(ch, TAPE_UNK_ID) for ch in residues), TAPE_SEP_ID]


def _truncate_tape(ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Cut framed sequences longer than ``max_tokens`` to that many tokens, keeping ``<cls>`` and the closing
    ``<sep>``."""
    return [s if len(s) <= max_tokens else [*s[: max_tokens - 1], TAPE_SEP_ID] for s in ids]


def homology(
    source: str = "proteinglm/fold_prediction",
    max_tokens: int = 1024,
    truncation: bool = False,
    num_train: int | None = None,
    num_eval: int | None = None,
    num_classes: int = NUM_FOLDS,
    eval_split: str = "test",
    vocabulary: str = "compact",
    length_policy: str | None = None,
) -> TaskData:
    """Remote homology as a symbolic task: right-padded ``input_ids`` / ``attention_mask``, fold labels.

    ``source`` is a hub id or a local directory of parquet or csv files named by split (``train*``,
    ``valid*``/``validation*``, ``test*``) with columns ``seq`` (str) and ``label`` (int in
    ``[0, num_classes)``); a folder needs only the train files and those of ``eval_split``. ``eval_split`` is
    ``"test"`` or ``"validation"`` (or ``"valid"``, ``"val"``; the official FPT code evaluates on TAPE's ``valid``).
    ``vocabulary`` is ``"compact"`` or ``"tape"`` (TAPE's, with ``<cls>``/``<sep>``; see the module docstring).
    ``num_train``/``num_eval`` keep the first examples of each split.

    ``length_policy`` decides about sequences longer than ``max_tokens`` tokens (``<cls>``/``<sep>`` included):
    ``"error"`` (a ValueError; the default, ``truncation=True`` is the older spelling of ``"truncate"``),
    ``"truncate"`` (keep the first tokens; with TAPE's vocabulary the closing ``<sep>`` is kept) or ``"drop"``
    (leave those examples out of both splits, with a warning that counts them). The official code, with
    ``max_tokens=1024``, skips every batch whose longest sequence exceeds the limit, in training and in evaluation,
    which also skips the shorter sequences batched with it (TAPE batches by similar length, so few); ``"drop"``
    leaves out exactly the long examples. The official code's notes say 97.39% of sequences were kept and the
    paper's accuracies multiplied by 0.9739; here accuracy is over the kept evaluation examples.

    The output layer reads the last real token (``<sep>`` with TAPE's vocabulary). The official code passes no
    attention mask and reads the last position of a batch padded to its longest member, a padding token for the
    others; that depends on how examples are batched and is not reproduced.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}.")
    tape = vocabulary == "tape"
    check_int("max_tokens", max_tokens, minimum=3 if tape else 1)
    check_int("num_classes", num_classes)
    policy = resolve_length_policy(length_policy, truncation)
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
        seqs.append([(encode_tape if tape else encode)(s) for s in split["seq"]])
        labels.append(y.astype(np.int64).tolist())
    if policy == "drop":
        for i, name in enumerate(("train", "eval")):
            seqs[i], labels[i] = drop_longer(seqs[i], labels[i], max_tokens, name, "homology")
    elif policy == "truncate" and tape:
        seqs = [_truncate_tape(split_ids, max_tokens) for split_ids in seqs]
    train_ids, eval_ids, length = fit_lengths(seqs[0], seqs[1], max_tokens, policy == "truncate")
    spec = TaskSpec(
        name="homology",
        input_vocab_size=len(TAPE_VOCAB if tape else VOCAB),
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
