"""Which samples a run trains on, in which order: the datasets, the resumable order, the shards.

The order is a pure function of (seed, dataset size, samples consumed), so a resumed run sees
exactly the batches an uninterrupted run would have seen; in a distributed job each process takes
its slices of every global batch (:class:`ShardSampler`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainConfig
from .data import ProxyTextDataset
from .llava_data import LlavaDataset


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices from seeded per-epoch permutations, starting at sample ``position``."""

    def __init__(self, size: int, batch_size: int, seed: int, position: int, num_batches: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.position, self.num_batches = position, num_batches
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=gen)
            self._perm_epoch = epoch
        assert self._perm is not None
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.position
        for _ in range(self.num_batches):
            yield [self._index(p) for p in range(pos, pos + self.batch_size)]
            pos += self.batch_size

    def __len__(self) -> int:
        return self.num_batches


class ShardSampler(Sampler[list[int]]):
    """This process's share of each global batch, micro-batch after micro-batch.

    A global batch of B indices splits into ``accum * world`` micro-batches of
    ``B / (accum * world)``; micro-batch m of rank r is slice ``m * world + r``. One process with
    no accumulation gets the global batch unchanged (the single-process order).
    """

    def __init__(self, batches: ResumableBatchSampler, world: int, rank: int, accum: int) -> None:
        self.batches, self.world, self.rank, self.accum = batches, world, rank, accum

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.batches.batch_size // (self.world * self.accum)
        for batch in self.batches:
            share: list[int] = []
            for m in range(self.accum):
                start = (m * self.world + self.rank) * micro
                share += batch[start: start + micro]
            yield share

    def __len__(self) -> int:
        return len(self.batches)


def collate(samples: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    """Images stacked into one tensor; the samples (turns, answers, ids) kept as they are."""
    return torch.stack([s.image for s in samples]), samples


def loader(dataset: Dataset, batch_sampler: Any, num_workers: int) -> DataLoader:
    """A DataLoader over ``batch_sampler``'s batches that leaves the global RNG alone (exact resume)."""
    # A private generator keeps DataLoader's seed draw off the global RNG.
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def datasets(config: TrainConfig) -> tuple[Dataset, Optional[Dataset], Optional[Dataset]]:
    """The train, val and test splits of the config's data (val / test None where LLaVA data has none)."""
    if config.data == "proxy":
        cfg = dataclasses.replace(config.proxy, resolution=config.resolution)
        return (ProxyTextDataset(cfg, "train"), ProxyTextDataset(cfg, "val"), ProxyTextDataset(cfg, "test"))
    assert config.llava_train is not None and config.image_folder is not None
    folder = config.image_folder

    def load(path: Optional[str]) -> Optional[Dataset]:
        return None if path is None else LlavaDataset(path, folder, config.resolution, image_mode=config.image_mode)

    train = load(config.llava_train)
    assert train is not None
    return train, load(config.llava_val), load(config.llava_test)
