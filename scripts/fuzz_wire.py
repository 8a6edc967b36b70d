"""Fuzz ``peerd.wire.decode`` at volume: it must accept valid signed originals and nothing else.

Each round makes one valid, signed message (random type, fields and arrays),
then feeds the decoder mutants of it — random bytes, truncations, bit flips,
valid msgpack of the wrong shape, re-signed semantic corruptions (NaN, 10^9-cell
claims, wrong version, bad dtypes, zip bombs...), forgeries and replays —
and finally the original itself. The decoder must reject every mutant with a
``WireError`` (never anything else), accept the original afterwards (a
rejected message changes nothing), and whatever it accepts must be a signed
original byte for byte.

    python scripts/fuzz_wire.py --count 100000 --json [--seed S]

Exit status 1 if anything crashed, a non-original was accepted, or an
original was rejected.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.delta import Delta, PatternSignature
from peerd.errors import WireError
from peerd.identity import Identity, Verifier
from peerd.task import Task
from peerd.wire import (
    Birth,
    Death,
    DeltaMsg,
    Header,
    Heartbeat,
    Message,
    SyncRequest,
    decode,
    encode,
    peek,
)

FED = "fuzz"
TASK = Task(6)
N_ACTIONS = TASK.n_actions
#: A small payload limit keeps "oversized" mutants cheap to build.
MAX_PAYLOAD = 128 * 1024
Fields = dict[str, Any]


@dataclass
class Stats:
    """What the fuzzer saw; ``ok`` is the pass/fail verdict."""

    messages: int = 0
    accepted: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    accepted_not_original: int = 0
    originals_rejected: int = 0
    mutations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.crashes == 0 and self.accepted_not_original == 0 \
            and self.originals_rejected == 0

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "accepted": self.accepted,
                "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
                "crashes": self.crashes, "accepted_not_original": self.accepted_not_original,
                "originals_rejected": self.originals_rejected,
                "mutations": dict(sorted(self.mutations.items()))}

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


def frame(fields: Fields, signer: Identity) -> bytes:
    """Pack and sign arbitrary body fields as a v1 payload (for crafted messages)."""
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb({"v": 1, "b": body, "s": signer.sign(body)}, use_bin_type=True)


def body_fields(payload: bytes) -> Fields:
    """A fresh, mutable copy of a payload's body fields."""
    return msgpack.unpackb(peek(payload, max_payload=1 << 30).body, raw=False)


# ---------------------------------------------------------------- valid messages

def random_delta(rng: np.random.Generator, rnd: random.Random, origin: str) -> Delta:
    """A valid delta of 0..300 cells: sorted or not, with or without outcomes."""
    m = rnd.choice([0, 1, 5, 63, 64, 65, rnd.randrange(0, 300)])
    lo = rnd.randrange(0, 10**6)
    keys = rng.integers(0, 2**64, m, dtype=np.uint64, endpoint=False)
    if rnd.random() < 0.7:
        keys.sort()
    n = rng.integers(1, 50, m)
    succ = rng.integers(0, n + 1) if rnd.random() < 0.3 else np.zeros(m)
    fail = rng.integers(0, n - succ + 1) if rnd.random() < 0.3 else np.zeros(m)
    return Delta.build(origin, TASK.fingerprint, lo, lo + m + rnd.randrange(0, 5),
                       keys=keys, actions=rng.integers(0, N_ACTIONS, m),
                       q=rng.normal(0, 5, m), lw=rng.uniform(0, 3e6, m), n=n, succ=succ,
                       fail=fail, version=lo + 1 + rng.permutation(m))


def random_signatures(rng: np.random.Generator, rnd: random.Random
                      ) -> tuple[PatternSignature, ...]:
    k = rnd.choice([0, 1, 3, rnd.randrange(0, 100)])
    keys = rng.integers(0, 2**64, k, dtype=np.uint64).tolist()
    return tuple(PatternSignature(int(key), rnd.randrange(N_ACTIONS), rnd.random(),
                                  rnd.randrange(0, 10**6)) for key in keys)


class Node:
    """A fuzzed sender: its key and its (epoch, seq) counter."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self.identity = Identity.from_seed(seed)
        self.epoch = 1
        self.seq = 0

    def header(self, rnd: random.Random) -> Header:
        if rnd.random() < 0.01:  # a restart: new epoch, seq from zero
            self.epoch += 1
            self.seq = 0
        self.seq += 1
        return Header(FED, self.name, TASK.fingerprint, self.epoch, self.seq,
                      1.7e9 + rnd.random() * 1e6)


def random_message(node: Node, rng: np.random.Generator, rnd: random.Random) -> Message:
    h = node.header(rnd)
    kind = rnd.choices(["delta", "birth", "death", "heartbeat", "sync"], [6, 1, 1, 2, 1])[0]
    if kind == "delta":
        origin = node.name if rnd.random() < 0.8 else f"relay{rnd.randrange(5)}"
        return DeltaMsg(h, random_delta(rng, rnd, origin), random_signatures(rng, rnd))
    if kind == "birth":
        return Birth(h, node.identity.public_key, rnd.randrange(0, 10**9))
    if kind == "death":
        return Death(h)
    if kind == "heartbeat":
        return Heartbeat(h, rnd.randrange(0, 10**9), rnd.randrange(0, 10**6))
    return SyncRequest(h, f"n{rnd.randrange(5)}", rnd.randrange(0, 10**9))


# ---------------------------------------------------------------- byte mutations

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xC6, 0xCF, 0xD3, 0xDC, 0xDD,
                     0xDE, 0xDF, 0xFF)


def m_random_bytes(p: bytes, rnd: random.Random) -> bytes:
    return rnd.randbytes(rnd.randrange(0, 300))


def m_truncate(p: bytes, rnd: random.Random) -> bytes:
    return p[:rnd.randrange(0, len(p))]


def m_bitflip(p: bytes, rnd: random.Random) -> bytes:
    b = bytearray(p)
    for _ in range(rnd.choice([1, 1, 1, 2, 3, 8])):
        i = rnd.randrange(len(b))
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def m_byteset(p: bytes, rnd: random.Random) -> bytes:
    b = bytearray(p)
    for _ in range(rnd.randint(1, 4)):
        b[rnd.randrange(len(b))] = rnd.choice(INTERESTING_BYTES)
    return bytes(b)


def m_splice(p: bytes, rnd: random.Random) -> bytes:
    i = rnd.randrange(len(p))
    j = min(len(p), i + rnd.randint(1, 16))
    return p[:i] + (rnd.randbytes(rnd.randint(0, 16)) if rnd.random() < 0.5 else b"") + p[j:]


def m_extend(p: bytes, rnd: random.Random) -> bytes:
    return p + rnd.randbytes(rnd.randint(1, 32))


def m_oversized(p: bytes, rnd: random.Random) -> bytes:
    return p + bytes(MAX_PAYLOAD + 1 - len(p) + rnd.randrange(0, 100))


def _random_object(rnd: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "neg", "big", "float", "nan", "str", "bytes", "none", "bool"]
    if depth < 4:
        kinds += ["list", "map", "map"]
    k = rnd.choice(kinds)
    if k == "int":
        return rnd.randrange(0, 300)
    if k == "neg":
        return -rnd.randrange(1, 2**63)
    if k == "big":
        return rnd.choice([2**63, 2**64 - 1, 10**9])
    if k == "float":
        return rnd.uniform(-1e9, 1e9)
    if k == "nan":
        return rnd.choice([float("nan"), float("inf"), -float("inf")])
    if k == "str":
        return rnd.choice(["v", "b", "s", "type", "delta", "birth", "", "x" * 70, "a/b"])
    if k == "bytes":
        return rnd.randbytes(rnd.choice([0, 1, 32, 64, 65]))
    if k == "none":
        return None
    if k == "bool":
        return rnd.random() < 0.5
    if k == "list":
        return [_random_object(rnd, depth + 1) for _ in range(rnd.randrange(0, 5))]
    keys = ["v", "b", "s", "type", "fed", "node", "fp", "epoch", "seq", "ts", "cells", "dt",
            "n", "c", "d", "pk", "version", "size", "origin", "since", "from", "to", "sigs"]
    return {rnd.choice(keys): _random_object(rnd, depth + 1) for _ in range(rnd.randrange(0, 8))}


def m_random_msgpack(p: bytes, rnd: random.Random) -> bytes:
    """Valid msgpack of the wrong shape, as the payload or as a (correctly framed) body."""
    obj = _random_object(rnd)
    if rnd.random() < 0.5:
        return msgpack.packb(obj, use_bin_type=True)
    body = msgpack.packb(obj, use_bin_type=True)
    return msgpack.packb({"v": 1, "b": body, "s": rnd.randbytes(64)}, use_bin_type=True)


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "random_bytes": m_random_bytes, "truncate": m_truncate, "bitflip": m_bitflip,
    "byteset": m_byteset, "splice": m_splice, "extend": m_extend, "oversized": m_oversized,
    "random_msgpack": m_random_msgpack,
}


# ---------------------------------------------------------------- semantic mutations
# Each edits a copy of the body fields (returning False when it does not apply);
# the result is re-signed with the sender's true key, so only validation can reject it.

REQUIRED = ("v", "type", "fed", "node", "fp", "epoch", "seq", "ts")
CELL_NAMES = ("keys", "actions", "q", "lw", "n", "succ", "fail", "version")
SIG_NAMES = ("keys", "actions", "confidence", "visits")


def _other_type_value(old: Any, rnd: random.Random) -> Any:
    pool = ["x", 7, -1, 1.5, b"\x00", None, True, [1], {"a": 1}, 2**64 - 1]
    choices = [v for v in pool if type(v) is not type(old)]
    return rnd.choice(choices)


def s_version(f: Fields, rnd: random.Random) -> bool:
    f["v"] = rnd.choice([0, 2, 99, "1", 1.0, None])
    return True


def s_unknown_type(f: Fields, rnd: random.Random) -> bool:
    f["type"] = rnd.choice(["bogus", "", "DELTA", "delta ", 5])
    return True


def s_federation(f: Fields, rnd: random.Random) -> bool:
    f["fed"] = rnd.choice(["other", "fuzz2", "", "a/b", "#", "+", "x" * 65, "\0"])
    return True


def s_fingerprint(f: Fields, rnd: random.Random) -> bool:
    f["fp"] = rnd.choice(["0" * 16, "", TASK.fingerprint + "0", "x" * 100])
    return True


def s_drop_field(f: Fields, rnd: random.Random) -> bool:
    del f[rnd.choice([k for k in f if not k.startswith("x_")])]
    return True


def s_retype_field(f: Fields, rnd: random.Random) -> bool:
    k = rnd.choice([k for k in f if not k.startswith("x_")])
    f[k] = _other_type_value(f[k], rnd)
    return True


def s_bad_id(f: Fields, rnd: random.Random) -> bool:
    keys = [k for k in ("node", "origin") if k in f]
    f[rnd.choice(keys)] = rnd.choice(["", "a/b", "a+", "#", "n\0", "x" * 65, "tab\t", "\n"])
    return True


def s_bad_int(f: Fields, rnd: random.Random) -> bool:
    keys = [k for k in ("epoch", "seq", "version", "size", "since", "from", "to") if k in f]
    f[rnd.choice(keys)] = rnd.choice([-1, -(2**63), 2**63, 2**64 - 1])
    return True


def s_bad_ts(f: Fields, rnd: random.Random) -> bool:
    f["ts"] = rnd.choice([float("nan"), float("inf"), -float("inf")])
    return True


def s_bad_pk(f: Fields, rnd: random.Random) -> bool:
    if "pk" not in f:
        return False
    f["pk"] = rnd.randbytes(rnd.choice([0, 31, 33, 64]))
    return True


def _arrays(f: Fields, rnd: random.Random) -> tuple[str, dict[str, Any]] | None:
    groups = [(g, f[g]) for g in ("cells", "sigs") if isinstance(f.get(g), dict)]
    return rnd.choice(groups) if groups else None


def _cells(f: Fields) -> dict[str, Any] | None:
    cells = f.get("cells")
    if not isinstance(cells, dict) or cells["keys"]["n"] == 0:
        return None
    return cells


def _raw_array(a: np.ndarray) -> dict[str, Any]:
    return {"dt": a.dtype.str, "n": int(a.shape[0]), "c": "raw", "d": a.tobytes()}


def _decoded(arr: dict[str, Any]) -> np.ndarray:
    """The honest array behind an array map (the original is valid, so this cannot fail)."""
    dt = np.dtype(arr["dt"])
    if arr["c"] == "raw":
        return np.frombuffer(arr["d"], dt).copy()
    planes = [np.frombuffer(p if len(p) == arr["n"] else zlib.decompress(p), np.uint8)
              for p in arr["d"]]
    a = np.ascontiguousarray(np.stack(planes).T).view(dt).reshape(arr["n"])
    return np.cumsum(a, dtype=dt) if arr["c"].startswith("delta") else a


def s_huge_claim(f: Fields, rnd: random.Random) -> bool:
    picked = _arrays(f, rnd)
    if picked is None:
        return False
    claim = rnd.choice([10**9, 2**31, 2**63, 1_000_001])
    names = list(picked[1]) if rnd.random() < 0.5 else [rnd.choice(list(picked[1]))]
    for name in names:
        picked[1][name]["n"] = claim
    return True


def s_length_mismatch(f: Fields, rnd: random.Random) -> bool:
    picked = _arrays(f, rnd)
    if picked is None:
        return False
    arr = picked[1][rnd.choice(list(picked[1]))]
    arr["n"] = max(0, arr["n"] + rnd.choice([-1, 1, 2]))
    return True


def s_bad_dtype(f: Fields, rnd: random.Random) -> bool:
    picked = _arrays(f, rnd)
    if picked is None:
        return False
    arr = picked[1][rnd.choice(list(picked[1]))]
    arr["dt"] = rnd.choice(["<f8", ">u8", "<u4", "|O", "object", "", "<f2"])
    return True


def s_bad_codec(f: Fields, rnd: random.Random) -> bool:
    picked = _arrays(f, rnd)
    if picked is None:
        return False
    arr = picked[1][rnd.choice(list(picked[1]))]
    choice = rnd.randrange(4)
    if choice == 0:
        arr["c"] = rnd.choice(["pickle", "gzip", "", "RAW"])
    elif choice == 1:
        arr["d"] = [arr["d"]] if isinstance(arr["d"], bytes) else b"".join(arr["d"])
    elif choice == 2:
        arr["d"] = _other_type_value(arr["d"], rnd)
    elif isinstance(arr["d"], bytes) and arr["d"]:
        arr["d"] = arr["d"][:-1]
    else:
        arr["d"] = arr["d"][:-1] if isinstance(arr["d"], list) else b""
    return True


def s_zip_bomb(f: Fields, rnd: random.Random) -> bool:
    """A plane that inflates to more (or fewer) bytes than the array's length."""
    cells = _cells(f)
    if cells is None:
        return False
    arr = cells[rnd.choice(CELL_NAMES)]
    n = arr["n"]
    size = rnd.choice([n + 1, n - 1, 50 * n + 10_000, 2_000_000]) if n else 1_000
    plane = zlib.compress(bytes(max(size, 0)), 9)
    if len(plane) >= n:
        return False  # would be taken for a stored plane; other mutations cover that
    itemsize = np.dtype(arr["dt"]).itemsize
    arr["c"] = "shuf+zlib"
    arr["d"] = [plane] + [bytes(n)] * (itemsize - 1)
    return True


def s_overflow_delta(f: Fields, rnd: random.Random) -> bool:
    """Delta-coded keys whose running sum wraps around 2^64."""
    cells = _cells(f)
    if cells is None or cells["keys"]["n"] < 2:
        return False
    n = cells["keys"]["n"]
    gaps = np.full(n, 2**63 + 1, dtype=np.uint64)
    planes = gaps.view(np.uint8).reshape(n, 8).T
    cells["keys"] = {"dt": "<u8", "n": n, "c": "delta+shuf+zlib",
                     "d": [zlib.compress(p.tobytes(), 1) for p in planes]}
    return True


def _edit_cells(f: Fields, name: str, edit: Callable[[np.ndarray], None]) -> bool:
    cells = _cells(f)
    if cells is None:
        return False
    a = _decoded(cells[name])
    edit(a)
    cells[name] = _raw_array(a)
    return True


def _rnd_index(a: np.ndarray, rnd: random.Random) -> int:
    return rnd.randrange(a.shape[0])


def s_non_finite(f: Fields, rnd: random.Random) -> bool:
    bad = rnd.choice([np.nan, np.inf, -np.inf])
    name = rnd.choice(["q", "lw"])
    return _edit_cells(f, name, lambda a: a.__setitem__(_rnd_index(a, rnd), bad))


def s_out_of_bounds(f: Fields, rnd: random.Random) -> bool:
    edits: list[tuple[str, Any]] = [
        ("q", rnd.choice([1e7, -1e7, 3e38])), ("n", 0), ("version", 0),
        ("version", 2**63 + 5), ("succ", 2**32 - 1), ("fail", 2**32 - 1)]
    name, value = rnd.choice(edits)
    return _edit_cells(f, name, lambda a: a.__setitem__(_rnd_index(a, rnd), value))


def s_bad_action(f: Fields, rnd: random.Random) -> bool:
    value = rnd.choice([N_ACTIONS, N_ACTIONS + 1, 65535])
    return _edit_cells(f, "actions", lambda a: a.__setitem__(_rnd_index(a, rnd), value))


def s_version_range(f: Fields, rnd: random.Random) -> bool:
    if "from" not in f:
        return False
    if rnd.random() < 0.5 or _cells(f) is None:
        f["from"], f["to"] = f["to"] + 1, f["to"]
    else:
        f["to"] = f["from"]  # every cell version now lies above the range
    return True


def s_bad_signature_data(f: Fields, rnd: random.Random) -> bool:
    sigs = f.get("sigs")
    if not isinstance(sigs, dict) or sigs["keys"]["n"] == 0:
        return False
    name, value = rnd.choice([("confidence", np.nan), ("confidence", 1.5),
                              ("confidence", -0.1), ("actions", N_ACTIONS)])
    a = _decoded(sigs[name])
    a[rnd.randrange(a.shape[0])] = value
    sigs[name] = _raw_array(a)
    return True


SEMANTIC_MUTATIONS: dict[str, Callable[[Fields, random.Random], bool]] = {
    "version": s_version, "unknown_type": s_unknown_type, "federation": s_federation,
    "fingerprint": s_fingerprint, "drop_field": s_drop_field, "retype_field": s_retype_field,
    "bad_id": s_bad_id, "bad_int": s_bad_int, "bad_ts": s_bad_ts, "bad_pk": s_bad_pk,
    "huge_claim": s_huge_claim, "length_mismatch": s_length_mismatch,
    "bad_dtype": s_bad_dtype, "bad_codec": s_bad_codec, "zip_bomb": s_zip_bomb,
    "overflow_delta": s_overflow_delta, "non_finite": s_non_finite,
    "out_of_bounds": s_out_of_bounds, "bad_action": s_bad_action,
    "version_range": s_version_range, "bad_signature_data": s_bad_signature_data,
}


# ---------------------------------------------------------------- the fuzzer

class Fuzzer:
    """Feeds originals, mutants, forgeries and replays to one verifier-backed decoder."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rnd = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.nodes = [Node(f"n{i}", self.rnd.randbytes(32)) for i in range(4)]
        self.stranger = Identity.from_seed(self.rnd.randbytes(32))
        self.verifier = Verifier()
        self.stats = Stats()
        self.budget = sys.maxsize
        self.accepted_payloads: deque[bytes] = deque(maxlen=50)
        for node in self.nodes:  # pin every node from its birth
            self.feed(encode(Birth(node.header(self.rnd), node.identity.public_key), node.identity),
                      original=True)

    def feed(self, payload: bytes, *, original: bool = False) -> Message | None:
        """Decode one payload, classify the outcome; ``original`` = an honest signed message."""
        if self.stats.messages >= self.budget:
            return None
        self.stats.messages += 1
        try:
            msg = decode(payload, fed=FED, fingerprint=TASK.fingerprint, n_actions=N_ACTIONS,
                         max_payload=MAX_PAYLOAD, verifier=self.verifier)
        except WireError as exc:
            self.stats.rejected_by_reason[exc.reason] += 1
            if exc.reason == "internal":
                self.stats.crashes += 1
                self.stats.note("internal: " + "".join(traceback.format_exception(exc)))
            if original:
                self.stats.originals_rejected += 1
                self.stats.note(f"original rejected: {exc.reason}: {exc}")
            return None
        except Exception as exc:  # exactly what decode promises never to do
            self.stats.crashes += 1
            self.stats.note("".join(traceback.format_exception(exc)))
            return None
        self.stats.accepted += 1
        self.accepted_payloads.append(payload)
        if not original:
            self.stats.accepted_not_original += 1
            self.stats.note(f"accepted a mutant: {payload[:64].hex()}")
        return msg

    def run(self, count: int) -> Stats:
        """Decode payloads until ``count`` in all (the births that pin the nodes included)."""
        self.budget = count
        while self.stats.messages < self.budget:
            self.round()
        return self.stats

    def round(self) -> None:
        rnd = self.rnd
        node = rnd.choice(self.nodes)
        payload = self.original(node)
        for _ in range(rnd.randint(1, 6)):
            kind, mutant = self.mutant(node, payload)
            if mutant == payload:
                continue
            self.stats.mutations[kind] += 1
            self.feed(mutant)
        self.feed(payload, original=True)  # still accepted: the mutants changed nothing
        if rnd.random() < 0.3:
            self.stats.mutations["replay"] += 1
            self.feed(rnd.choice(self.accepted_payloads))

    def original(self, node: Node) -> bytes:
        """A valid signed payload; sometimes with unknown extra fields (which must be ignored)."""
        msg = random_message(node, self.rng, self.rnd)
        payload = encode(msg, node.identity, max_payload=MAX_PAYLOAD)
        if self.rnd.random() < 0.1:
            fields = body_fields(payload)
            fields[f"x_future{self.rnd.randrange(3)}"] = _random_object(self.rnd)
            payload = frame(fields, node.identity)
        return payload

    def mutant(self, node: Node, payload: bytes) -> tuple[str, bytes]:
        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.45:
            kind = rnd.choice(list(BYTE_MUTATIONS))
            return kind, BYTE_MUTATIONS[kind](payload, rnd)
        if roll < 0.85:
            for _ in range(10):
                kind = rnd.choice(list(SEMANTIC_MUTATIONS))
                fields = body_fields(payload)
                if SEMANTIC_MUTATIONS[kind](fields, rnd):
                    return kind, frame(fields, node.identity)
        return self.security_mutant(node, payload)

    def security_mutant(self, node: Node, payload: bytes) -> tuple[str, bytes]:
        """Forgeries: another key's signature, an unpinned sender, a birth with a new key."""
        rnd = self.rnd
        fields = body_fields(payload)
        kind = rnd.choice(["forged", "other_node_key", "unknown_sender", "key_mismatch"])
        if kind == "forged":
            return kind, frame(fields, self.stranger)
        if kind == "other_node_key":
            other = rnd.choice([n for n in self.nodes if n is not node])
            return kind, frame(fields, other.identity)
        if kind == "unknown_sender":
            fields["node"] = f"stranger{rnd.randrange(3)}"
            if fields.get("type") == "birth":
                fields["type"] = "heartbeat"
                fields.update(version=1, size=1)
            return kind, frame(fields, self.stranger)
        fields.update(type="birth", pk=self.stranger.public_key, version=1)
        return kind, frame(fields, self.stranger)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=10_000, help="messages to decode")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    t0 = time.perf_counter()
    stats = Fuzzer(seed).run(args.count)
    out = {**stats.as_dict(), "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    for example in stats.examples:
        print(example, file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if stats.ok else 1


if __name__ == "__main__":
    sys.exit(main())
