"""The key index maps keys to stable rows like a dict, whatever the collisions and growth."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.keyindex import KeyIndex

KEYS = st.lists(st.integers(0, 2**64 - 1), max_size=300)


def check_against(index: KeyIndex, model: dict[int, int], probes: list[int]) -> None:
    """Every probe finds its model row (or -1), one by one and as a batch; each key is held once."""
    assert int(np.count_nonzero(index._tab[:, 1])) == len(model)  # white-box: no duplicate slots
    want = [model.get(k, -1) for k in probes]
    got = index.lookup(np.array(probes, np.uint64)).tolist()
    assert got == want
    assert [index.find(k) for k in probes] == want


@settings(max_examples=60, deadline=None)
@given(st.lists(KEYS, min_size=1, max_size=6), KEYS)
def test_batches_of_keys_get_stable_rows_appended_in_key_order(batches: list[list[int]],
                                                               others: list[int]) -> None:
    index: KeyIndex = KeyIndex()
    model: dict[int, int] = {}
    for batch in batches:
        rows = index.ensure(np.array(batch, np.uint64))
        for k in sorted(set(batch) - set(model)):  # a batch's new keys: rows in key order
            model[k] = len(model)
        assert rows.tolist() == [model[k] for k in batch]
        check_against(index, model, batch + others)
    assert index.size == len(model)
    assert index.row_keys[: index.size].tolist() == list(model)
    assert index.sorted_keys.tolist() == sorted(model)
    assert index.row_keys[index.sorted_rows].tolist() == sorted(model)


def test_keys_that_all_collide_are_still_found_through_growth() -> None:
    """With the multiplier forced to 1, keys equal in their top bits share one home slot."""
    index = KeyIndex()
    index._mult = 1  # white-box: makes the home slot the key's top bits
    keys = (np.arange(2000, dtype=np.uint64) + np.uint64(7)) | np.uint64(0xABC0_0000_0000_0000)
    half = keys[::2]
    assert index.ensure(half).tolist() == list(range(half.shape[0]))
    rows = index.ensure(keys)  # the odd ones are new: rows after the even ones
    model = {int(k): i for i, k in enumerate(half.tolist())}
    for k in keys[1::2].tolist():
        model[int(k)] = len(model)
    assert rows.tolist() == [model[int(k)] for k in keys.tolist()]
    check_against(index, model, [*keys.tolist(), 0, 2**64 - 1, int(keys[-1]) + 2])


def test_add_and_find_one_key() -> None:
    index = KeyIndex()
    assert index.find(42) == -1
    assert index.add(42) == 0
    assert index.add(2**64 - 1) == 1
    assert index.add(42) == 0
    assert (index.find(42), index.find(2**64 - 1), index.find(0)) == (0, 1, -1)
    assert index.nbytes > 0
