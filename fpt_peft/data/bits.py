"""The paper's generated bit tasks: bit XOR and bit memory (numpy, deterministic per seed).

Bits are fed as +-1 floats cut into patches of ``patch_size`` (one token per patch); the model predicts
each bit of the answer as one of 2 classes (0/1) from the last ``n_bits / patch_size`` tokens. The
paper samples fresh batches at every step; here a finite set of ``num_train`` examples is drawn, so use
a large ``num_train`` for paper-like runs. Train and eval come from independent streams spawned from
``seed``.
"""

from __future__ import annotations

import numpy as np

from ._common import check_int, continuous_dataset
from .spec import TaskData, TaskSpec


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


def _xor_split(rng: np.random.Generator, n: int, n_bits: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    strings = _signs(rng, (n, 2, n_bits))
    labels = ((strings[:, 0] > 0) ^ (strings[:, 1] > 0)).astype(np.int64)
    return strings.reshape(n, 2 * n_bits // patch_size, patch_size), labels


def bit_xor(num_train: int, num_eval: int, n_bits: int = 5, patch_size: int = 5, seed: int = 0) -> TaskData:
    """Bit XOR: two random +-1 strings of ``n_bits``; predict their element-wise XOR as 0/1 per bit.

    Inputs: ``inputs_embeds`` of shape ``(2 * n_bits / patch_size, patch_size)`` (the first string's
    patches, then the second's). Labels: int64 ``(n_bits,)``. The paper uses n_bits=5, patch_size=5.
    """
    out_tokens = _check_patches(n_bits, patch_size)
    check_int("num_train", num_train)
    check_int("num_eval", num_eval)
    train_rng, eval_rng = _rngs(seed)
    spec = TaskSpec(
        name="bit_xor",
        input_dim=patch_size,
        num_classes=2,
        output_tokens=out_tokens,
        values_per_token=patch_size,
        max_tokens=2 * out_tokens,
        metric="per_bit_accuracy",
    )
    train = continuous_dataset(*_xor_split(train_rng, num_train, n_bits, patch_size))
    eval_ = continuous_dataset(*_xor_split(eval_rng, num_eval, n_bits, patch_size))
    return TaskData(spec=spec, train=train, eval=eval_)


def _memory_split(
    rng: np.random.Generator, n: int, n_strings: int, n_bits: int, patch_size: int, mask_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    strings = _signs(rng, (n, n_strings, n_bits))
    chosen = strings[np.arange(n), rng.integers(0, n_strings, size=n)]
    query = np.where(rng.random((n, n_bits)) < mask_prob, np.float32(0), chosen)
    inputs = np.concatenate([strings, query[:, None]], axis=1)
    labels = (chosen > 0).astype(np.int64)
    return inputs.reshape(n, (n_strings + 1) * n_bits // patch_size, patch_size), labels


def bit_memory(
    num_train: int,
    num_eval: int,
    n_strings: int = 5,
    n_bits: int = 1000,
    patch_size: int = 50,
    mask_prob: float = 0.5,
    seed: int = 0,
) -> TaskData:
    """Bit memory: ``n_strings`` random +-1 strings, then one of them with bits masked to 0.

    Each bit of the copy is masked with probability ``mask_prob``; the task is to recall the chosen string
    (labels: int64 ``(n_bits,)``, 1 for +1, 0 for -1) from the last ``n_bits / patch_size`` tokens (the
    masked copy). Inputs: ``inputs_embeds`` of shape ``((n_strings + 1) * n_bits / patch_size,
    patch_size)``. Defaults are the paper's (5 strings of 1000 bits, patches of 50: 120 tokens).
    """
    out_tokens = _check_patches(n_bits, patch_size)
    check_int("num_train", num_train)
    check_int("num_eval", num_eval)
    check_int("n_strings", n_strings)
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob!r}.")
    train_rng, eval_rng = _rngs(seed)
    spec = TaskSpec(
        name="bit_memory",
        input_dim=patch_size,
        num_classes=2,
        output_tokens=out_tokens,
        values_per_token=patch_size,
        max_tokens=(n_strings + 1) * out_tokens,
        metric="per_bit_accuracy",
    )
    args = (n_strings, n_bits, patch_size, mask_prob)
    train = continuous_dataset(*_memory_split(train_rng, num_train, *args))
    eval_ = continuous_dataset(*_memory_split(eval_rng, num_eval, *args))
    return TaskData(spec=spec, train=train, eval=eval_)
