"""Turning tokenized examples into batches: padding, length bucketing, packing, a resumable batch
order, and pre-tokenized datasets stored as NPZ.

Packing concatenates examples into rows of at most `max_length` tokens. Attention is NOT reset at
example boundaries (the models take no segment mask): a token may attend to the examples packed
before it in the same row. What packing does guarantee is that no loss is taken on the first token
of a packed example, the one token whose only context would be the previous example.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from lazarus.data.io import atomic_writer
from lazarus.data.records import DatasetError
from lazarus.data.tokenize import TokenizedExample

NPZ_FORMAT_VERSION = 1


def pad_batch(sequences: list[list[int]], pad_id: int, *,
              side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Stack `sequences` into an int32 [B, T] array padded with `pad_id`; also return their lengths."""
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    batch = np.full((len(sequences), int(lengths.max())), pad_id, dtype=np.int32)
    for row, sequence in enumerate(sequences):
        if len(sequence) == 0:
            continue
        if side == "right":
            batch[row, : len(sequence)] = sequence
        else:
            batch[row, batch.shape[1] - len(sequence):] = sequence
    return batch, lengths


def bucket_by_length(lengths, batch_size: int, seed: int) -> list[list[int]]:
    """Batches of indices whose items have similar lengths (less padding), in a seeded random order.

    Items are sorted by length (ties broken at random) and cut into consecutive batches; the order of
    the batches is shuffled. Every index appears exactly once; the last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    order = np.lexsort((rng.permutation(len(lengths)), lengths))
    batches = [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pack_examples(examples: list[TokenizedExample], max_length: int) -> list[TokenizedExample]:
    """Concatenate consecutive examples into rows of at most `max_length` tokens (greedy, in order).

    The first token of every example after the first in a row gets loss mask 0 (see module docstring
    on attention across boundaries). An example longer than `max_length` is an error: truncate it when
    tokenizing (`encode_sft(..., max_length=...)`).
    """
    packed: list[TokenizedExample] = []
    current = TokenizedExample([], [])
    for index, example in enumerate(examples):
        if len(example.input_ids) > max_length:
            raise ValueError(f"example {index} has {len(example.input_ids)} tokens, more than "
                             f"max_length={max_length}")
        if current.input_ids and len(current.input_ids) + len(example.input_ids) > max_length:
            packed.append(current)
            current = TokenizedExample([], [])
        mask = list(example.loss_mask)
        if current.input_ids and mask:
            mask[0] = 0
        current.input_ids += example.input_ids
        current.loss_mask += mask
    if current.input_ids:
        packed.append(current)
    return packed


class BatchIterator:
    """Batches of indices into a dataset of `n` items, epoch after epoch, resumable exactly.

    Each epoch visits the items in the order `default_rng([seed, epoch]).permutation(n)` (or in order
    without `shuffle`), so the state is only (epoch, position). At the end of an epoch the last batch
    is shorter than `batch_size` unless `drop_last`, which skips it.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if n < 1:
            raise ValueError(f"BatchIterator needs a non-empty dataset, got n={n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > n:
            raise ValueError(f"drop_last with batch_size={batch_size} > n={n} would yield no batch")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def next_indices(self) -> list[int]:
        remaining = self.n - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        batch = self._order[self.position: self.position + self.batch_size]
        self.position += len(batch)
        return batch.tolist()

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    @classmethod
    def from_state(cls, n: int, batch_size: int, state: dict) -> BatchIterator:
        """The iterator that continues exactly where the one that produced `state()` stopped."""
        for key in ("epoch", "position", "seed"):
            if key not in state:
                raise ValueError(f"batch iterator state has no {key!r}")
        if state.get("n", n) != n:
            raise ValueError(f"the dataset has {n} items but the saved batch state is for {state['n']}")
        if not 0 <= state["position"] <= n:
            raise ValueError(f"batch iterator state position {state['position']} is outside 0..{n}")
        iterator = cls(n, batch_size, seed=state["seed"], shuffle=state.get("shuffle", True),
                       drop_last=state.get("drop_last", False))
        iterator.epoch, iterator.position = int(state["epoch"]), int(state["position"])
        iterator._order = iterator._epoch_order()
        return iterator

    def _epoch_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)


def save_npz(path: str | Path, examples: list[TokenizedExample]) -> None:
    """Write pre-tokenized examples to `path` atomically: flat `input_ids`, `loss_mask`, and `offsets`
    (example i is `input_ids[offsets[i]:offsets[i+1]]`)."""
    path = Path(path)
    lengths = [len(e.input_ids) for e in examples]
    for index, example in enumerate(examples):
        if len(example.loss_mask) != len(example.input_ids):
            raise ValueError(f"example {index}: loss_mask has {len(example.loss_mask)} entries, "
                             f"input_ids has {len(example.input_ids)}")
    arrays = {
        "format_version": np.array(NPZ_FORMAT_VERSION, dtype=np.int32),
        "input_ids": np.array([i for e in examples for i in e.input_ids], dtype=np.int32),
        "loss_mask": np.array([m for e in examples for m in e.loss_mask], dtype=np.int8),
        "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
    }
    with atomic_writer(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | Path) -> list[TokenizedExample]:
    """Read a dataset written by `save_npz`; a missing or inconsistent array raises `DatasetError`."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not an NPZ file ({e})") from None
    if not hasattr(data, "files"):  # a plain .npy array, not an archive
        raise DatasetError(f"{path}: not an NPZ archive of arrays")
    with data:
        for key in ("input_ids", "loss_mask", "offsets"):
            if key not in data.files:
                raise DatasetError(f"{path}: missing array {key!r} (has {', '.join(data.files) or 'none'})")
        input_ids, loss_mask, offsets = data["input_ids"], data["loss_mask"], data["offsets"]
    if len(loss_mask) != len(input_ids):
        raise DatasetError(f"{path}: array 'loss_mask' has {len(loss_mask)} entries, 'input_ids' has "
                           f"{len(input_ids)}")
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(input_ids) or np.any(np.diff(offsets) < 0):
        raise DatasetError(f"{path}: array 'offsets' does not partition the {len(input_ids)} tokens")
    return [TokenizedExample(input_ids[a:b].tolist(), loss_mask[a:b].astype(np.int64).tolist())
            for a, b in itertools.pairwise(offsets)]
