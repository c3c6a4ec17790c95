"""Image tasks: patchify, and loading hub-schema parquet / imagefolder data through `load_dataset`."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fpt_peft.data import cifar10, cifar10_lra, digits, mnist, patchify, unpatchify
from fpt_peft.data.images import augment, random_crop, rotate

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


# ------------------------------------------------------------------------------- the official augmentation
# universal_computation/datasets/cifar10.py (training): ToTensor(), RandomCrop(32, padding=4), RandomHorizontalFlip(),
# RandomRotation(20), Normalize(...); cifar10_gray.py the same with Grayscale first. torchvision's defaults: crop fill
# 0, flip p=0.5, rotation nearest, fill 0, about the centre, same size. Re-implemented here independently.
def reference_crop(image: np.ndarray, row: int, col: int, padding: int = 4) -> np.ndarray:
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    return padded[:, row : row + h, col : col + w]


def reference_rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """torchvision's F.rotate(tensor, angle): each output pixel takes the input pixel at the inverse rotation of its
    position about the image centre (``_get_inverse_affine_matrix(centre, -angle, ...)``), nearest, fill 0."""
    _, h, w = image.shape
    rot = math.radians(-angle)
    a, b, cc, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    inverse = [[d, -b], [-cc, a]]
    out = np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            x, y = j - (w - 1) / 2, i - (h - 1) / 2  # pixel centres, relative to the image centre
            src_x = inverse[0][0] * x + inverse[0][1] * y + (w - 1) / 2
            src_y = inverse[1][0] * x + inverse[1][1] * y + (h - 1) / 2
            sj, si = round(src_x), round(src_y)  # nearest (half to even, as grid_sample)
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = image[:, si, sj]
    return out


def test_random_crop_is_pad_then_slice() -> None:
    x = torch.rand(3, 2, 8, 8)
    offsets = torch.tensor([[0, 8], [3, 5], [4, 4]])
    out = random_crop(x, offsets)
    for k, (row, col) in enumerate(offsets.tolist()):
        assert np.array_equal(out[k].numpy(), reference_crop(x[k].numpy(), row, col))
    assert torch.equal(out[2], x[2])  # offset (4, 4): the image itself


@pytest.mark.parametrize(("size", "angle"), [((8, 8), 17.3), ((8, 8), -11.2), ((7, 9), 13.0), ((9, 7), -19.9)])
def test_rotate_matches_torchvision_formula(size: tuple[int, int], angle: float) -> None:
    x = torch.rand(1, 2, *size)
    out = rotate(x, torch.tensor([angle]))
    assert np.array_equal(out[0].numpy(), reference_rotate(x[0].numpy(), angle))
    assert (out[0] == 0).any()  # the corners come from outside: fill 0


def test_rotate_special_angles() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(rotate(x, torch.tensor([0.0, 90.0]))[0], x[0])
    assert torch.equal(rotate(x, torch.tensor([0.0, 90.0]))[1], torch.rot90(x[1], 1, dims=(-2, -1)))  # anticlockwise


def test_augment_is_crop_flip_rotate_with_torchvisions_draws() -> None:
    x = torch.rand(6, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    flipped = 0
    for k in range(6):  # per image, torchvision's calls in its order: crop row, crop column, flip, angle
        row = int(torch.randint(0, 9, (1,), generator=g))
        col = int(torch.randint(0, 9, (1,), generator=g))
        flip = bool(torch.rand(1, generator=g) < 0.5)
        angle = float(torch.empty(1).uniform_(-20.0, 20.0, generator=g))
        expected = torch.from_numpy(reference_crop(x[k].numpy(), row, col))
        if flip:
            expected = torch.flip(expected, dims=[-1])
            flipped += 1
        assert np.array_equal(out[k].numpy(), reference_rotate(expected.numpy(), angle)), k
    assert 0 < flipped < 6
    assert torch.equal(augment(x, torch.Generator().manual_seed(11)), out)  # deterministic given the seed


def test_augmentation_on_the_train_split_only(tmp_path: Path) -> None:
    train, test = _pixels(4, 32, 3, 7), _pixels(3, 32, 3, 8)
    _write_parquet(tmp_path / "cifar", "img", {"train": train, "test": test})
    plain = cifar10(source=str(tmp_path / "cifar"))
    data = cifar10(source=str(tmp_path / "cifar"), augment=True)
    for _ in range(2):
        assert torch.equal(data.eval[:]["inputs_embeds"], plain.eval[:]["inputs_embeds"])  # never augmented
    torch.manual_seed(5)
    got = data.train[:]["inputs_embeds"]
    torch.manual_seed(5)  # torch's global generator, as torchvision's transforms (seeded by the training loop)
    images = augment(torch.from_numpy(train).float().permute(0, 3, 1, 2) / 255)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(got, patchify((images - mean) / std, 4))  # augmented in [0, 1], then normalised
    assert not torch.equal(got, plain.train[:]["inputs_embeds"])
    assert not torch.equal(data.train[:]["inputs_embeds"], got)  # fresh draws at every access
    pickle.loads(pickle.dumps(data.train))  # DataLoader workers get a copy

    lra = cifar10_lra(source=str(tmp_path / "cifar"), augment=True)
    lra_plain = cifar10_lra(source=str(tmp_path / "cifar"))
    assert torch.equal(lra.eval[:]["inputs_embeds"], lra_plain.eval[:]["inputs_embeds"])
    torch.manual_seed(6)
    got = lra.train[:]["inputs_embeds"]
    torch.manual_seed(6)
    grey = (torch.from_numpy(train).float() / 255 * torch.tensor(GREY_WEIGHTS)).sum(-1)[:, None]
    torch.testing.assert_close(got, patchify((augment(grey) - 0.5) / 0.5, 1))  # grey first, as cifar10_gray.py
    with pytest.raises(TypeError, match="augment must be a bool"):
        cifar10(source=str(tmp_path / "cifar"), augment="yes")


@pytest.mark.parametrize("recipe", ["cifar10", "cifar10_lra"])
def test_augment_flag_reaches_load_task(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fpt_peft.data

    from .training_utils import load_recipe

    seen: list[dict] = []

    def fake_load_task(name: str, **kwargs: object) -> None:
        seen.append(kwargs)
        raise LookupError("stop")

    monkeypatch.setattr(fpt_peft.data, "load_task", fake_load_task)
    for argv in ([], ["--augment"]):
        with pytest.raises(LookupError, match=r"^stop$"):
            load_recipe(recipe).main([*argv, "--output-dir", str(tmp_path / "run")])
    assert [s["augment"] for s in seen] == [False, True]
