"""Image tasks as patch sequences, without torchvision: MNIST, CIFAR-10, CIFAR-10 LRA, sklearn digits.

Images are scaled to [0, 1], normalised as the official FPT code does, and cut into row-major patches
(:func:`patchify`, the official ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``). Hub and local sources are
decoded lazily with ``Dataset.with_transform``: the returned datasets keep their image and label columns
renamed to ``inputs_embeds`` and ``labels`` (so ``column_names`` already matches what indexing returns)
and turn them into float32 patches and int64 labels on access. ``augment=True`` (CIFAR-10 and CIFAR-10 LRA)
applies the official code's training augmentation to the train split, in torch: see :func:`augment`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ._common import cap, check_columns, check_int, continuous_dataset, load_splits
from .spec import TaskData, TaskSpec

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the official FPT code's normalisation
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's Grayscale on tensors
CROP_PADDING = 4  # the official CIFAR-10 augmentation: RandomCrop(32, padding=4), RandomHorizontalFlip(),
MAX_ROTATION = 20.0  # RandomRotation(20)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``(N, C, H, W)`` images into ``(N, (H/p)*(W/p), p*p*C)`` row-major patches.

    Each patch is flattened as (row in patch, column in patch, channel), like the official FPT code's
    einops pattern ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``.
    """
    check_int("patch_size", patch_size)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}.")
    n, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"Image height and width ({h}x{w}) must be divisible by patch_size ({patch_size}).")
    p = patch_size
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, tokens, p*p*C)`` back to ``(N, C, height, width)``."""
    n, tokens, dim = patches.shape
    p = patch_size
    c = dim // (p * p)
    if tokens != (height // p) * (width // p) or dim != p * p * c:
        raise ValueError(f"Patches of shape {tuple(patches.shape)} do not tile {height}x{width} with p={p}.")
    x = patches.reshape(n, height // p, width // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, c, height, width)


def random_crop(images: torch.Tensor, offsets: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` images with ``padding`` zeros on every side and cut the ``H x W`` window whose top-left
    corner is ``offsets[n] = (row, column)`` in the padded image (torchvision's ``RandomCrop(H, padding)`` for given
    parameters: constant fill 0)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w)  # (N, W)
    index = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate ``(N, C, H, W)`` images counter-clockwise by ``angles`` degrees about their centre, nearest pixel,
    outside filled with 0, size kept: torchvision's ``rotate`` on tensors (``RandomRotation``'s defaults).

    As torchvision: each output pixel, in coordinates centred on the image, takes the input pixel at the inverse
    rotation of its position (an affine grid normalised by the image size, ``grid_sample`` with ``align_corners=
    False``).
    """
    n, _, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32  # torchvision computes in this dtype
    rot = torch.deg2rad(-angles.to(torch.float64))  # torchvision inverts the rotation by -angle, in Python floats
    cos, sin = torch.cos(rot), torch.sin(rot)
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).reshape(n, 2, 3).to(dtype)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, dtype=dtype)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, dtype=dtype)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, dtype=dtype)], dim=-1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype)
    grid = (base.reshape(1, h * w, 3) @ (theta.transpose(1, 2) / scale)).reshape(n, h, w, 2)
    out = torch.nn.functional.grid_sample(
        images.to(dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.to(images.dtype)


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official CIFAR-10 training augmentation on ``(N, C, H, W)`` images in [0, 1], before normalisation:
    ``RandomCrop(H, padding=4)``, ``RandomHorizontalFlip()``, ``RandomRotation(20)`` (nearest, fill 0), in that order.

    Parameters are drawn per image from ``generator`` (default: torch's global generator, which the training loop
    seeds, and ``DataLoader`` seeds per worker) in torchvision's order and with its calls: crop row and column, flip
    (p = 0.5), angle uniform in [-20, 20] degrees.
    """
    n = images.shape[0]
    offsets = torch.empty(n, 2, dtype=torch.int64)
    flips = torch.empty(n, dtype=torch.bool)
    angles = torch.empty(n, dtype=torch.float64)
    for k in range(n):
        offsets[k, 0] = torch.randint(0, 2 * CROP_PADDING + 1, (1,), generator=generator)
        offsets[k, 1] = torch.randint(0, 2 * CROP_PADDING + 1, (1,), generator=generator)
        flips[k] = bool(torch.rand(1, generator=generator) < 0.5)
        angles[k] = float(torch.empty(1).uniform_(-MAX_ROTATION, MAX_ROTATION, generator=generator))
    out = random_crop(images, offsets)
    out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return rotate(out, angles)


@dataclass(frozen=True)
class ImageTransform:
    """Batch transform: PIL images -> [0, 1] tensors -> (grey) -> normalised -> patches; int64 labels.

    A plain dataclass (not a closure) so that datasets using it pickle, e.g. into DataLoader workers.
    """

    mode: str  # "L" (one channel) or "RGB"
    size: int  # expected height and width
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grey: bool = False  # RGB -> one luma channel before normalising
    augment: bool = False  # the official training augmentation (:func:`augment`) after grey, before normalising

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        """Turn a batch of ``inputs_embeds`` (PIL images) and ``labels`` into tensors."""
        arrays = []
        for image in batch["inputs_embeds"]:
            if image.size != (self.size, self.size):
                raise ValueError(
                    f"Expected {self.size}x{self.size} images, got an image of size {image.size[0]}x{image.size[1]}."
                )
            arrays.append(np.asarray(image.convert(self.mode), dtype=np.uint8))
        x = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
        x = x.unsqueeze(1) if self.mode == "L" else x.permute(0, 3, 1, 2)
        if self.grey:
            x = (x * torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        if self.augment:
            x = augment(x)
        x = (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)
        return {"inputs_embeds": patchify(x, self.patch_size), "labels": torch.tensor(batch["labels"])}


def _image_task(
    name: str,
    source: str,
    transform: ImageTransform,
    num_train: int | None,
    num_eval: int | None,
    eval_split: str,
    augment: bool = False,
) -> TaskData:
    """Load ``source``, cap the splits and attach the lazy patching transform (augmenting the train split only)."""
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be a bool, got {type(augment).__name__} {augment!r}.")
    size, patch_size = transform.size, transform.patch_size
    check_int("patch_size", patch_size)
    if size % patch_size:
        raise ValueError(f"{size}x{size} images must be divisible by patch_size ({patch_size}).")
    splits = load_splits(source, eval_split, formats=("parquet",), image_folder=True)
    prepared = []
    transforms = (replace(transform, augment=augment), replace(transform, augment=False))
    for split, limit, arg, split_transform in zip(
        splits, (num_train, num_eval), ("num_train", "num_eval"), transforms, strict=True
    ):
        image_col = "img" if "img" in split.column_names else "image"
        check_columns(split, [image_col, "label"], source)
        split = cap(split, limit, arg).select_columns([image_col, "label"])
        split = split.rename_columns({image_col: "inputs_embeds", "label": "labels"})
        split = split.with_transform(split_transform)
        if len(split) == 0:
            raise ValueError(f"The {arg[4:]} split of {source!r} is empty.")
        _ = split[0]  # decode one example now, so that bad images fail here and not in the training loop
        prepared.append(split)
    channels = 1 if transform.mode == "L" or transform.grey else 3
    spec = TaskSpec(
        name=name,
        input_dim=patch_size * patch_size * channels,
        num_classes=10,
        max_tokens=(size // patch_size) ** 2,
        metric="accuracy",
    )
    return TaskData(spec=spec, train=prepared[0], eval=prepared[1], source=source, kind="image")


def mnist(
    source: str = "ylecun/mnist",
    patch_size: int = 4,
    num_train: int | None = None,
    num_eval: int | None = None,
    eval_split: str = "test",
) -> TaskData:
    """MNIST: 28x28 grey in [0, 1] (the official code's Normalize(0, 1) is the identity), 4x4 patches.

    ``source``: hub id, a directory of parquet files in the hub schema (columns ``image``, ``label``)
    or an ``imagefolder`` tree. Defaults give 49 tokens of 16 values.
    """
    transform = ImageTransform("L", 28, patch_size, mean=(0.0,), std=(1.0,))
    return _image_task("mnist", source, transform, num_train, num_eval, eval_split)


def cifar10(
    source: str = "uoft-cs/cifar10",
    patch_size: int = 4,
    num_train: int | None = None,
    num_eval: int | None = None,
    eval_split: str = "test",
    augment: bool = False,
) -> TaskData:
    """CIFAR-10: 32x32 RGB normalised with the official per-channel mean/std, 4x4 patches.

    ``source``: hub id, a directory of parquet files in the hub schema (columns ``img``, ``label``)
    or an ``imagefolder`` tree. Defaults give 64 tokens of 48 values. ``augment=True``: the official code's
    training augmentation (:func:`augment`, on by default there) on the train split, freshly drawn at every access.
    """
    transform = ImageTransform("RGB", 32, patch_size, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    return _image_task("cifar10", source, transform, num_train, num_eval, eval_split, augment)


def cifar10_lra(
    source: str = "uoft-cs/cifar10",
    patch_size: int = 1,
    num_train: int | None = None,
    num_eval: int | None = None,
    eval_split: str = "test",
    augment: bool = False,
) -> TaskData:
    """CIFAR-10 LRA: greyscale CIFAR-10 normalised to [-1, 1] (mean 0.5, std 0.5), 1024 tokens of 1 pixel.

    ``augment=True``: the official code's training augmentation on the grey train images (its ``cifar10_gray.py``
    augments too: grey, then crop, flip, rotation), freshly drawn at every access.
    """
    transform = ImageTransform("RGB", 32, patch_size, mean=(0.5,), std=(0.5,), grey=True)
    return _image_task("cifar10_lra", source, transform, num_train, num_eval, eval_split, augment)


def digits(patch_size: int = 2, eval_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1797 images, offline): pixels scaled to [0, 1], 2x2 patches.

    A seeded split holds out ``eval_fraction`` of the images. Defaults give 16 tokens of 4 values.
    Needs scikit-learn (``pip install fpt-peft[extras]``).
    """
    check_int("patch_size", patch_size)
    if 8 % patch_size:
        raise ValueError(f"8x8 digits need a patch_size dividing 8 (1, 2, 4 or 8), got {patch_size}.")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("digits() needs scikit-learn: pip install 'fpt-peft[extras]'.") from err
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    patches = patchify(images, patch_size).numpy()
    order = np.random.default_rng(seed).permutation(len(patches))
    n_eval = max(1, round(eval_fraction * len(order)))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    labels = bunch.target.astype(np.int64)
    spec = TaskSpec(
        name="digits",
        input_dim=patch_size * patch_size,
        num_classes=10,
        max_tokens=(8 // patch_size) ** 2,
        metric="accuracy",
    )
    return TaskData(
        spec=spec,
        train=continuous_dataset(patches[train_idx], labels[train_idx]),
        eval=continuous_dataset(patches[eval_idx], labels[eval_idx]),
        kind="image",
    )
