"""Bit XOR and bit memory: shapes, determinism, and labels that really answer the task."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from fpt_peft.data import bit_memory, bit_xor


def _all(ds) -> dict[str, torch.Tensor]:
    return ds[:]


def test_bit_xor_spec_shapes_and_collation() -> None:
    data = bit_xor(32, 8, n_bits=10, patch_size=5, seed=1)
    spec = data.spec
    assert (spec.input_dim, spec.num_classes, spec.output_tokens, spec.values_per_token) == (5, 2, 2, 5)
    assert (spec.max_tokens, spec.metric, spec.input_vocab_size) == (4, "per_bit_accuracy", None)
    batch = next(iter(DataLoader(data.train, batch_size=8)))
    assert batch["inputs_embeds"].shape == (8, 4, 5) and batch["inputs_embeds"].dtype == torch.float32
    assert batch["labels"].shape == (8, 10) and batch["labels"].dtype == torch.int64
    assert len(data.eval) == 8


def test_bit_xor_labels_are_the_xor_of_the_inputs() -> None:
    data = bit_xor(200, 50, n_bits=10, patch_size=2, seed=3)
    for split in (data.train, data.eval):
        rows = _all(split)
        x = rows["inputs_embeds"].reshape(len(split), 2, 10)
        assert set(x.unique().tolist()) == {-1.0, 1.0}
        expected = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
        assert torch.equal(rows["labels"], expected)
        assert 0.3 < rows["labels"].float().mean() < 0.7


def test_bit_xor_is_deterministic_per_seed_and_differs_across_seeds_and_splits() -> None:
    a, b, c = bit_xor(64, 64, seed=0), bit_xor(64, 64, seed=0), bit_xor(64, 64, seed=1)
    assert torch.equal(_all(a.train)["inputs_embeds"], _all(b.train)["inputs_embeds"])
    assert torch.equal(_all(a.eval)["labels"], _all(b.eval)["labels"])
    assert not torch.equal(_all(a.train)["inputs_embeds"], _all(c.train)["inputs_embeds"])
    assert not torch.equal(_all(a.train)["inputs_embeds"], _all(a.eval)["inputs_embeds"])


def test_bit_memory_labels_are_the_unmasked_chosen_string() -> None:
    n_strings, n_bits, patch = 4, 20, 5
    data = bit_memory(100, 20, n_strings=n_strings, n_bits=n_bits, patch_size=patch, mask_prob=0.5, seed=7)
    spec = data.spec
    assert (spec.input_dim, spec.output_tokens, spec.values_per_token, spec.max_tokens) == (5, 4, 5, 20)
    rows = _all(data.train)
    assert rows["inputs_embeds"].shape == (100, 20, 5) and rows["labels"].shape == (100, 20)
    x = rows["inputs_embeds"].reshape(100, n_strings + 1, n_bits)
    strings, query, labels = x[:, :n_strings], x[:, n_strings], rows["labels"]
    assert set(strings.unique().tolist()) == {-1.0, 1.0}
    target = labels.float() * 2 - 1  # the chosen string as +-1
    # the label is one of the stored strings ...
    matches = (strings == target[:, None]).all(dim=-1)
    assert matches.any(dim=1).all()
    # ... and the masked copy agrees with it wherever it is not masked
    unmasked = query != 0
    assert torch.equal(query[unmasked], target[unmasked])
    assert 0.4 < (~unmasked).float().mean() < 0.6
    # which string is queried varies
    assert len(set(matches.float().argmax(dim=1).tolist())) > 1


@pytest.mark.parametrize("mask_prob", [0.0, 1.0])
def test_bit_memory_mask_prob_extremes(mask_prob: float) -> None:
    rows = bit_memory(10, 2, n_strings=2, n_bits=8, patch_size=4, mask_prob=mask_prob).train[:]
    query = rows["inputs_embeds"].reshape(10, 3, 8)[:, 2]
    if mask_prob == 0.0:
        assert torch.equal(query, rows["labels"].float() * 2 - 1)
    else:
        assert torch.count_nonzero(query) == 0


def test_bit_memory_paper_defaults_and_determinism() -> None:
    a, b = bit_memory(3, 2, seed=5), bit_memory(3, 2, seed=5)
    assert a.spec.max_tokens == 120 and a.spec.output_tokens == 20 and a.spec.input_dim == 50
    assert a.train[0]["inputs_embeds"].shape == (120, 50) and a.train[0]["labels"].shape == (1000,)
    assert torch.equal(a.train[:]["inputs_embeds"], b.train[:]["inputs_embeds"])
    assert not torch.equal(a.train[:]["labels"], bit_memory(3, 2, seed=6).train[:]["labels"])


def test_bit_errors_name_the_arguments() -> None:
    with pytest.raises(ValueError, match=r"n_bits \(10\) must be divisible by patch_size \(3\)"):
        bit_xor(4, 4, n_bits=10, patch_size=3)
    with pytest.raises(ValueError, match=r"n_bits \(1000\) must be divisible by patch_size \(30\)"):
        bit_memory(4, 4, patch_size=30)
    with pytest.raises(ValueError, match=r"mask_prob must be in \[0, 1\], got 1.5"):
        bit_memory(4, 4, n_bits=10, patch_size=5, mask_prob=1.5)
    with pytest.raises(ValueError, match="num_train must be an int >= 1, got 0"):
        bit_xor(0, 4)
    with pytest.raises(ValueError, match="n_strings must be an int >= 1"):
        bit_memory(4, 4, n_strings=0, n_bits=10, patch_size=5)
