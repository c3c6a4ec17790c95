"""The paper's generated bit tasks: bit XOR and bit memory (numpy, deterministic per seed).

Bits are cut into patches of ``patch_size`` (one token per patch), the strings one after the other; the model
predicts each bit of the answer as one of 2 classes (0/1) from the last ``n_bits / patch_size`` tokens. This is the
official code's layout exactly: its ``(batch, strings, n_bits)`` array reshaped to ``(batch, strings * n_bits /
patch_size, patch_size)``, its output read from the last ``n_bits / patch_size`` tokens and reshaped to ``(batch,
n_bits, 2)``.

Two ways to draw the training data:

- ``stream=False`` (default): a finite set of ``num_train`` examples (a ``datasets.Dataset``), so use a large
  ``num_train`` for paper-like runs.
- ``stream=True``: the official formulation, a fresh random batch at every step: the train split is a
  :class:`BitStream`, an endless ``torch.utils.data.IterableDataset`` whose n-th example is a pure function of
  ``(seed, n)``.

The eval split is always a finite set of ``num_eval`` examples (the official code evaluates on fresh batches of the
same distribution; a fixed set makes evaluations comparable). Train and eval examples come from independent streams
derived from ``seed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ._common import check_int, continuous_dataset
from .spec import TaskData, TaskSpec

BIT_VALUES = ("pm1", "01")  # bits fed as -1/+1 (bit memory, the default) or as 0/1 (the official bit XOR)
_TRAIN, _EVAL, _VALIDATION = 0, 1, 2  # stream ids of the per-example generators


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    train_seq, eval_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train_seq), np.random.default_rng(eval_seq)


def _check_patches(n_bits: int, patch_size: int) -> int:
    check_int("n_bits", n_bits)
    check_int("patch_size", patch_size)
    if n_bits % patch_size:
        raise ValueError(f"n_bits ({n_bits}) must be divisible by patch_size ({patch_size}).")
    return n_bits // patch_size


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float32) * 2 - 1


@dataclass(frozen=True)
class XorExamples:
    """Bit XOR examples: ``n_strings`` random strings of ``n_bits``; the answer is their element-wise XOR.

    Called with a generator and a count, returns inputs ``(count, n_strings * n_bits / patch_size, patch_size)``
    (float32, bits as ``values``) and labels ``(count, n_bits)`` (int64, 0/1).
    """

    n_bits: int
    patch_size: int
    n_strings: int = 2
    values: str = "pm1"

    def __call__(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``count`` examples from ``rng``."""
        strings = _signs(rng, (count, self.n_strings, self.n_bits))
        labels = np.logical_xor.reduce(strings > 0, axis=1).astype(np.int64)
        if self.values == "01":
            strings = (strings + 1) / 2
        tokens = self.n_strings * self.n_bits // self.patch_size
        return strings.reshape(count, tokens, self.patch_size), labels


@dataclass(frozen=True)
class MemoryExamples:
    """Bit memory examples: ``n_strings`` random +-1 strings, then one of them with each bit masked (set to 0) with
    probability ``mask_prob``; the answer is the chosen string (int64 labels: 1 for +1, 0 for -1).

    Called with a generator and a count, returns inputs ``(count, (n_strings + 1) * n_bits / patch_size,
    patch_size)`` and labels ``(count, n_bits)``.
    """

    n_strings: int
    n_bits: int
    patch_size: int
    mask_prob: float = 0.5

    def __call__(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``count`` examples from ``rng``."""
        strings = _signs(rng, (count, self.n_strings, self.n_bits))
        chosen = strings[np.arange(count), rng.integers(0, self.n_strings, size=count)]
        query = np.where(rng.random((count, self.n_bits)) < self.mask_prob, np.float32(0), chosen)
        inputs = np.concatenate([strings, query[:, None]], axis=1)
        labels = (chosen > 0).astype(np.int64)
        tokens = (self.n_strings + 1) * self.n_bits // self.patch_size
        return inputs.reshape(count, tokens, self.patch_size), labels


Examples = XorExamples | MemoryExamples


def example_rng(seed: int, index: int, stream: int = _TRAIN) -> np.random.Generator:
    """The generator of example ``index`` of a :class:`BitStream` of ``seed`` (``stream``: 0 train, 1 eval, 2
    validation)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


@dataclass(frozen=True)
class BitStream(IterableDataset):
    """An endless stream of bit-task examples, a fresh one every time: the official code's "new batch every step".

    Example ``n`` of the stream is drawn by ``examples`` from its own generator, :func:`example_rng` ``(seed, n)``,
    so the stream is a pure function of ``seed``: the same in every process and run, and resumable without replaying
    anything. Each item is a dict in the schema of the finite datasets: ``inputs_embeds`` (float32 tensor ``(tokens,
    patch_size)``) and ``labels`` (int64 tensor ``(n_bits,)``), so a ``DataLoader`` with the default collate batches
    it. Use :meth:`for_loader` to get the copy a training loop iterates.

    The stream is cut into blocks of ``block_size`` consecutive examples. This consumer's ``k``-th block (counting
    from 0) is the stream's block ``(start + k) * num_shards + shard_index``; ``DataLoader`` workers take every
    ``num_workers``-th block of it (``torch.utils.data.get_worker_info``), so no two workers, and no two shards,
    ever yield the same example.
    """

    examples: Examples
    seed: int = 0
    block_size: int = 1
    start: int = 0
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self) -> None:
        check_int("seed", self.seed, minimum=0)
        check_int("block_size", self.block_size)
        check_int("start", self.start, minimum=0)
        check_int("num_shards", self.num_shards)
        check_int("shard_index", self.shard_index, minimum=0)
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}.")

    def for_loader(
        self, batch_size: int, skip_batches: int = 0, num_shards: int = 1, shard_index: int = 0
    ) -> BitStream:
        """The copy to wrap in ``DataLoader(stream, batch_size=batch_size, num_workers=any)``.

        Its batches are the same whatever the number of workers (one block per batch: a ``DataLoader`` takes batch
        ``j`` from worker ``j % num_workers``, and worker ``w`` yields blocks ``w, w + num_workers, ...``). It begins
        after ``skip_batches`` batches of this consumer, without drawing them (resuming after ``s`` optimizer steps
        with ``a`` gradient-accumulation steps: ``skip_batches = s * a``). With ``num_shards > 1`` (one shard per data
        parallel process, ``shard_index`` its rank) the shards are disjoint and together make up the one-process
        stream, block by block.
        """
        check_int("batch_size", batch_size)
        check_int("skip_batches", skip_batches, minimum=0)
        return dataclasses.replace(
            self, block_size=batch_size, start=skip_batches, num_shards=num_shards, shard_index=shard_index
        )

    def example(self, index: int) -> dict[str, torch.Tensor]:
        """Example ``index`` of the stream (the stream's own numbering, whatever the blocks and shards)."""
        inputs, labels = self.examples(example_rng(self.seed, index), 1)
        return {"inputs_embeds": torch.from_numpy(inputs[0]), "labels": torch.from_numpy(labels[0])}

    def held_out(self, size: int) -> datasets.Dataset:
        """``size`` examples of the stream's validation stream: fresh examples neither trained on nor evaluated."""
        check_int("size", size)
        return continuous_dataset(*_eval_split(self.examples, self.seed, size, _VALIDATION))

    def block_indices(self, k: int) -> range:
        """The stream indices of the examples in this consumer's block ``k`` (0-based, after ``start``)."""
        block = (self.start + k) * self.num_shards + self.shard_index
        return range(block * self.block_size, (block + 1) * self.block_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = worker
        while True:
            for index in self.block_indices(k):
                yield self.example(index)
            k += workers


def _eval_split(examples: Examples, seed: int, num_eval: int, stream: int = _EVAL) -> tuple[np.ndarray, np.ndarray]:
    """``num_eval`` examples drawn one by one as the stream draws them, from the eval (or ``stream``) stream of
    ``seed``."""
    drawn = [examples(example_rng(seed, i, stream), 1) for i in range(num_eval)]
    return np.concatenate([x for x, _ in drawn]), np.concatenate([y for _, y in drawn])


def _splits(
    examples: Examples, num_train: int | None, num_eval: int, seed: int, stream: bool
) -> tuple[datasets.Dataset | BitStream, datasets.Dataset]:
    """The train and eval splits: finite datasets, or an endless train stream and a finite eval set."""
    check_int("num_eval", num_eval)
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be a bool, got {type(stream).__name__} {stream!r}.")
    if stream:
        if num_train is not None:
            raise ValueError(
                f"num_train={num_train!r} sets the size of a finite training set; with stream=True the training data "
                "is an endless stream of fresh examples. Pass num_train=None."
            )
        check_int("seed", seed, minimum=0)
        return BitStream(examples, seed=seed), continuous_dataset(*_eval_split(examples, seed, num_eval))
    if num_train is None:
        raise ValueError("num_train is required (an int >= 1) unless stream=True.")
    check_int("num_train", num_train)
    train_rng, eval_rng = _rngs(seed)
    return (
        continuous_dataset(*examples(train_rng, num_train)),
        continuous_dataset(*examples(eval_rng, num_eval)),
    )


def bit_xor(
    num_train: int | None = None,
    num_eval: int = 1000,
    n_bits: int = 5,
    patch_size: int = 5,
    seed: int = 0,
    *,
    n_strings: int = 2,
    values: str = "pm1",
    stream: bool = False,
) -> TaskData:
    """Bit XOR: ``n_strings`` random strings of ``n_bits``; predict their element-wise XOR as 0/1 per bit.

    Inputs: ``inputs_embeds`` of shape ``(n_strings * n_bits / patch_size, patch_size)`` (the first string's
    patches, then the next's). Labels: int64 ``(n_bits,)``. ``values``: bits fed as ``"pm1"`` (-1/+1, default) or
    ``"01"`` (0/1, as the official code). ``stream=True``: a fresh example every time (``num_train`` must be None).
    The official set-up: n_bits=5, patch_size=5, n_strings=2, values="01", stream=True.
    """
    out_tokens = _check_patches(n_bits, patch_size)
    check_int("n_strings", n_strings)
    if values not in BIT_VALUES:
        raise ValueError(f"values must be one of {list(BIT_VALUES)}, got {values!r}.")
    spec = TaskSpec(
        name="bit_xor",
        input_dim=patch_size,
        num_classes=2,
        output_tokens=out_tokens,
        values_per_token=patch_size,
        max_tokens=n_strings * out_tokens,
        metric="per_bit_accuracy",
    )
    train, eval_ = _splits(XorExamples(n_bits, patch_size, n_strings, values), num_train, num_eval, seed, stream)
    return TaskData(spec=spec, train=train, eval=eval_)


def bit_memory(
    num_train: int | None = None,
    num_eval: int = 1000,
    n_strings: int = 5,
    n_bits: int = 1000,
    patch_size: int = 50,
    mask_prob: float = 0.5,
    seed: int = 0,
    *,
    stream: bool = False,
) -> TaskData:
    """Bit memory: ``n_strings`` random +-1 strings, then one of them with bits masked to 0.

    Each bit of the copy is masked with probability ``mask_prob``; the task is to recall the chosen string
    (labels: int64 ``(n_bits,)``, 1 for +1, 0 for -1) from the last ``n_bits / patch_size`` tokens (the
    masked copy). Inputs: ``inputs_embeds`` of shape ``((n_strings + 1) * n_bits / patch_size,
    patch_size)``. Defaults are the paper's (5 strings of 1000 bits, patches of 50: 120 tokens); add
    ``stream=True`` (``num_train`` None) for the official fresh example every time.
    """
    out_tokens = _check_patches(n_bits, patch_size)
    check_int("n_strings", n_strings)
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob!r}.")
    spec = TaskSpec(
        name="bit_memory",
        input_dim=patch_size,
        num_classes=2,
        output_tokens=out_tokens,
        values_per_token=patch_size,
        max_tokens=(n_strings + 1) * out_tokens,
        metric="per_bit_accuracy",
    )
    examples = MemoryExamples(n_strings, n_bits, patch_size, mask_prob)
    train, eval_ = _splits(examples, num_train, num_eval, seed, stream)
    return TaskData(spec=spec, train=train, eval=eval_)
