"""LRA ListOps: nested MAX / MIN / MED / SM expressions over digits, 10 classes.

The grammar mirrors Long Range Arena's generator (``lra_benchmarks/data/listops.py``): an operand is a
digit 0-9 or, with probability 0.25 while the depth is below ``max_depth``, an operator applied to 2 to
``max_args`` operands; MED is the median floored to an int, SM the sum mod 10. Sources are written in
LRA's text format, e.g. ``( ( ( [MAX 4 ) 3 ) ] )``; the parentheses carry no information and are
dropped by :func:`encode`.

Vocabulary (16 ids): 0 = pad, 1-10 = digits 0-9, 11 ``[MAX``, 12 ``[MIN``, 13 ``[MED``, 14 ``[SM``,
15 ``]``.

Three formulations (the ``formulation`` argument of :func:`listops`):

- ``"default"``: the vocabulary above, padded to the longest sequence of the data, with an ``attention_mask``; the
  output layer reads the last real token.
- ``"official"``: the official FPT code's loader (``universal_computation/datasets/helpers/listops.py``, taken from
  LRA's input pipeline). Its tokenizer, ``tfds.deprecated.text.Tokenizer()``, splits on the regex ``\\W+`` and keeps
  only the alphanumeric pieces: ``[MAX`` becomes ``MAX`` and ``]`` vanishes. The 14 tokens left get ids 1-14
  (:data:`OFFICIAL_VOCAB`, 15 ids with pad 0, the official ``Embedding(15, ...)``). Every sequence is cut to its
  first ``max_tokens`` tokens (512) and padded with 0 to exactly that length; there is no attention mask, so the
  output layer reads the last position, padding or not (``x[:, -1]`` in ``fpt.py``).
- ``"fixed"``: the official formulation with the two loader bugs Rothermel et al. (2021, arXiv 2107.12460) reported
  fixed: ``]`` is kept (16 ids as in the default), so that an expression can be parsed again, and sequences longer
  than ``max_tokens`` are not cut silently (LRA's are 500-2000 tokens; the official cut to the first 512 leaves most
  of them unanswerable): they raise unless ``length_policy`` says ``"drop"`` (keep whole expressions only) or
  ``"truncate"`` (cut knowingly).

The official code numbers its 14 tokens in the iteration order of a Python ``set`` built from the training data,
which changes from process to process with string hashing (``PYTHONHASHSEED``); its ids are therefore a run-dependent
permutation of ours. With a freshly initialised embedding (i.i.d. rows) any fixed order trains the same model.
"""

from __future__ import annotations

import os
import random
import re

import datasets

from ._common import check_int, drop_longer, eval_split_name, fit_lengths, resolve_length_policy, symbolic_dataset
from .spec import TaskData, TaskSpec

MAX, MIN, MED, SUM_MOD, END = "[MAX", "[MIN", "[MED", "[SM", "]"
OPERATORS = (MAX, MIN, MED, SUM_MOD)
VALUE_P = 0.25  # LRA's probability that a node below max_depth is an operator
PAD_ID = 0
VOCAB: dict[str, int] = {"<pad>": PAD_ID, **{str(d): d + 1 for d in range(10)}}
VOCAB.update({tok: 11 + i for i, tok in enumerate((*OPERATORS, END))})
OFFICIAL_VOCAB: dict[str, int] = {"<pad>": PAD_ID, **{str(d): d + 1 for d in range(10)}}
OFFICIAL_VOCAB.update({op.lstrip("["): 11 + i for i, op in enumerate(OPERATORS)})
"""The official formulation's 15 ids: pad, the digits, ``MAX``, ``MIN``, ``MED``, ``SM`` (no ``]``)."""
NUM_CLASSES = 10
FORMULATIONS = ("default", "official", "fixed")
OFFICIAL_MAX_TOKENS = 512
"""The official loader's ``max_length``: every sequence is cut and padded to it."""
_NON_WORD = re.compile(r"\W+")  # tfds.deprecated.text's ALPHANUM_REGEX


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


def encode_official(source: str) -> list[int]:
    """Token ids of a ListOps source as the official FPT loader makes them (the tfds tokenizer, ``]`` dropped).

    The source is split on runs of non-word characters (regex ``\\W+``) and the empty pieces dropped, exactly as
    ``tfds.deprecated.text.Tokenizer`` does; the pieces map through :data:`OFFICIAL_VOCAB`. A piece outside it (the
    official encoder's out-of-vocabulary id 15, beyond its 15-row embedding) raises a ValueError.
    """
    ids = []
    for tok in _NON_WORD.split(source):
        if not tok:
            continue
        if tok not in OFFICIAL_VOCAB or tok == "<pad>":
            raise ValueError(
                f"Unknown ListOps token {tok!r} for the official tokenizer; known: {list(OFFICIAL_VOCAB)[1:]}."
            )
        ids.append(OFFICIAL_VOCAB[tok])
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
        "eval": os.path.join(data_dir, f"basic_{'test' if eval_split == 'test' else 'val'}.tsv"),
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
    max_tokens: int = OFFICIAL_MAX_TOKENS,
    seed: int = 0,
    data_dir: str | None = None,
    truncation: bool = False,
    eval_split: str = "test",
    keep_closing: bool | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    formulation: str = "default",
    length_policy: str | None = None,
) -> TaskData:
    """ListOps as a symbolic task: right-padded ``input_ids`` (with an ``attention_mask`` by default), labels 0-9.

    With ``data_dir`` set, LRA's ``basic_train.tsv`` and the evaluation file are loaded: ``basic_test.tsv``, or
    ``basic_val.tsv`` for ``eval_split="validation"`` (or ``"val"``, ``"valid"``; the official FPT code evaluates on
    it); ``num_train``/``num_eval``/``seed``/lengths are then ignored. Otherwise expressions are generated offline
    with lengths in ``(min_length, max_length)``, by default ``(max_tokens // 2, max_tokens + 1)`` so that every
    expression fits whole (LRA's are 500-2000 tokens long); ``eval_split`` then only names the held-out draw.

    ``formulation`` is ``"default"``, ``"official"`` or ``"fixed"`` (see the module docstring): the official two
    pad every sequence to exactly ``max_tokens`` without an attention mask, so that the output layer reads the last
    position as the official code does (``max_tokens``: 512 in the official code).
    ``keep_closing`` (default: the formulation's choice) drops ``]`` from the default vocabulary when False.

    ``length_policy`` decides about sequences longer than ``max_tokens``: ``"error"`` (a ValueError), ``"truncate"``
    (keep the first ``max_tokens`` tokens) or ``"drop"`` (leave those examples out of both splits, with a warning
    that counts them). Default: ``"truncate"`` for ``"official"`` (the official loader's ``[:512]``), else
    ``"error"``; ``truncation=True`` is the older spelling of ``"truncate"``. Without a fixed length the examples
    are padded to the longest (possibly truncated) sequence of the two splits, which is ``spec.max_tokens``.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}.")
    official = formulation == "official"
    check_int("max_tokens", max_tokens)
    policy = resolve_length_policy(length_policy, truncation, default="truncate" if official else "error")
    if keep_closing is None:
        keep_closing = not official
    elif formulation != "default" and keep_closing == official:
        fix = "formulation='fixed' keeps it" if official else "formulation='official' drops it"
        raise ValueError(
            f"keep_closing={keep_closing} contradicts formulation={formulation!r}, which "
            f"{'drops' if official else 'keeps'} ']'; {fix}."
        )
    if data_dir is not None:
        train_src, train_y, eval_src, eval_y = _read_tsv(data_dir, eval_split_name(eval_split))
    else:
        eval_split_name(eval_split)
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
    if official:
        train_ids = [encode_official(s) for s in train_src]
        eval_ids = [encode_official(s) for s in eval_src]
    else:
        train_ids = [encode(s, keep_closing) for s in train_src]
        eval_ids = [encode(s, keep_closing) for s in eval_src]
    if policy == "drop":
        train_ids, train_y = drop_longer(train_ids, train_y, max_tokens, "train", "listops")
        eval_ids, eval_y = drop_longer(eval_ids, eval_y, max_tokens, "eval", "listops")
    train_ids, eval_ids, length = fit_lengths(train_ids, eval_ids, max_tokens, policy == "truncate")
    fixed_length = formulation != "default"
    if fixed_length:
        length = max_tokens
    spec = TaskSpec(
        name="listops",
        input_vocab_size=len(OFFICIAL_VOCAB if official else VOCAB),
        num_classes=NUM_CLASSES,
        pad_token_id=PAD_ID,
        max_tokens=length,
        metric="accuracy",
    )
    return TaskData(
        spec=spec,
        train=symbolic_dataset(train_ids, train_y, length, attention_mask=not fixed_length),
        eval=symbolic_dataset(eval_ids, eval_y, length, attention_mask=not fixed_length),
    )
