"""The order of the training batches: a seeded order per pass over a dataset, and each process's shard of a stream.

Both are what a resumed run needs to continue exactly where it stopped: the order of a pass depends only on the seed
and the pass, and a stream skips its first batches at no cost.
"""

from __future__ import annotations

import typing

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, IterableDataset, Sampler


class EpochSampler(Sampler[int]):
    """A random order of the training examples that depends only on ``(seed, epoch)``.

    Every process draws the same order (Accelerate then gives each process its own batches), and a resumed run
    redraws exactly the order it was interrupted in, without touching the global random state.

    Not Accelerate's ``use_seedable_sampler``: its ``SeedableRandomSampler`` seeds pass ``e`` of seed ``s`` with
    ``s + e``, so seed 1's first pass is seed 0's second, and runs that a comparison counts as independent seeds
    would share their orders. Here the two are kept apart (``seed * 100_003 + epoch``).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of pass ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> typing.Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def stream_batches(
    stream: IterableDataset, batch_size: int, num_workers: int, accelerator: Accelerator, skip: int
) -> typing.Iterator[dict[str, torch.Tensor]]:
    """Batches of an endless training stream for this process, on its device: its own shard (the processes' shards
    are disjoint and together make up the one-process stream, batch by batch), after its first ``skip`` batches.

    The stream must offer ``for_loader(batch_size, skip_batches, num_shards, shard_index)``, as
    :class:`~fpt_peft.data.BitStream` does: skipping costs nothing, and a resumed run continues the same stream.
    """
    for_loader = getattr(stream, "for_loader", None)
    if for_loader is None:
        raise TypeError(
            f"The train split is an IterableDataset ({type(stream).__name__}) without for_loader(batch_size, "
            "skip_batches, num_shards, shard_index): the training loop cannot split it between processes or resume "
            "it. Use a datasets.Dataset, or a stream like fpt_peft.data.BitStream."
        )
    shard = for_loader(
        batch_size=batch_size,
        skip_batches=skip,
        num_shards=accelerator.num_processes,
        shard_index=accelerator.process_index,
    )
    # Its own generator: creating the loader must not draw from the global RNG (dropout), or a resume would diverge.
    loader = DataLoader(
        shard, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    for batch in loader:
        yield {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
