"""The cell store finds each (origin, cell) entry like a dict, batch probes and inserts included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.cells import CellStore

BATCH = st.lists(st.integers(0, 5000), min_size=0, max_size=400, unique=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), BATCH), min_size=1, max_size=8))
def test_probe_then_insert_at_the_gaps_keeps_every_entry_findable(
        batches: list[tuple[int, list[int]]]) -> None:
    """Inserting new cells where their probe ended (``gaps``) is the same as probing again."""
    store = CellStore(capacity=16)
    model: dict[tuple[int, int], int] = {}
    for slot, batch in batches:
        cells = np.array(batch, np.int64)
        store.reserve_cells(5001)
        e, gaps = store.probe(cells, slot)
        assert e.tolist() == [model.get((slot, c), -1) for c in batch]
        absent = e < 0
        ids = store.insert(slot, cells[absent], None if gaps is None else gaps[absent])
        for c, i in zip(cells[absent].tolist(), ids.tolist(), strict=True):
            model[(slot, c)] = i
        for s in (1, 2, 3):
            probe = np.arange(0, 5001, 7, dtype=np.int64)
            assert store.find(probe, s).tolist() == [model.get((s, c), -1) for c in probe.tolist()]
            assert store.count(s) == sum(1 for (s2, _) in model if s2 == s)
    assert store.pairs == len(model)
    assert all(int(store.cell[i]) == c for (_, c), i in model.items())


def test_new_cells_that_share_a_gap_are_all_inserted() -> None:
    """Cells probing into one cluster end at the same empty slot: one takes it, the rest go on."""
    store = CellStore()
    store.reserve_cells(1 << 16)
    cells = np.random.default_rng(3).permutation(1 << 16)[:3000].astype(np.int64)
    first, new = cells[:2000], cells[2000:]
    store.insert(1, first)  # the hash is sized for these at 1/4 full: 1000 more fit without growing
    e, gaps = store.probe(new, 1)
    assert (e < 0).all() and gaps is not None
    assert np.unique(gaps).shape[0] < gaps.shape[0]  # some gaps are shared: the race is exercised
    ids = store.insert(1, new, gaps)
    assert np.unique(ids).shape[0] == new.shape[0]
    assert store.find(new, 1).tolist() == ids.tolist()
    assert store.find(first, 1).min() >= 0
    assert store.count(1) == first.shape[0] + new.shape[0]
