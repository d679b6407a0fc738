"""The training minibatches of an SAE fit, from whatever holds the rows.

H is a checked [n_samples, d] tensor (shuffled per epoch), a `datasets` Dataset or
IterableDataset with an "h" column (read through `data.loader.iter_batches`, Arrow to
tensor without torch formatting), or any iterable of [batch, d] minibatches (tensors, arrays,
or dicts holding one at "h").
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import torch

from unsuperpose.data import files
from unsuperpose.data.loader import iter_batches
from unsuperpose.sae.base import as_tensor_2d


def training_batches(H, *, batch_size: int, n_epochs: int, n_steps: int | None,
                     gen: torch.Generator,
                     device: torch.device) -> tuple[Iterator[torch.Tensor], int | None]:
    """An iterator over every training minibatch (all epochs, or n_steps of them, cycling the
    data) and its length if known. A tensor H is shuffled per epoch with `gen`, lazily: epoch
    e draws its permutation when its first batch is taken."""
    if isinstance(H, torch.Tensor):
        per_epoch = math.ceil(H.shape[0] / batch_size)

        def epoch(_: int) -> Iterator[torch.Tensor]:
            order = torch.randperm(H.shape[0], generator=gen, device=device)
            return (H[idx] for idx in order.split(batch_size))
    else:
        per_epoch, epoch = iterable_epochs(H, batch_size, device)
        if iter(H) is H and n_steps is None and n_epochs > 1:
            raise ValueError(f"H is a one-shot iterator, so it cannot give n_epochs="
                             f"{n_epochs} passes; pass n_epochs=1, n_steps, or an "
                             "iterable that can be iterated again (a list, a Dataset)")
    total = n_steps or (per_epoch * n_epochs if per_epoch is not None else None)
    epochs = itertools.count() if n_steps else range(n_epochs)
    stream = itertools.chain.from_iterable(map(epoch, epochs))
    return itertools.islice(stream, total), total


def iterable_epochs(H, batch_size: int, device: torch.device
                    ) -> tuple[int | None, Callable[[int], Iterator[torch.Tensor]]]:
    """(batches per epoch or None, epoch -> iterator of [batch, d] tensors) for a `datasets`
    Dataset/IterableDataset (batched here) or any iterable of minibatches."""
    is_hf = hasattr(H, "with_format") and hasattr(H, "iter")
    d = None  # set by the first minibatch; every later one must match it

    def epoch(index: int) -> Iterator[torch.Tensor]:
        nonlocal d
        if is_hf:
            if hasattr(H, "set_epoch"):  # reshuffles a shuffled IterableDataset
                H.set_epoch(index)
            source = _dataset_batches(H, batch_size)
        else:
            source = iter(H)
        empty = True
        for batch in source:
            t = _batch_tensor(batch, d, device)
            d, empty = t.shape[1], False
            yield t
        if empty:
            raise ValueError(f"H yielded no minibatches in epoch {index}")

    if is_hf:
        n_rows = getattr(H, "num_rows", None)
        per_epoch = math.ceil(n_rows / batch_size) if n_rows is not None else None
    else:
        per_epoch = len(H) if hasattr(H, "__len__") else None
    return per_epoch, epoch


def _dataset_batches(H, batch_size: int) -> Iterator:
    """Minibatches of a `datasets` dataset's "h" column: through Arrow (`iter_batches`) when
    it holds fixed-size lists, as the stage's shards do; else (lists of any length, as
    `Dataset.from_dict` makes) through the numpy format, which stacks each batch."""
    features = getattr(H, "features", None)
    if features is not None and files.H not in features:
        raise ValueError(f"the dataset has columns {list(features)}, expected {files.H!r}")
    length = getattr(features[files.H], "length", -1) if features is not None else -1
    if length is not None and length > 0:
        return iter_batches(H, batch_size, files.H)
    return H.with_format("numpy").iter(batch_size=batch_size)


def _batch_tensor(batch, d: int | None, device: torch.device) -> torch.Tensor:
    """One minibatch -> [batch, d] float32 on `device`; batch: a [batch, d] tensor or array,
    or a dict holding one at "h"."""
    if isinstance(batch, dict):
        if files.H not in batch:
            raise ValueError(f"a minibatch dict has keys {sorted(batch)}, expected {files.H!r}")
        batch = batch[files.H]
    return as_tensor_2d(batch, name="minibatch", d=d, device=device)
