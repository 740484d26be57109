"""Padding, length bucketing, packing, resumable batch order, and NPZ datasets."""

import numpy as np
import pytest

from lazarus.data.batching import (
    BatchIterator,
    bucket_by_length,
    load_npz,
    pack_examples,
    pad_batch,
    save_npz,
)
from lazarus.data.records import DatasetError
from lazarus.data.tokenize import TokenizedExample


def test_pad_batch_pads_right_or_left_and_returns_lengths():
    batch, lengths = pad_batch([[1, 2, 3], [4]], pad_id=0)
    assert batch.dtype == np.int32 and batch.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert lengths.tolist() == [3, 1]
    left, _ = pad_batch([[1, 2, 3], [4]], pad_id=9, side="left")
    assert left.tolist() == [[1, 2, 3], [9, 9, 4]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")


def test_bucket_by_length_groups_similar_lengths_covers_every_index_once_and_is_seeded():
    # given: lengths in two clusters
    lengths = [3, 50, 4, 51, 2, 52, 5, 49]
    # when
    batches = bucket_by_length(lengths, batch_size=4, seed=1)
    # then
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert sorted(sorted(lengths[i] for i in b) for b in batches) == [[2, 3, 4, 5], [49, 50, 51, 52]]
    assert batches == bucket_by_length(lengths, batch_size=4, seed=1)


def test_pack_examples_fills_rows_in_order_and_masks_the_first_token_of_later_examples():
    # given
    examples = [TokenizedExample([1, 2, 3], [1, 1, 1]), TokenizedExample([4, 5], [1, 1]),
                TokenizedExample([6, 7, 8, 9], [0, 1, 1, 1])]
    # when
    packed = pack_examples(examples, max_length=5)
    # then
    assert [p.input_ids for p in packed] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert [p.loss_mask for p in packed] == [[1, 1, 1, 0, 1], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="example 2 has 4 tokens, more than max_length=3"):
        pack_examples(examples, max_length=3)


def test_batch_iterator_visits_every_item_once_per_epoch_and_reshuffles_between_epochs():
    iterator = BatchIterator(10, batch_size=4, seed=3)
    epoch0 = [iterator.next_indices() for _ in range(3)]
    epoch1 = [iterator.next_indices() for _ in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    order0, order1 = [i for b in epoch0 for i in b], [i for b in epoch1 for i in b]
    assert sorted(order0) == list(range(10)) == sorted(order1)
    assert order0 != order1
    assert iterator.state()["epoch"] == 1


def test_batch_iterator_drop_last_skips_the_short_batch():
    iterator = BatchIterator(10, batch_size=4, seed=0, drop_last=True)
    assert [len(iterator.next_indices()) for _ in range(4)] == [4, 4, 4, 4]
    assert iterator.state()["epoch"] == 1


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 7])
def test_batch_iterator_resumed_from_state_reproduces_the_rest_of_the_sequence(stop_after):
    # given: an uninterrupted run of 10 batches
    reference = BatchIterator(9, batch_size=4, seed=11)
    expected = [reference.next_indices() for _ in range(10)]
    # when: another run stops after `stop_after` batches and a new iterator resumes from its state
    first = BatchIterator(9, batch_size=4, seed=11)
    head = [first.next_indices() for _ in range(stop_after)]
    resumed = BatchIterator.from_state(9, 4, dict(first.state()))
    tail = [resumed.next_indices() for _ in range(10 - stop_after)]
    # then
    assert head + tail == expected


def test_batch_iterator_refuses_state_of_a_different_dataset_size():
    state = BatchIterator(9, batch_size=4, seed=0).state()
    with pytest.raises(ValueError, match="the dataset has 10 items but the saved batch state is for 9"):
        BatchIterator.from_state(10, 4, state)


def test_npz_round_trip_keeps_ragged_examples(tmp_path):
    examples = [TokenizedExample([5, 6, 7], [0, 1, 1]), TokenizedExample([], []), TokenizedExample([8], [1])]
    save_npz(tmp_path / "train.npz", examples)
    assert load_npz(tmp_path / "train.npz") == examples
    assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]  # no temp file left behind


def test_load_npz_names_the_file_and_the_missing_array(tmp_path):
    np.savez(tmp_path / "bad.npz", input_ids=np.zeros(3, np.int32), offsets=np.array([0, 3]))
    with pytest.raises(DatasetError, match=r"bad.npz: missing array 'loss_mask'"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "off.npz", input_ids=np.zeros(3, np.int32), loss_mask=np.zeros(3, np.int8),
             offsets=np.array([0, 2]))
    with pytest.raises(DatasetError, match=r"off.npz: array 'offsets' does not partition"):
        load_npz(tmp_path / "off.npz")


def test_save_npz_rejects_a_misaligned_example_and_keeps_the_previous_file(tmp_path):
    # given: a good file already written
    good = [TokenizedExample([1, 2], [0, 1])]
    save_npz(tmp_path / "d.npz", good)
    # when: writing a bad dataset over it
    with pytest.raises(ValueError, match="example 1: loss_mask has 1 entries, input_ids has 2"):
        save_npz(tmp_path / "d.npz", good + [TokenizedExample([3, 4], [1])])
    # then
    assert load_npz(tmp_path / "d.npz") == good
