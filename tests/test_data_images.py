"""Image tasks: patchify, and loading hub-schema parquet / imagefolder data through `load_dataset`."""

from __future__ import annotations

import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fpt_peft.data import cifar10, cifar10_lra, digits, mnist, patchify, unpatchify

# The official FPT code's constants (torchvision's Normalize and Grayscale), written out independently.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _pixels(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _write_parquet(root: Path, image_col: str, pixels: dict[str, np.ndarray]) -> None:
    """Hub layout: data/<split>-00000-of-00001.parquet with an Image() column and a label column."""
    (root / "data").mkdir(parents=True)
    for split, arrays in pixels.items():
        ds = datasets.Dataset.from_dict(
            {image_col: [Image.fromarray(a) for a in arrays], "label": [i % 10 for i in range(len(arrays))]},
            features=datasets.Features({image_col: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}),
        )
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))


def test_patchify_layout_and_round_trip() -> None:
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 4)
    assert patches[0, 0].tolist() == [0, 1, 4, 5] and patches[0, 1].tolist() == [2, 3, 6, 7]
    rgb = torch.arange(12.0).reshape(1, 3, 2, 2)  # (p1 p2 c): channels vary fastest
    assert patchify(rgb, 2)[0, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    x = torch.randn(3, 3, 32, 32)
    for p in (1, 4, 8):
        assert torch.equal(unpatchify(patchify(x, p), p, 32, 32), x)


def test_patchify_errors() -> None:
    with pytest.raises(ValueError, match=r"height and width \(28x30\) must be divisible by patch_size \(4\)"):
        patchify(torch.zeros(1, 1, 28, 30), 4)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        patchify(torch.zeros(28, 28), 4)
    with pytest.raises(ValueError, match="patch_size must be an int >= 1"):
        patchify(torch.zeros(1, 1, 4, 4), 0)


def test_mnist_from_hub_schema_parquet(tmp_path: Path) -> None:
    train, test = _pixels(6, 28, 1, 0), _pixels(3, 28, 1, 1)
    _write_parquet(tmp_path / "mnist", "image", {"train": train, "test": test})
    data = mnist(source=str(tmp_path / "mnist"))
    spec = data.spec
    assert (spec.input_dim, spec.max_tokens, spec.num_classes, spec.metric) == (16, 49, 10, "accuracy")
    assert (len(data.train), len(data.eval)) == (6, 3)
    assert data.train.column_names == ["inputs_embeds", "labels"]
    batch = next(iter(DataLoader(data.train, batch_size=4)))
    assert batch["inputs_embeds"].shape == (4, 49, 16) and batch["inputs_embeds"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 2, 3] and batch["labels"].dtype == torch.int64
    images = unpatchify(data.eval[:]["inputs_embeds"], 4, 28, 28)
    assert torch.allclose(images, torch.from_numpy(test).float().unsqueeze(1) / 255)  # [0, 1], no shift
    restored = pickle.loads(pickle.dumps(data.train))  # DataLoader workers need the transform to pickle
    assert torch.equal(restored[2]["inputs_embeds"], data.train[2]["inputs_embeds"])
    shuffled = data.train.shuffle(seed=0)  # the transform survives shuffle/select
    assert shuffled[0]["inputs_embeds"].shape == (49, 16)
    capped = mnist(source=str(tmp_path / "mnist"), num_train=2, num_eval=1, patch_size=7)
    assert (len(capped.train), len(capped.eval)) == (2, 1)
    assert (capped.spec.max_tokens, capped.spec.input_dim) == (16, 49)


def test_cifar10_normalisation_and_patches(tmp_path: Path) -> None:
    train, test = _pixels(4, 32, 3, 2), _pixels(2, 32, 3, 3)
    _write_parquet(tmp_path / "cifar", "img", {"train": train, "test": test})
    data = cifar10(source=str(tmp_path / "cifar"))
    assert (data.spec.input_dim, data.spec.max_tokens) == (48, 64)
    x = data.train[:]["inputs_embeds"]
    assert x.shape == (4, 64, 48)
    images = unpatchify(x, 4, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    original = torch.from_numpy(train).float().permute(0, 3, 1, 2) / 255
    assert torch.allclose(images, (original - mean) / std, atol=1e-5)


def test_cifar10_lra_is_grey_pixels_in_minus_one_one(tmp_path: Path) -> None:
    train, test = _pixels(3, 32, 3, 4), _pixels(2, 32, 3, 5)
    _write_parquet(tmp_path / "cifar", "img", {"train": train, "test": test})
    data = cifar10_lra(source=str(tmp_path / "cifar"))
    assert (data.spec.input_dim, data.spec.max_tokens) == (1, 1024)
    x = data.eval[:]["inputs_embeds"]
    assert x.shape == (2, 1024, 1)
    grey = (test.astype(np.float32) / 255) @ np.array(GREY_WEIGHTS, dtype=np.float32)
    expected = torch.from_numpy((grey - 0.5) / 0.5).reshape(2, 1024, 1)
    assert torch.allclose(x, expected, atol=1e-5) and x.min() >= -1 and x.max() <= 1


def test_mnist_from_imagefolder(tmp_path: Path) -> None:
    pixels = _pixels(8, 28, 1, 6)
    for i, arr in enumerate(pixels):
        split, label = ("train" if i < 6 else "test"), i % 3
        folder = tmp_path / "folder" / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{i}.png")
    data = mnist(source=str(tmp_path / "folder"))
    assert (len(data.train), len(data.eval)) == (6, 2)
    rows = data.eval[:]
    assert sorted(rows["labels"].tolist()) == [0, 1]
    images = unpatchify(rows["inputs_embeds"], 4, 28, 28)
    by_label = {6 % 3: pixels[6], 7 % 3: pixels[7]}
    for image, label in zip(images, rows["labels"].tolist(), strict=True):
        assert torch.allclose(image[0], torch.from_numpy(by_label[label]).float() / 255)


def test_hub_id_goes_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    image = Image.fromarray(np.zeros((28, 28), dtype=np.uint8))
    split = datasets.Dataset.from_dict(
        {"image": [image], "label": [3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )

    def fake_load_dataset(*args: object, **kwargs: object) -> datasets.DatasetDict:
        calls.append((args, kwargs))
        return datasets.DatasetDict({"train": split, "test": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = mnist()
    assert calls == [(("ylecun/mnist",), {})]
    assert data.train[0]["labels"] == 3
    with pytest.raises(ValueError, match=r"has no 'validation' split; found splits \['test', 'train'\]"):
        mnist(eval_split="validation")


def test_image_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="looks like a local path but does not exist"):
        mnist(source=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar10(source="./no/such/dir")
    _write_parquet(tmp_path / "big", "image", {"train": _pixels(2, 32, 1, 0), "test": _pixels(1, 32, 1, 1)})
    with pytest.raises(ValueError, match="Expected 28x28 images, got an image of size 32x32"):
        mnist(source=str(tmp_path / "big"))
    _write_parquet(tmp_path / "renamed", "picture", {"train": _pixels(2, 28, 1, 0), "test": _pixels(1, 28, 1, 1)})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image'\].*found \['picture', 'label'\]"):
        mnist(source=str(tmp_path / "renamed"))
    _write_parquet(tmp_path / "notest", "image", {"train": _pixels(2, 28, 1, 0)})
    with pytest.raises(ValueError, match=r"No 'test' split files under .*found parquet files for \['train'\]"):
        mnist(source=str(tmp_path / "notest"))
    with pytest.raises(ValueError, match=r"28x28 images must be divisible by patch_size \(5\)"):
        mnist(source=str(tmp_path / "big"), patch_size=5)
    with pytest.raises(ValueError, match="eval_split must be 'test' or 'validation'"):
        mnist(source=str(tmp_path / "big"), eval_split="train")


def test_digits_offline_task() -> None:
    data = digits()
    spec = data.spec
    assert (spec.input_dim, spec.max_tokens, spec.num_classes) == (4, 16, 10)
    assert len(data.train) + len(data.eval) == 1797 and len(data.eval) == 359
    x = data.train[:]["inputs_embeds"]
    assert x.shape == (1438, 16, 4) and x.min() >= 0.0 and x.max() <= 1.0
    assert set(data.train[:]["labels"].tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = bunch.images.astype(np.float32) / 16
    originals = {img.tobytes(): int(t) for img, t in zip(scaled, bunch.target, strict=True)}
    images = unpatchify(data.eval[:]["inputs_embeds"], 2, 8, 8)
    for image, label in zip(images[:, 0].numpy(), data.eval[:]["labels"].tolist(), strict=True):
        assert originals[image.tobytes()] == label  # round-trips to a real digit with its label
    assert torch.equal(digits(seed=0).eval[:]["labels"], data.eval[:]["labels"])
    assert not torch.equal(digits(seed=1).eval[:]["labels"], data.eval[:]["labels"])
    assert digits(patch_size=4).train[0]["inputs_embeds"].shape == (4, 16)
    with pytest.raises(ValueError, match=r"patch_size dividing 8 \(1, 2, 4 or 8\), got 3"):
        digits(patch_size=3)
    with pytest.raises(ValueError, match=r"eval_fraction must be in \(0, 1\)"):
        digits(eval_fraction=1.0)
