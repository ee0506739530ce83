"""Training batches, from memory or streamed from files, in one order.

:func:`epoch_plan` is the sampler both paths share: one seeded permutation per epoch, cut into global
batches, each split into near-equal per-rank slices under torchrun (the tail batch smaller than the
world size is skipped on every rank). :func:`train_batches` turns the plan into ``(indices, raw uint8
batch, view numbers)`` triples: in memory by indexing the decoded tensor, in stream mode through a
``torch.utils.data.DataLoader`` whose worker processes decode the files. With the same seed and no
augmentation both give the same batches; augmentations that work on decoded batches (crop-flip,
shift2) are applied in the main process in both modes with the run's augmentation generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import DataError
from .augment import AUGMENTATIONS, Augmentation, Shifts
from .datasets import Dataset
from .images import ImageFiles

PREFETCH_BATCHES = 4  # per worker


def epoch_plan(n: int, batch_size: int, generator: torch.Generator, rank: int = 0,
               world_size: int = 1) -> list[torch.Tensor]:
    """This rank's sample indices per step of one epoch (draws one permutation from ``generator``)."""
    perm = torch.randperm(n, generator=generator)
    plan = []
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if world_size > 1:
            if len(idx) < world_size:
                continue  # every rank sees the same permutation, so all skip this tail together
            idx = idx.tensor_split(world_size)[rank]
        plan.append(idx)
    return plan


class _Samples(torch.utils.data.Dataset):
    """What a stream worker does for one index: decode the file, and apply a per-sample augmentation with a
    generator seeded by (epoch seed, index)."""

    def __init__(self, files: ImageFiles, augment: Augmentation | None, seed: int):
        self.files, self.augment, self.seed = files, augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        """(index, image), or (index, the one-line error) when the file broke since the listing: a worker's
        exception would reach the trainer wrapped in the worker's traceback, not as the line naming the file."""
        try:
            if self.augment is not None and self.augment.sample is not None:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % (2**63 - 1))
                return i, self.augment.sample(self.files.load_source(i), g, self.files.geometry.size)
            return i, self.files.load(i)
        except DataError as e:
            return i, str(e)


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> tuple[torch.Tensor, torch.Tensor | str]:
    broken = [x for _, x in items if isinstance(x, str)]
    if broken:
        return torch.tensor([i for i, _ in items]), broken[0]
    return torch.tensor([i for i, _ in items]), torch.stack([x for _, x in items])


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per process; the trainer keeps the cores' threads


def stream_loader(files: ImageFiles, plan: list[torch.Tensor], augment: Augmentation | None = None, seed: int = 0,
                  pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``plan``'s batches of ``files`` (``files.workers`` processes; 0 decodes in this one).

    It gets a generator of its own: a DataLoader without one draws its workers' base seed from torch's global
    generator on every iteration, which shifts every dropout mask drawn after it, so a streamed run would train
    another model than the same run in memory."""
    workers = files.workers
    return torch.utils.data.DataLoader(
        _Samples(files, augment, seed), batch_sampler=[idx.tolist() for idx in plan], num_workers=workers,
        collate_fn=_collate, pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=PREFETCH_BATCHES if workers else None, generator=torch.Generator().manual_seed(seed))


Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # sample indices, raw pixels, view numbers


def train_batches(data: Dataset, augment: str, plan: list[torch.Tensor], aug_gen: torch.Generator,
                  pin_memory: bool = False, epoch: int = 1, seed: int = 0) -> Iterator[Batch]:
    """``(indices, raw batch, views)`` for each step of ``plan``, augmented with ``augment``; ``views`` numbers
    each image's view when the augmentation has finitely many (:class:`~kdexport.data.augment.Shifts`), else
    None. ``epoch`` (1-based) and ``seed`` fix an alternating flip's mirror per image."""
    aug = AUGMENTATIONS.get(augment)
    coins = None
    if aug is not None and aug.views is not None and aug.views.alternate:
        coins = Shifts.alternating_mirror(data.x_train.shape[0], epoch, seed)

    def augmented(idx: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if aug is None:
            return raw, None
        if aug.views is not None:
            views = aug.views.draw(len(raw), aug_gen, None if coins is None else coins[idx])
            return aug.views.render(raw, views), views
        return aug.batch(raw, aug_gen), None

    x = data.x_train
    if isinstance(x, ImageFiles):
        per_sample = aug is not None and aug.sample is not None
        sample_seed = int(torch.randint(0, 2**62, (1,), generator=aug_gen)) if per_sample else 0
        for idx, raw in stream_loader(x, plan, aug if per_sample else None, sample_seed, pin_memory):
            if isinstance(raw, str):  # a file broke since the listing: its line, not a worker's traceback
                raise DataError(raw)
            yield (idx, raw, None) if per_sample else (idx, *augmented(idx, raw))
        return
    for idx in plan:
        yield idx, *augmented(idx, x[idx])
