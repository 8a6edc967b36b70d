"""``Task`` fingerprints and canonical, keyed state keys (DESIGN §1)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.errors import InvalidState, UnknownAction
from peerd.task import STATE_ENCODING_VERSION, Task, canonical_state, state_key

SECRET = "federation-secret"

# JSON-able states: scalars, lists, str-keyed dicts, nested
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                     st.floats(allow_nan=False, allow_infinity=False))
states = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)


def _variant(x: object, rng: random.Random) -> object:
    """The same state spelled differently: tuples for lists, shuffled dicts, 1.0 for 1, numpy ints."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        if abs(x) < 2**53 and rng.random() < 0.5:
            return float(x)
        return np.int64(x) if -2**63 <= x < 2**63 and rng.random() < 0.5 else x
    if isinstance(x, float):
        return np.float64(x) if rng.random() < 0.5 else x
    if isinstance(x, list):
        items = [_variant(v, rng) for v in x]
        return tuple(items) if rng.random() < 0.5 else items
    if isinstance(x, dict):
        items = [(k, _variant(v, rng)) for k, v in x.items()]
        rng.shuffle(items)
        return dict(items)
    raise AssertionError(type(x))


@settings(max_examples=200, deadline=None)
@given(state=states, seed=st.integers(0, 2**32))
def test_equal_states_spelled_differently_get_the_same_key(state: object, seed: int) -> None:
    """Tuples == lists, dict key order is irrelevant, 1.0 == 1, numpy scalars are plain numbers."""
    other = _variant(state, random.Random(seed))
    assert canonical_state(other) == canonical_state(state)
    assert state_key(other, SECRET) == state_key(state, SECRET)
    assert 0 <= state_key(state, SECRET) < 2**64


def test_canonical_examples() -> None:
    """Hand-picked equalities and differences of the canonical encoding."""
    key = lambda s: state_key(s, SECRET)  # noqa: E731
    assert key((1, "a")) == key([1, "a"]) == key([np.int32(1), "a"]) == key((1.0, "a"))
    assert key({"x": 1, "y": [2, 3]}) == key({"y": (2, 3), "x": np.uint8(1)})
    assert key(np.float64(2.5)) == key(2.5)
    assert key(1) != key("1")
    assert key(1) != key(True)  # a boolean is not a number
    assert key([1, 2]) != key([2, 1])
    assert key({"a": 1}) != key({"a": 1, "b": None})
    assert canonical_state({"b": 1, "a": [1.0, None]}) == b'{"a":[1,null],"b":1}'


def test_the_secret_changes_every_key() -> None:
    """Keys are keyed BLAKE2b: another federation secret gives unrelated keys; long secrets work."""
    for s in ("s0", ("pos", 3), {"room": [1, 2]}):
        assert state_key(s, "one") != state_key(s, "two")
        assert state_key(s, b"one") == state_key(s, "one")
    long = "x" * 200  # over BLAKE2b's 64-byte key limit: compressed first
    assert state_key("s", long) != state_key("s", "x" * 201)


@pytest.mark.parametrize("bad", [
    {1, 2}, b"bytes", object(), float("nan"), float("inf"), [1, float("-inf")], {1: "int key"},
    {"a": {"b": {3.5: 1}}}, np.array([1, 2]), complex(1, 2),
])
def test_unsupported_states_raise_invalid_state(bad: object) -> None:
    """Sets, bytes, arbitrary objects, NaN/inf, non-str dict keys and arrays raise InvalidState."""
    with pytest.raises(InvalidState):
        state_key(bad, SECRET)


def test_invalid_state_is_a_type_error() -> None:
    """InvalidState is also a TypeError, so callers that catch TypeError keep working."""
    assert issubclass(InvalidState, TypeError)


# ----------------------------------------------------------------------------- Task


def test_fingerprint_is_stable() -> None:
    """The fingerprint is on the wire: it must not change between runs, versions or machines."""
    assert Task(["left", "right", "stay"], gamma=0.9).fingerprint == "ab6b60a3ddcaf9b5"
    assert Task(6, gamma=0.99).fingerprint == "d61ed4cbff30a23a"
    assert Task(2).fingerprint == "edf6ad7a551e10a5"
    assert Task(["a", "b"], gamma=0.5).fingerprint == Task(("a", "b"), gamma=np.float64(0.5)).fingerprint


def test_fingerprint_is_sensitive_to_actions_gamma_and_encoding_only() -> None:
    """Action names and order, γ and the encoding version change it; the task's name does not."""
    base = Task(["a", "b", "c"], gamma=0.9)
    others = [Task(["a", "b"], gamma=0.9), Task(["a", "c", "b"], gamma=0.9),
              Task(["a", "b", "d"], gamma=0.9), Task(["a", "b", "c"], gamma=0.91),
              Task(["a", "b", "c"], gamma=0.9, encoding=STATE_ENCODING_VERSION + 1)]
    fps = {base.fingerprint} | {t.fingerprint for t in others}
    assert len(fps) == len(others) + 1
    assert Task(["a", "b", "c"], gamma=0.9, name="other").fingerprint == base.fingerprint
    assert Task(3).actions == ("0", "1", "2") and Task(3) == Task(["0", "1", "2"])


def test_task_rejects_bad_definitions() -> None:
    """No actions, duplicate names, too many actions or γ outside [0, 1] are refused."""
    with pytest.raises(UnknownAction):
        Task([])
    with pytest.raises(UnknownAction):
        Task(["a", "a"])
    with pytest.raises(UnknownAction):
        Task(65536)
    for g in (-0.1, 1.5):
        with pytest.raises(ValueError):
            Task(2, gamma=g)


def test_action_index_by_name_or_index() -> None:
    """Actions are addressed by name or index; anything else raises UnknownAction."""
    t = Task(["up", "down"])
    assert t.action_index("down") == 1 and t.action_index(0) == 0 and t.action_index(np.int64(1)) == 1
    assert t.n_actions == 2
    for bad in ("left", 2, -1, 1.0):
        with pytest.raises(UnknownAction):
            t.action_index(bad)
