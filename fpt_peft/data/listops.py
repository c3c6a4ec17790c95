"""LRA ListOps: nested MAX / MIN / MED / SM expressions over digits, 10 classes.

The grammar mirrors Long Range Arena's generator (``lra_benchmarks/data/listops.py``): an operand is a
digit 0-9 or, with probability 0.25 while the depth is below ``max_depth``, an operator applied to 2 to
``max_args`` operands; MED is the median floored to an int, SM the sum mod 10. Sources are written in
LRA's text format, e.g. ``( ( ( [MAX 4 ) 3 ) ] )``; the parentheses carry no information and are
dropped by :func:`encode`.

Vocabulary (16 ids): 0 = pad, 1-10 = digits 0-9, 11 ``[MAX``, 12 ``[MIN``, 13 ``[MED``, 14 ``[SM``,
15 ``]``. Note: LRA's own tokenizer keeps only alphanumeric tokens, so it also drops ``]`` (the
official FPT code then embeds 15 symbols: pad + 14); pass ``keep_closing=False`` for that encoding.
"""

from __future__ import annotations

import os
import random

import datasets

from ._common import check_int, fit_lengths, symbolic_dataset
from .spec import TaskData, TaskSpec

MAX, MIN, MED, SUM_MOD, END = "[MAX", "[MIN", "[MED", "[SM", "]"
OPERATORS = (MAX, MIN, MED, SUM_MOD)
VALUE_P = 0.25  # LRA's probability that a node below max_depth is an operator
PAD_ID = 0
VOCAB: dict[str, int] = {"<pad>": PAD_ID, **{str(d): d + 1 for d in range(10)}}
VOCAB.update({tok: 11 + i for i, tok in enumerate((*OPERATORS, END))})
NUM_CLASSES = 10


def apply_operator(op: str, args: list[int]) -> int:
    """Value of ``op`` (``[MAX``, ``[MIN``, ``[MED``, ``[SM``) on the digits ``args``, as LRA computes it."""
    if not args:
        raise ValueError(f"Operator {op!r} needs at least one argument.")
    if op == MAX:
        return max(args)
    if op == MIN:
        return min(args)
    if op == MED:  # LRA: int(np.median(args)), the mean of the middle two floored for an even count
        ordered = sorted(args)
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2
    if op == SUM_MOD:
        return sum(args) % 10
    raise ValueError(f"Unknown ListOps operator {op!r}; expected one of {OPERATORS}.")


def _tokens(source: str) -> list[str]:
    return [tok for tok in source.split() if tok not in ("(", ")")]


def evaluate_listops(source: str) -> int:
    """Evaluate a ListOps expression (LRA text format, parentheses optional) to its digit value."""
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for tok in _tokens(source):
        if result is not None:
            raise ValueError(f"Trailing token {tok!r} after a complete expression in {source[:80]!r}.")
        if tok in OPERATORS:
            stack.append((tok, []))
            continue
        if tok == END:
            if not stack:
                raise ValueError(f"Unbalanced ']' in ListOps source {source[:80]!r}.")
            op, args = stack.pop()
            value = apply_operator(op, args)
        elif tok.isdigit() and len(tok) == 1:
            value = int(tok)
        else:
            raise ValueError(f"Unknown ListOps token {tok!r}; expected a digit, {OPERATORS} or ']'.")
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if result is None or stack:
        raise ValueError(f"Incomplete ListOps expression {source[:80]!r}.")
    return result


def encode(source: str, keep_closing: bool = True) -> list[int]:
    """Token ids of a ListOps source (parentheses dropped; ``]`` dropped too when ``keep_closing=False``)."""
    ids = []
    for tok in _tokens(source):
        if tok not in VOCAB or tok == "<pad>":
            raise ValueError(f"Unknown ListOps token {tok!r}; the vocabulary is {list(VOCAB)[1:]}.")
        if keep_closing or tok != END:
            ids.append(VOCAB[tok])
    return ids


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[str], budget: list[int]) -> None:
    """Append one random subtree's tokens (LRA text format) to ``out``; abort once ``budget`` is spent."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLong
    if depth >= max_depth or rng.random() > VALUE_P:
        out.append(str(rng.randrange(10)))
        return
    num_args = rng.randint(2, max_args)
    budget[0] -= 1  # the operator and its ']' count as two tokens
    out += ["("] * (num_args + 1)
    out.append(OPERATORS[rng.randrange(len(OPERATORS))])
    for _ in range(num_args):  # ( ( ( op a ) b ) c ) ... ] ): each argument closes one parenthesis
        _tree(rng, depth + 1, max_depth, max_args, out, budget)
        out.append(")")
    out += [END, ")"]


def generate_listops(
    num_examples: int,
    max_depth: int = 10,
    max_args: int = 10,
    max_length: int = 2000,
    min_length: int = 500,
    seed: int = 0,
) -> tuple[list[str], list[int]]:
    """Generate ``num_examples`` distinct ListOps expressions and their values with LRA's grammar.

    Like LRA, trees are drawn until their length (operators, digits and ``]``: the number of tokens
    :func:`encode` returns) satisfies ``min_length < length < max_length``; duplicates are skipped.
    LRA's defaults are max_depth=10, max_args=10, lengths in (500, 2000). Deterministic per ``seed``
    (Python's ``random.Random``, as LRA). Returns ``(sources, targets)``.
    """
    check_int("num_examples", num_examples)
    check_int("max_depth", max_depth)
    check_int("max_args", max_args, minimum=2)
    check_int("min_length", min_length, minimum=0)
    if max_length - min_length < 2:
        raise ValueError(
            f"Need min_length < length < max_length; got min_length={min_length}, max_length={max_length}."
        )
    rng = random.Random(seed)
    sources: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sources) < num_examples:
        attempts += 1
        if attempts > 1000 * num_examples + 100_000:
            raise RuntimeError(
                f"Only {len(sources)} of {num_examples} ListOps expressions with length in "
                f"({min_length}, {max_length}) after {attempts} draws; widen the length range."
            )
        out: list[str] = []
        budget = [max_length - 1]
        try:
            _tree(rng, 1, max_depth, max_args, out, budget)
        except _TooLong:
            continue
        text = " ".join(out)
        if max_length - 1 - budget[0] > min_length and text not in seen:
            seen.add(text)
            sources.append(text)
    return sources, [evaluate_listops(text) for text in sources]


def _read_tsv(data_dir: str, eval_split: str) -> tuple[list[str], list[int], list[str], list[int]]:
    """LRA's ``basic_train.tsv`` and ``basic_{test,val}.tsv`` (columns Source, Target) via ``datasets``."""
    files = {
        "train": os.path.join(data_dir, "basic_train.tsv"),
        "eval": os.path.join(data_dir, f"basic_{eval_split}.tsv"),
    }
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"LRA ListOps file(s) not found: {missing} (data_dir={data_dir!r}).")
    loaded = datasets.load_dataset("csv", data_files=files, delimiter="\t")
    out: list[list] = []
    for split in ("train", "eval"):
        ds = loaded[split]
        if not {"Source", "Target"} <= set(ds.column_names):
            raise ValueError(f"{files[split]!r} needs columns ['Source', 'Target'], found {ds.column_names}.")
        out += [list(ds["Source"]), [int(t) for t in ds["Target"]]]
    return out[0], out[1], out[2], out[3]


def listops(
    num_train: int = 2000,
    num_eval: int = 500,
    max_tokens: int = 512,
    seed: int = 0,
    data_dir: str | None = None,
    truncation: bool = False,
    eval_split: str = "test",
    keep_closing: bool = True,
    min_length: int | None = None,
    max_length: int | None = None,
) -> TaskData:
    """ListOps as a symbolic task: right-padded ``input_ids`` / ``attention_mask``, labels 0-9.

    With ``data_dir`` set, LRA's ``basic_train.tsv`` and ``basic_{eval_split}.tsv`` (``eval_split`` is
    ``"test"`` or ``"val"``) are loaded and ``num_train``/``num_eval``/``seed``/lengths are ignored.
    Otherwise expressions are generated offline with lengths in ``(min_length, max_length)``, by default
    ``(max_tokens // 2, max_tokens + 1)`` so that every expression fits whole (LRA's are 500-2000 tokens
    long; the official FPT code truncates them to 512: ``truncation=True``). Sequences longer than
    ``max_tokens`` raise a ValueError unless ``truncation=True``. All examples are padded to the longest
    (possibly truncated) sequence of the two splits, which is ``spec.max_tokens``.
    """
    check_int("max_tokens", max_tokens)
    if data_dir is not None:
        if eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}.")
        train_src, train_y, eval_src, eval_y = _read_tsv(data_dir, eval_split)
    else:
        check_int("num_train", num_train)
        check_int("num_eval", num_eval)
        lo = max_tokens // 2 if min_length is None else min_length
        hi = max_tokens + 1 if max_length is None else max_length
        sources, targets = generate_listops(num_train + num_eval, max_length=hi, min_length=lo, seed=seed)
        train_src, train_y = sources[:num_train], targets[:num_train]
        eval_src, eval_y = sources[num_train:], targets[num_train:]
    bad = sorted({t for t in train_y + eval_y if not 0 <= t < NUM_CLASSES})
    if bad:
        raise ValueError(f"ListOps targets must be in [0, {NUM_CLASSES}), found {bad[:10]}.")
    train_ids = [encode(s, keep_closing) for s in train_src]
    eval_ids = [encode(s, keep_closing) for s in eval_src]
    train_ids, eval_ids, length = fit_lengths(train_ids, eval_ids, max_tokens, truncation)
    spec = TaskSpec(
        name="listops",
        input_vocab_size=len(VOCAB),
        num_classes=NUM_CLASSES,
        pad_token_id=PAD_ID,
        max_tokens=length,
        metric="accuracy",
    )
    return TaskData(
        spec=spec,
        train=symbolic_dataset(train_ids, train_y, length),
        eval=symbolic_dataset(eval_ids, eval_y, length),
    )
