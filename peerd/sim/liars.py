"""An attacker's table for ``peerd sim --attack``: it learns honestly and publishes lies.

``LyingTable`` wraps a node's ``QTable``; the node signs and publishes
whatever ``delta()`` and ``signatures()`` return, so the lies travel as validly
signed messages of a pinned member over the real broker. The lies themselves
are the pure transforms of ``peerd.sim.attacks``; this module only feeds them
the liar's view (μ, σ of the cells) and keeps ``focus``'s invented
contribution consistent from one publish (or sync answer) to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from peerd.delta import Delta, PatternSignature
from peerd.qtable import QTable, signature_confidence
from peerd.quarantine import evidence_weights, gather_origins
from peerd.sim.attacks import ATTACKS, focus_cells, inflated_evidence, lie_values, spread

if TYPE_CHECKING:
    from peerd.node import Node


class LyingTable:
    """A node's ``QTable`` whose *published* cells and signatures are lies of one ``kind``."""

    def __init__(self, table: QTable, kind: str, node: Node, rng: np.random.Generator) -> None:
        if kind not in ATTACKS:
            raise ValueError(f"unknown attack {kind!r}; known: {', '.join(ATTACKS)}")
        self._table, self.kind, self._node, self._rng = table, kind, node, rng
        # focus: the invented contribution, (key, action) -> [q, lw, n, version]
        self._ledger: dict[tuple[int, int], list[float]] = {}
        self._ledger_version = 0
        self._rotation = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    # ------------------------------------------------------------- the view
    def _mu(self, keys: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The liar's merged value of each cell (what the honest consensus looks like to it)."""
        vk, vq, _ = self._table.view()
        pos = np.minimum(vk.searchsorted(keys), max(vk.shape[0] - 1, 0))
        if vk.shape[0] == 0:
            return np.zeros(keys.shape[0])
        hit = vk[pos] == keys
        return np.where(hit, vq[pos, actions.astype(np.int64)], 0.0)

    def _sigma(self, keys: np.ndarray, actions: np.ndarray) -> np.ndarray:
        t = self._table
        m = gather_origins([t.delta_of(o) for o in t.origins])
        w = evidence_weights(m.lw, m.valid, t.clock() / t.half_life)
        _, sd = spread(m.q, w, m.valid)
        idx = {(int(k), int(a)): i for i, (k, a) in enumerate(zip(m.keys, m.actions, strict=True))}
        return np.array([sd[idx[(int(k), int(a))]] if (int(k), int(a)) in idx else 0.0
                         for k, a in zip(keys, actions, strict=True)])

    def _lie(self, keys: np.ndarray, actions: np.ndarray) -> np.ndarray:
        t = self._table
        mu = self._mu(keys, actions)
        sigma = self._sigma(keys, actions) if self.kind == "alie" else np.zeros_like(mu)
        return lie_values(self.kind, mu, sigma, keys, actions, n_actions=t.task.n_actions,
                          q_bound=t.q_bound)

    # ---------------------------------------------------------- what it says
    def delta(self, since: int = 0, upto: int | None = None) -> Delta:
        if self.kind == "focus":
            return self._focus_delta(since, upto)
        d = self._table.delta(since, upto)
        if not len(d):
            return d
        a = d.arrays()
        a["q"] = self._lie(d.keys, d.actions).astype(np.float32)
        if self.kind == "inflate":
            t = self._table
            a["n"], a["lw"] = inflated_evidence(d.n, t.clock() / t.half_life, t.visit_cap)
            a["succ"] = np.minimum(a["succ"], a["n"])
            a["fail"] = np.minimum(a["fail"], a["n"] - a["succ"])
        return Delta.build(d.origin, d.fingerprint, d.from_version, d.to_version, **a)

    def _focus_delta(self, since: int, upto: int | None = None) -> Delta:
        """Spend one visit per own version on the busiest cells, inverted, and remember it."""
        t = self._table
        version = t.version if upto is None else min(int(upto), t.version)
        budget = version - self._ledger_version
        if budget > 0:
            vk, _, vn = t.view()
            a = t.task.n_actions
            keys = np.repeat(vk, a)
            acts = np.tile(np.arange(a, dtype=np.uint16), vk.shape[0])
            fk, fa = focus_cells(keys, acts, vn.reshape(-1).astype(np.int64), budget, self._rotation)
            self._rotation += budget
            if fk.shape[0]:
                now = t.clock() / t.half_life
                lies = self._lie(fk, fa)
                reps = -(-budget // fk.shape[0])  # each chosen cell gets ~budget/len visits
                v = self._ledger_version
                for _ in range(reps):
                    for k, act, q in zip(fk.tolist(), fa.tolist(), lies.tolist(), strict=True):
                        if v >= version:
                            break
                        v += 1
                        cell = self._ledger.setdefault((k, act), [0.0, -np.inf, 0, 0])
                        cell[0] = q
                        cell[1] = float(np.logaddexp2(cell[1], now))
                        cell[2] += 1
                        cell[3] = v
            self._ledger_version = version
        items = sorted((kk, c) for kk, c in self._ledger.items() if since < c[3] <= version)
        m = len(items)
        if not m:
            return Delta.empty(t.node_id, t.task.fingerprint, since, max(since, version))
        return Delta.build(
            t.node_id, t.task.fingerprint, since, max(version, int(max(c[3] for _, c in items))),
            keys=np.array([kk[0] for kk, _ in items], np.uint64),
            actions=np.array([kk[1] for kk, _ in items], np.uint16),
            q=np.array([c[0] for _, c in items], np.float32),
            lw=np.array([c[1] for _, c in items], np.float64),
            n=np.array([c[2] for _, c in items], np.uint32),
            succ=np.zeros(m, np.uint32), fail=np.zeros(m, np.uint32),
            version=np.array([c[3] for _, c in items], np.uint64))

    def signatures(self, k: int = 32, upto: int | None = None) -> list[PatternSignature]:
        if self.kind == "copycat":
            others = [s for s in self._node.peer_signatures().values() if s]
            return list(others[int(self._rng.integers(len(others)))][:k]) if others else []
        honest = self._table.signatures(k, upto=upto)
        if not honest:
            return []
        t = self._table
        a = t.task.n_actions
        keys = np.array([sig.key for sig in honest], np.uint64)
        _, tried = t.own_cells(keys)
        rk = np.repeat(keys, a)
        ra = np.tile(np.arange(a, dtype=np.uint16), keys.shape[0])
        lie = self._lie(rk, ra).reshape(-1, a)
        visits = np.array([sig.visits for sig in honest], np.float64)
        best, conf = signature_confidence(lie, tried, visits)
        return [PatternSignature(sig.key, int(b), float(c), sig.visits)
                for sig, b, c in zip(honest, best.tolist(), conf.tolist(), strict=True)]


__all__ = ["LyingTable"]
