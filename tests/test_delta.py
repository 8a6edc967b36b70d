"""``Delta.split``: pieces that fit a size limit, with contiguous version ranges and no cell lost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd import kernels
from peerd.delta import CELL_FIELDS, Delta


def make(n: int, seed: int) -> Delta:
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(10**6, size=n, replace=False)).astype(np.uint64)
    version = rng.permutation(np.arange(5, 5 + n)).astype(np.uint64)
    return Delta.build("o", "fp", 4, 4 + n + 3, keys=keys, actions=rng.integers(0, 3, n),
                       q=rng.normal(size=n), lw=rng.random(n), n=np.ones(n), succ=np.zeros(n),
                       fail=np.zeros(n), version=version)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), max_cells=st.integers(1, 64), seed=st.integers(0, 10**6))
def test_split_pieces_cover_the_delta_with_contiguous_versions(n: int, max_cells: int, seed: int) -> None:
    """Every piece has at most max_cells cells, ranges chain from..to, and together they are the delta."""
    d = make(n, seed)
    pieces = d.split(max_cells)
    assert all(len(p) <= max_cells for p in pieces)
    assert pieces[0].from_version == d.from_version and pieces[-1].to_version == d.to_version
    for a, b in itertools.pairwise(pieces):
        assert a.to_version == b.from_version
    for p in pieces:
        p.validate(fingerprint="fp", n_actions=3)  # versions inside each piece's range, sorted cells
        order = np.lexsort((p.actions, p.keys))
        assert np.array_equal(order, np.arange(len(p)))
    joined = {f: np.concatenate([getattr(p, f) for p in pieces]) for f in CELL_FIELDS}
    idx = np.lexsort((joined["actions"], joined["keys"]))
    for f in CELL_FIELDS:
        assert np.array_equal(joined[f][idx], getattr(d, f))


def test_a_delta_that_fits_is_not_copied() -> None:
    """split() of a delta within the limit returns that very delta."""
    d = make(10, 1)
    assert d.split(10) == [d] and d.split(10)[0] is d


@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_validate_returns_the_largest_lw_and_version(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounds validate hands the merge are the arrays' maxima, on both scan paths."""
    if path == "numba":
        if not kernels.available():
            pytest.skip("numba not installed (the [fast] extra) or PEERD_NO_NUMBA set")
        assert kernels.load() is not None
    else:
        monkeypatch.setattr(kernels, "loaded", lambda: None)
    d = make(1000, 3)  # >= the compiled scan's threshold
    b = d.validate(fingerprint="fp", n_actions=3)
    assert abs(b.lw_max - float(d.lw.max())) <= 1e-12 * max(1.0, abs(float(d.lw.max())))
    assert b.version_max == int(d.version.max())
    assert d.validate(fingerprint="fp", n_actions=3).lw_max > float(np.median(d.lw))
    empty = Delta.empty("o", "fp")
    assert empty.validate(fingerprint="fp", n_actions=3).version_max == 0
