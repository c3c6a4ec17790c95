"""Bit XOR and bit memory: shapes, determinism, and labels that really answer the task."""

from __future__ import annotations

import itertools

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fpt_peft.data import BitStream, bit_memory, bit_xor


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


# ------------------------------------------------------------------------ the official formulation (streams)
# Re-implemented here from kzl/universal-computation (datasets/bit_xor.py, datasets/bit_memory.py, fpt.py,
# experiment.py), in numpy as there, so that our generator is checked against the official formula, not itself.
def official_xor(bits: np.ndarray) -> np.ndarray:
    """BitXORDataset.get_batch_np's answer for bits of shape (batch, num_patterns, n)."""
    xored_bits = bits[:, 0]
    for i in range(1, bits.shape[1]):
        xored_bits = np.logical_xor(xored_bits, bits[:, i])
    return xored_bits


def official_bit_xor(rs: np.random.RandomState, batch_size: int, n: int, num_patterns: int = 2):
    bits = rs.randint(low=0, high=2, size=(batch_size, num_patterns, n))
    return bits, official_xor(bits)


def official_bit_memory(rs: np.random.RandomState, batch_size: int, n: int, num_patterns: int = 5):
    bits = rs.randint(low=0, high=2, size=(batch_size, num_patterns, n))
    bits = 2 * bits - 1
    query_inds = rs.randint(low=0, high=num_patterns, size=batch_size)
    query_bits = bits[range(batch_size), query_inds]
    mask = rs.randint(low=0, high=2, size=query_bits.shape)
    masked_query_bits = (mask * query_bits).reshape(batch_size, 1, n)
    return np.concatenate([bits, masked_query_bits], axis=1), query_bits


def official_patches(x: np.ndarray, input_dim: int) -> np.ndarray:
    """FPT.forward: (batch, seq_len, dim) -> (batch, seq_len * ratio, input_dim)."""
    ratio = x.shape[-1] // input_dim
    return x.reshape(x.shape[0], x.shape[1] * ratio, input_dim)


def official_label_ids(y: np.ndarray, task: str) -> np.ndarray:
    """experiment.py's loss_fn: bit memory labels are -1/+1, bit XOR labels 0/1; class 1 for the larger value."""
    return (y > 0).astype(np.int64) if task == "bit-memory" else (y > 0.5).astype(np.int64)


def _unpatch(rows: dict[str, torch.Tensor], strings: int, n_bits: int) -> np.ndarray:
    """Our examples back to the official (batch, strings, n_bits) array: the inverse of the official reshape."""
    x = rows["inputs_embeds"].numpy()
    back = x.reshape(len(x), strings, n_bits)
    assert np.array_equal(official_patches(back, x.shape[-1]), x)  # our layout is the official reshape
    return back


def _take(stream, count: int) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(stream, batch_size=count)))


def test_streamed_xor_is_the_official_formula() -> None:
    n, patch = 5, 5
    data = bit_xor(None, 64, n_bits=n, patch_size=patch, values="01", stream=True, seed=2)
    assert isinstance(data.train, BitStream) and isinstance(data.eval, datasets.Dataset)
    ours = _take(data.train, 4000)
    x = _unpatch(ours, 2, n)
    assert set(np.unique(x).tolist()) == {0.0, 1.0}  # the official inputs are bits in {0, 1}
    # the label is the official XOR of the inputs, with the official class ids
    assert np.array_equal(ours["labels"].numpy(), official_label_ids(official_xor(x), "bit-xor"))
    # statistics match the official generator's: every bit uniform, inputs independent
    official_x, official_y = official_bit_xor(np.random.RandomState(1), 4000, n)
    assert abs(x.mean() - official_x.mean()) < 0.03
    assert abs(ours["labels"].float().mean().item() - official_y.mean()) < 0.03
    # the eval split: the same formula, other examples
    rows = data.eval[:]
    ev = _unpatch(rows, 2, n)
    assert np.array_equal(rows["labels"].numpy(), official_label_ids(official_xor(ev), "bit-xor"))


def test_streamed_xor_of_more_strings_and_pm1_values() -> None:
    rows = _take(bit_xor(None, 4, n_bits=6, patch_size=3, n_strings=3, stream=True).train, 500)
    x = _unpatch(rows, 3, 6)
    assert set(np.unique(x).tolist()) == {-1.0, 1.0}
    bits = (x > 0).astype(np.int64)  # the same strings as official 0/1 bits
    assert np.array_equal(rows["labels"].numpy(), official_label_ids(official_xor(bits), "bit-xor"))
    assert bit_xor(None, 4, n_bits=6, patch_size=3, n_strings=3, stream=True).spec.max_tokens == 6


def test_streamed_memory_is_the_official_formula() -> None:
    n, patch, patterns = 20, 5, 5
    data = bit_memory(None, 16, n_strings=patterns, n_bits=n, patch_size=patch, stream=True, seed=4)
    assert data.spec.output_tokens == n // patch and data.spec.max_tokens == (patterns + 1) * n // patch
    ours = _take(data.train, 3000)
    x = _unpatch(ours, patterns + 1, n)
    strings, query = x[:, :patterns], x[:, patterns]
    labels = ours["labels"].numpy()
    assert set(np.unique(strings).tolist()) == {-1.0, 1.0}
    target = 2 * labels - 1  # the official y (-1/+1) whose class ids (official_label_ids) are our labels
    assert np.array_equal(official_label_ids(target, "bit-memory"), labels)
    chosen = (strings == target[:, None]).all(-1)
    assert chosen.any(1).all()  # the answer is one of the stored strings ...
    kept = query != 0
    assert np.array_equal(query[kept], target[kept])  # ... equal to the masked copy wherever that is not masked
    # statistics of the official generator: mask p = 0.5, the queried string uniform over the patterns
    official_x, official_y = official_bit_memory(np.random.RandomState(3), 3000, n, patterns)
    assert abs((~kept).mean() - (official_x[:, -1] == 0).mean()) < 0.02
    which = np.bincount(chosen.argmax(1), minlength=patterns) / len(chosen)
    assert np.all(np.abs(which - 1 / patterns) < 0.04)
    assert abs(labels.mean() - official_label_ids(official_y, "bit-memory").mean()) < 0.02


def test_read_out_and_loss_follow_the_official_layout() -> None:
    """Logits of bit j come from read token j // patch, as FPT.forward's reshape; the loss is experiment.py's."""
    from peft import get_peft_model
    from transformers import AutoModel

    from fpt_peft import FPTConfig

    from .helpers import tiny_config

    n, patch = 12, 4
    data = bit_memory(None, 4, n_strings=2, n_bits=n, patch_size=patch, stream=True)
    spec = data.spec
    torch.manual_seed(0)
    config = FPTConfig(
        input_dim=spec.input_dim,
        output_dim=2,
        output_tokens=spec.output_tokens,
        values_per_token=spec.values_per_token,
    )
    model = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), config).eval()
    captured: list[torch.Tensor] = []
    head = model.base_model.model.output_adapter.fpt_output["default"]
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    batch = _take(data.train, 3)
    with torch.no_grad():
        out = model(**batch)
    handle.remove()
    raw = captured[0]  # the official out_net output on x[:, -ratio:]: (batch, ratio, 2 * patch)
    assert raw.shape == (3, n // patch, 2 * patch)
    official = raw.reshape(raw.shape[0], raw.shape[1] // (n // patch), (n // patch) * 2 * patch)
    official_logits = official.reshape(-1, n, 2)  # experiment.py's loss_fn reshape
    torch.testing.assert_close(out.logits, official_logits)
    ids = torch.from_numpy(official_label_ids(2 * batch["labels"].numpy() - 1, "bit-memory"))
    official_loss = torch.nn.functional.cross_entropy(official_logits.reshape(-1, 2), ids.reshape(-1))
    torch.testing.assert_close(out.loss, official_loss)


def test_stream_is_a_pure_function_of_the_seed() -> None:
    make = lambda seed: bit_xor(None, 8, n_bits=10, patch_size=5, stream=True, seed=seed).train  # noqa: E731
    a, b, c = _take(make(0), 64), _take(make(0), 64), _take(make(1), 64)
    assert torch.equal(a["inputs_embeds"], b["inputs_embeds"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["inputs_embeds"], c["inputs_embeds"])
    stream = make(0)
    assert all(torch.equal(stream.example(i)["inputs_embeds"], a["inputs_embeds"][i]) for i in range(64))
    # fresh examples: no two of the first 64 are the same (2**20 possible inputs)
    assert len({tuple(row.flatten().tolist()) for row in a["inputs_embeds"]}) == 64
    # the eval split does not repeat the training stream
    ev = bit_xor(None, 64, n_bits=10, patch_size=5, stream=True).eval[:]
    assert not torch.equal(ev["inputs_embeds"], a["inputs_embeds"])


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_split_the_stream_without_duplicates(workers: int) -> None:
    stream = bit_memory(None, 4, n_strings=2, n_bits=8, patch_size=4, stream=True, seed=3).train
    reference = [stream.example(i) for i in range(48)]
    # one block per batch: the same batches whatever the number of workers
    loader = DataLoader(stream.for_loader(batch_size=6), batch_size=6, num_workers=workers)
    batches = list(itertools.islice(iter(loader), 8))
    expected = torch.stack([r["inputs_embeds"] for r in reference])
    assert torch.equal(torch.cat([b["inputs_embeds"] for b in batches]), expected)
    # the raw stream (blocks of one example) in workers: no example twice, none left out
    loader = DataLoader(stream, batch_size=4, num_workers=workers)
    seen = torch.cat([b["inputs_embeds"] for b in itertools.islice(iter(loader), 12)])
    keys = {tuple(row.flatten().tolist()) for row in seen}
    assert len(keys) == 48 and keys == {tuple(r["inputs_embeds"].flatten().tolist()) for r in reference}


def test_resume_and_shards() -> None:
    stream = bit_xor(None, 4, n_bits=4, patch_size=2, stream=True, seed=5).train
    first = list(itertools.islice(iter(DataLoader(stream.for_loader(4), batch_size=4)), 10))
    resumed = list(itertools.islice(iter(DataLoader(stream.for_loader(4, skip_batches=6), batch_size=4)), 4))
    assert all(torch.equal(a["inputs_embeds"], b["inputs_embeds"]) for a, b in zip(first[6:], resumed, strict=True))
    shards = [
        list(itertools.islice(iter(DataLoader(stream.for_loader(4, num_shards=2, shard_index=r), batch_size=4)), 5))
        for r in (0, 1)
    ]
    interleaved = [shards[k % 2][k // 2] for k in range(10)]  # rank r takes the blocks r, r + 2, ...
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(first, interleaved, strict=True))
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, num_shards=2\), got 2"):
        stream.for_loader(4, num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="skip_batches must be an int >= 0, got -1"):
        stream.for_loader(4, skip_batches=-1)


def test_streams_pass_the_task_checks_and_load_task() -> None:
    from fpt_peft.data import load_task
    from fpt_peft.validation import check_task_data

    task = load_task("bit_xor", num_eval=16, n_bits=5, patch_size=5, values="01", stream=True)
    check_task_data(task)
    assert isinstance(task.train, BitStream) and task.train.examples.values == "01"
    memory = load_task("bit_memory", num_eval=4, n_bits=20, patch_size=10, stream=True)
    check_task_data(memory)


def test_finite_sets_are_unchanged_by_the_new_options() -> None:
    old = bit_xor(16, 4, n_bits=6, patch_size=3, seed=9).train[:]
    zero_one = bit_xor(16, 4, n_bits=6, patch_size=3, seed=9, values="01").train[:]
    assert torch.equal((old["inputs_embeds"] + 1) / 2, zero_one["inputs_embeds"])
    assert torch.equal(old["labels"], zero_one["labels"])


def test_stream_option_errors() -> None:
    with pytest.raises(ValueError, match=r"num_train=100 sets the size of a finite training set.*num_train=None"):
        bit_xor(100, 4, stream=True)
    with pytest.raises(ValueError, match="num_train is required"):
        bit_memory(None, 4, n_bits=10, patch_size=5)
    with pytest.raises(ValueError, match=r"values must be one of \['pm1', '01'\], got '\+-1'"):
        bit_xor(None, 4, values="+-1", stream=True)
    with pytest.raises(TypeError, match="stream must be a bool"):
        bit_xor(None, 4, stream="yes")
    with pytest.raises(ValueError, match="n_strings must be an int >= 1"):
        bit_xor(None, 4, n_strings=0, stream=True)


class _Loaded(Exception):
    """Raised by the stand-in load_task: the recipe got as far as building its task."""


@pytest.mark.parametrize(
    ("recipe", "argv", "expected"),
    [
        ("bit_xor", [], {"num_train": 20_000, "values": "pm1", "n_strings": 2, "stream": False}),
        (
            "bit_xor",
            ["--stream", "--values", "01", "--n-bits", "5", "--n-strings", "3"],
            {"num_train": None, "values": "01", "n_strings": 3, "n_bits": 5, "stream": True},
        ),
        ("bit_memory", [], {"num_train": 20_000, "stream": False}),
        ("bit_memory", ["--stream"], {"num_train": None, "stream": True}),
    ],
)
def test_recipe_flags_reach_load_task(
    recipe: str, argv: list[str], expected: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fpt_peft.data

    from .training_utils import load_recipe

    seen: dict = {}

    def fake_load_task(name: str, **kwargs: object) -> None:
        seen.update(kwargs, name=name)
        raise _Loaded(name)

    monkeypatch.setattr(fpt_peft.data, "load_task", fake_load_task)
    with pytest.raises(_Loaded, match=f"^{recipe}$"):
        load_recipe(recipe).main([*argv, "--output-dir", str(tmp_path / "run")])
    assert seen["name"] == recipe and expected.items() <= seen.items()
