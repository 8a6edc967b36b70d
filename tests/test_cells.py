"""The cell store finds each (origin, cell) entry like a dict, batch probes and inserts included."""

from __future__ import annotations

import ast
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import peerd
from peerd.cells import FREE, REC, CellStore, MergeScratch, ScratchArrays

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


def _vm_flags(address: int) -> set[str]:
    """The ``VmFlags`` of the mapping of this process that holds ``address`` (Linux)."""
    flags: set[str] = set()
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    return flags


def test_records_grow_in_place_within_the_reservation_and_keep_their_values() -> None:
    st = CellStore()
    if not st._reserved:
        pytest.skip("no MAP_NORESERVE reservation on this platform")
    base = st.rec.ctypes.data
    st.reserve_cells(300_000)
    first = st.insert(1, np.arange(5000, dtype=np.int64))
    st.fields["q"][first] = np.arange(5000, dtype=np.float32)
    assert st.cap > 1024  # it grew
    more = st.insert(1, np.arange(5000, 300_000, dtype=np.int64))
    assert st.rec.ctypes.data == base  # the same memory: neither moved nor copied
    np.testing.assert_array_equal(st.fields["q"][first], np.arange(5000, dtype=np.float32))
    np.testing.assert_array_equal(st.find(np.array([3, 299_999]), 1), [first[3], more[-1]])
    assert st.slot[0] == FREE and np.all(st.slot[more] == 1)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="huge-page advice is Linux's")
def test_bulk_batches_get_huge_page_advice_and_a_small_batch_fresh_page_does_not() -> None:
    """A batch of ≥ 2 MiB of records is advised ``hg`` (huge pages) up to its end; a small
    batch that begins a fresh 2 MiB page leaves it ``nh`` (4 KiB pages) until a later batch
    completes it, which advises it ``hg`` again."""
    st = CellStore()
    if not st._reserved:
        pytest.skip("no MAP_NORESERVE reservation on this platform")
    huge, rec = 2 << 20, REC.itemsize
    per_page = huge // rec
    st.reserve_cells(6 * per_page)
    st.insert(1, np.arange(3 * per_page + 100, dtype=np.int64))  # bulk: pages 0-3 huge
    base = st.rec.ctypes.data
    assert "hg" in _vm_flags(base + huge)
    assert "hg" in _vm_flags(base + 3 * huge + 10)  # the bulk batch's unfinished page too
    c = st.used  # the next free cell id (cells 0..used-2 are taken)
    need = 4 * per_page - st.used  # fill page 3, then begin page 4 with a small batch
    st.insert(1, np.arange(c, c + need, dtype=np.int64))
    c += need
    st.insert(1, np.arange(c, c + 1000, dtype=np.int64))
    c += 1000
    assert "nh" in _vm_flags(base + 4 * huge)
    st.insert(1, np.arange(c, c + per_page, dtype=np.int64))  # completes page 4
    assert "hg" in _vm_flags(base + 4 * huge)


def test_merge_scratch_names_the_compiled_merges_scratch_arguments_in_order() -> None:
    """``ScratchArrays`` is splatted into ``kernels_numba.merge_delta``: its fields must be that
    function's last parameters, in order (read from the source: importing it loads numba)."""
    src = (Path(peerd.__file__).parent / "kernels_numba.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(src))
              if isinstance(n, ast.FunctionDef) and n.name == "merge_delta")
    params = [a.arg for a in fn.args.args]
    assert params[-len(ScratchArrays._fields):] == list(ScratchArrays._fields)
    scratch = MergeScratch()
    got = scratch.get(100)
    assert isinstance(got, ScratchArrays) and scratch.get(50) is got  # kept across deltas
    assert all(a.shape[0] >= 100 for a in got)
    assert got.n_old.dtype == np.uint32 and got.vc.dtype == np.uint64
    assert scratch.get(MergeScratch.KEEP + 1) is not scratch.arrays  # a bulk load's own
