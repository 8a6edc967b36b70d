"""Relayed catch-up: keep origins' own signed messages, re-send them verbatim. Pure: no I/O.

DESIGN §4: any node that holds origin X's cells may answer a sync for X when X
is silent, without being able to forge X's cells. So a relayer never
re-encodes X's cells: it keeps the *payloads X signed* (its deltas, and its
latest birth so that a newcomer can pin X's key, trust on first use as for
any birth) and re-sends them unchanged on ``peerd/v1/{f}/relay/{relayer}``.
A receiver verifies each one with X's key exactly as if X had sent it, and
applies it through the CRDT, where duplicates and reordering are harmless.

``RelayStore`` keeps, per origin, the delta payloads that still carry the
latest known version of at least one cell: a newer payload's cells supersede
older ones, and a payload left with no live cell is dropped. Storage is also
bounded in bytes per origin (oldest payloads go first). A node with a durable
store keeps only the index in memory (``keep_payloads=False``): the delta
payloads themselves are in the store, read back when a relay is sent (rarely),
which saves ~70 MB of a node holding 1000 peers.

``RelayPlanner`` decides *when*: a relay is due after a random delay (so that
of many holders usually one speaks), and is cancelled when another node relays
the same origin first or the origin itself answers. An origin is relayed at
most once per ``min_interval``: births of new ids cost an attacker nothing, and
must not make every holder re-send megabytes each time.

A node uses both through its ``RelayDesk`` (``peerd.relay_desk``), which adds
the I/O: the node's store, its transport, the relayed messages it receives.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RelayPlanner", "RelayStore"]

Stamp = tuple[int, int]  # (epoch, seq) of the origin's signed header


#: Odd 64-bit constant: a cell's id is ``key XOR action·MIX`` (keys are keyed 64-bit hashes, so
#: two cells of one origin share an id with probability ~2^-64; a shared id could only make a
#: relay smaller — a payload dropped early — never wrong: receivers verify and merge each cell).
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(slots=True)
class _Frame:
    stamp: Stamp
    payload: bytes | None  # None: kept by the node's store only
    to_version: int
    live: int  # cells whose latest known version this payload carries
    fid: int = 0
    size: int = 0  # bytes of the payload


@dataclass
class _Origin:
    """One origin's kept payloads and, per cell, the newest version seen and its payload.

    The per-cell index is three sorted numpy arrays (24 B a cell): a dict of
    tuples cost ~300 B a cell, 150 MB for a node holding 1000 peers' cells.
    """

    birth: tuple[Stamp, bytes] | None = None
    frames: dict[Stamp, _Frame] = field(default_factory=dict)
    cid: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))  # sorted cell ids
    ver: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    fid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    stamp_of: dict[int, Stamp] = field(default_factory=dict)
    next_fid: int = 1
    size: int = 0


class RelayStore:
    """Origins' signed payloads, compacted: what a relayer can re-send on their behalf."""

    def __init__(self, *, max_bytes_per_origin: int = 8 * 1024 * 1024,
                 keep_payloads: bool = True) -> None:
        self.max_bytes_per_origin = max_bytes_per_origin
        #: False: delta payloads are not held in memory (the caller's store has them)
        self.keep_payloads = keep_payloads
        self._origins: dict[str, _Origin] = {}
        #: payloads dropped by the byte bound while still live (their cells are not relayable)
        self.evicted = 0

    def origins(self) -> list[str]:
        return [o for o, s in self._origins.items() if s.frames]

    def size(self, origin: str) -> int:
        s = self._origins.get(origin)
        return s.size if s else 0

    def add_birth(self, origin: str, stamp: Stamp, payload: bytes) -> bool:
        """Keep the origin's newest signed birth (a newcomer pins the origin's key from it).

        True if it is kept (it replaces any earlier one).
        """
        s = self._origins.setdefault(origin, _Origin())
        if s.birth is None or stamp > s.birth[0]:
            s.birth = (stamp, bytes(payload))
            return True
        return False

    def add_delta(self, origin: str, stamp: Stamp, payload: bytes, to_version: int,
                  cells: Iterable[tuple[int, int, int]] | tuple[np.ndarray, np.ndarray, np.ndarray],
                  ) -> tuple[bool, list[Stamp]]:
        """Keep a delta payload of ``origin`` whose cells are ``(key, action, version)``.

        ``cells`` is an iterable of triples or a tuple of three arrays (keys,
        actions, versions). Returns whether the payload is kept, and the stamps
        of the payloads it made unnecessary (superseded or evicted): what a
        persistent copy may delete. Vectorised: O(cells · log(origin's cells)).
        """
        s = self._origins.setdefault(origin, _Origin())
        if stamp in s.frames:
            return False, []  # a duplicate (QoS 1 redelivery, another relay)
        keys, acts, vers = _cell_arrays(cells)
        dropped: list[Stamp] = []
        if keys.shape[0] == 0:
            return False, dropped
        cid = keys ^ (acts * _MIX)
        order = np.lexsort((vers, cid))  # newest last within equal ids
        cid, vers = cid[order], vers[order]
        last = np.ones(cid.shape[0], bool)
        last[:-1] = cid[1:] != cid[:-1]
        cid, vers = cid[last], vers[last]
        pos = np.searchsorted(s.cid, cid)
        if s.cid.shape[0]:
            at = np.minimum(pos, s.cid.shape[0] - 1)
            found = s.cid[at] == cid
            newer = ~found | (vers > np.where(found, s.ver[at], 0))
        else:
            at, found, newer = pos, np.zeros(cid.shape[0], bool), np.ones(cid.shape[0], bool)
        live = int(np.count_nonzero(newer))
        if live == 0:
            return False, dropped  # everything in it is already known in newer payloads
        fid = s.next_fid
        s.next_fid += 1
        upd = found & newer
        if upd.any():
            rows = at[upd]
            # a delta has a handful of cells: counting in Python beats np.unique's overhead
            for f, c in sorted(Counter(s.fid[rows].tolist()).items()):
                self._release(s, f, c, dropped)
            s.ver[rows] = vers[upd]
            s.fid[rows] = fid
        ins = ~found
        if ins.any():
            s.cid, s.ver, s.fid = _insert_sorted(pos[ins], (s.cid, cid[ins]), (s.ver, vers[ins]),
                                                 (s.fid, fid))
        frame = _Frame(stamp, bytes(payload) if self.keep_payloads else None, int(to_version),
                       live, fid, len(payload))
        s.frames[stamp] = frame
        s.stamp_of[fid] = stamp
        s.size += frame.size
        while s.size > self.max_bytes_per_origin and len(s.frames) > 1:
            oldest = min(s.frames)
            self.evicted += 1
            self._drop(s, oldest)
            dropped.append(oldest)
        return True, dropped

    def _release(self, s: _Origin, fid: int, cells: int, dropped: list[Stamp]) -> None:
        stamp = s.stamp_of.get(fid)
        frame = None if stamp is None else s.frames.get(stamp)
        if frame is None:
            return  # already evicted
        frame.live -= cells
        if frame.live <= 0:
            self._drop(s, frame.stamp)
            dropped.append(frame.stamp)

    @staticmethod
    def _drop(s: _Origin, stamp: Stamp) -> None:
        frame = s.frames.pop(stamp)
        s.stamp_of.pop(frame.fid, None)
        s.size -= frame.size

    def kept(self, origin: str, since: int = 0) -> list[tuple[str, Stamp, bytes | None]]:
        """``(kind, stamp, payload)`` of the origin's birth (if kept), then of its delta payloads
        reaching past ``since``, oldest first; a delta's payload is None when not kept in memory."""
        s = self._origins.get(origin)
        if s is None:
            return []
        out: list[tuple[str, Stamp, bytes | None]] = (
            [("birth", s.birth[0], s.birth[1])] if s.birth is not None else [])
        out += [("delta", st, f.payload) for st, f in sorted(s.frames.items())
                if f.to_version > since]
        return out

    def reaches_past(self, origin: str, since: int) -> bool:
        """Whether a delta payload of ``origin`` reaches past version ``since``: what a sync
        request for it lacks. A kept birth alone answers nothing (whoever asks for an origin
        has heard of it); relaying one to every request for an origin that has published
        nothing yet made each holder re-send births at a fleet's start, N² of them."""
        s = self._origins.get(origin)
        return s is not None and any(f.to_version > since for f in s.frames.values())

    def payloads(self, origin: str, since: int = 0) -> list[bytes]:
        """The payloads of ``kept`` that are held in memory (all of them with ``keep_payloads``)."""
        return [p for _kind, _stamp, p in self.kept(origin, since) if p is not None]

    def forget(self, origin: str) -> None:
        self._origins.pop(origin, None)


def _insert_sorted(where: np.ndarray, *columns: tuple[np.ndarray, np.ndarray | int],
                   ) -> list[np.ndarray]:
    """``np.insert(old, where, new)`` for several columns at once, the positions computed once."""
    k = where.shape[0]
    n = columns[0][0].shape[0]
    dest = where + np.arange(k)  # where the new entries land in the grown arrays
    keep = np.ones(n + k, bool)
    keep[dest] = False
    out = []
    for old, new in columns:
        grown = np.empty(n + k, old.dtype)
        grown[dest] = new
        grown[keep] = old
        out.append(grown)
    return out


def _cell_arrays(cells: Iterable[tuple[int, int, int]] | tuple[np.ndarray, np.ndarray, np.ndarray],
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys u64, actions u64, versions u64)`` from triples or from three arrays."""
    if isinstance(cells, tuple) and len(cells) == 3 and all(isinstance(c, np.ndarray) for c in cells):
        k, a, v = cells
    else:
        rows = list(cells)
        if not rows:
            z = np.empty(0, np.uint64)
            return z, z, z
        k, a, v = (np.array(col, dtype=np.uint64) for col in zip(*rows, strict=True))
    return (np.asarray(k, np.uint64), np.asarray(a, np.uint64), np.asarray(v, np.uint64))


class RelayPlanner:
    """When to relay an origin: after a random delay, unless someone else did it first."""

    def __init__(self, *, delay: float = 1.0, min_interval: float = 10.0, max_hold: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.delay = delay
        self.min_interval = min_interval
        #: longest a due plan waits for the node to read its backlog (``due(hold=True)``)
        self.max_hold = max_hold
        self._rng = rng or random.Random()
        self._due: dict[str, tuple[int, float]] = {}  # origin -> (since, due time)
        self._last: dict[str, float] = {}  # origin -> when it was last relayed

    def want(self, origin: str, since: int, now: float, *, wait: float = 0.0) -> None:
        """Plan a relay of ``origin`` after ``since``, at least ``wait`` from now (plus jitter)."""
        due = now + wait + self._rng.uniform(0.0, self.delay)
        due = max(due, self._last.get(origin, -1e18) + self.min_interval)
        old = self._due.get(origin)
        if old is not None:
            since, due = min(since, old[0]), min(due, old[1])
        self._due[origin] = (since, due)

    def covered(self, origin: str, from_version: int) -> None:
        """Someone sent ``origin``'s cells from ``from_version`` on: a plan from there is moot.

        ``from_version=0``: another node relays the origin (its birth came first); our
        plan goes even if it was for a later ``since`` (whoever still lacks cells asks again).
        """
        old = self._due.get(origin)
        if old is not None and from_version <= old[0]:
            del self._due[origin]

    def due(self, now: float, *, hold: bool = False) -> list[tuple[str, int]]:
        """The plans whose time has come (taken: each is returned once).

        ``hold``: the node has received messages it has not read yet. Whether the
        origin (or another holder) answered is in them, so a plan waits until
        they are read, ``max_hold`` past its time at most. Without this, a node
        whose inbound queue ran longer than a plan's wait relayed an origin that
        had answered long ago; under load every holder did, for every origin a
        newcomer asked from 0 (hundreds of payloads each, to every node), which
        lengthened every queue further: a fresh sybil in the simulation left
        ~1,100 messages queued at every node, over half of all applied deltas
        were relayed ones, and the delivery wait stalled.
        """
        out = [(o, since) for o, (since, t) in self._due.items()
               if t <= now and (not hold or now - t >= self.max_hold)]
        for o, _ in out:
            del self._due[o]
            self._last[o] = now
        return out

    def forget(self, origin: str) -> None:
        self._due.pop(origin, None)
        self._last.pop(origin, None)

    def pending(self) -> int:
        return len(self._due)
