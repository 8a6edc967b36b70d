"""``peerd decode FILE|-``: show a captured payload as JSON, with the validation verdict.

For debugging a federation: what did that node actually send, and why was it
rejected? Without ``--fed``/``--fingerprint``/``--actions`` the payload is
validated against its own header (structure, values, sizes), so the verdict
says whether it is well-formed. The signature is checked when ``--pubkey HEX``
is given, and a birth is always checked against the key it announces.

Exit status: 0 valid, 1 rejected, 2 usage error (unreadable file, bad option).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

from peerd.errors import WireError
from peerd.identity import Verifier
from peerd.wire import (
    MAX_PAYLOAD,
    Birth,
    DeltaMsg,
    Frame,
    Heartbeat,
    Message,
    Rebirth,
    SyncRequest,
    decode,
    is_safe_id,
    peek,
)

__all__ = ["add_parser", "main", "run"]

#: Without --actions every uint16 index is accepted: structure is still checked.
_ANY_ACTION = 65_536
_PREVIEW = 5
_RAW_LIST_PREVIEW = 16
_RAW_BYTES_PREVIEW = 16


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``decode`` on a CLI's subparsers (``peerd/cli.py``)."""
    p = subparsers.add_parser(
        "decode", help="print a captured wire payload as JSON and validate it",
        description="Print a captured peerd payload as readable JSON with its validation "
                    "verdict. Exit 0 if valid, 1 if rejected, 2 on usage errors.")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="payload file, or - to read stdin")
    p.add_argument("--fed", help="federation to validate against (default: the header's)")
    p.add_argument("--fingerprint", help="task fingerprint to validate against "
                                         "(default: the header's)")
    p.add_argument("--actions", type=int, metavar="N",
                   help="number of task actions (default: any uint16 index)")
    p.add_argument("--pubkey", metavar="HEX", help="sender's Ed25519 public key: check the "
                                                   "signature with it")
    p.add_argument("--max-payload", type=int, default=MAX_PAYLOAD, metavar="BYTES",
                   help=f"payload size limit (default {MAX_PAYLOAD})")
    p.add_argument("--full", action="store_true", help="list every cell, not the first 5")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m peerd.decode_cmd FILE``."""
    p = argparse.ArgumentParser(prog="peerd decode")
    _add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Decode, validate and print; return the exit status."""
    try:
        data = _read(args.file)
        pubkey = _parse_pubkey(args.pubkey)
        if args.actions is not None and not 1 <= args.actions <= 65_535:
            raise ValueError(f"--actions must be within 1..65535, got {args.actions}")
    except (OSError, ValueError) as exc:
        print(f"peerd decode: {exc}", file=sys.stderr)
        return 2
    report, ok = inspect_payload(data, fed=args.fed, fingerprint=args.fingerprint,
                                 n_actions=args.actions, pubkey=pubkey,
                                 max_payload=args.max_payload, full=args.full)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if ok else 1


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as fh:
        return fh.read()


def _parse_pubkey(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("--pubkey must be hex") from None
    if len(key) != 32:
        raise ValueError(f"--pubkey must be 32 bytes (64 hex digits), got {len(key)} bytes")
    return key


def inspect_payload(data: bytes, *, fed: str | None = None, fingerprint: str | None = None,
                    n_actions: int | None = None, pubkey: bytes | None = None,
                    max_payload: int = MAX_PAYLOAD, full: bool = False
                    ) -> tuple[dict[str, Any], bool]:
    """The JSON report of one payload and whether it is valid."""
    report: dict[str, Any] = {"payload_bytes": len(data)}
    try:
        frame = peek(data, max_payload=max_payload)
    except WireError as exc:
        report["verdict"] = _rejected(exc)
        return report, False
    f = frame.fields
    fed = fed if fed is not None else _str_or_empty(f.get("fed"))
    fingerprint = fingerprint if fingerprint is not None else _str_or_empty(f.get("fp"))
    verifier, how = _verifier_for(f, pubkey)
    report.update(
        frame={"v": 1, "body_bytes": len(frame.body), "signature": frame.signature.hex()},
        header={k: _raw(f.get(k)) for k in ("type", "fed", "node", "fp", "epoch", "seq", "ts")},
        validated_against={"fed": fed, "fingerprint": fingerprint, "n_actions": n_actions,
                           "signature": how})
    try:
        msg = decode(data, fed=fed, fingerprint=fingerprint,
                     n_actions=n_actions or _ANY_ACTION, max_payload=max_payload,
                     verifier=verifier)
    except WireError as exc:
        report["fields"] = _raw_fields(frame)
        report["verdict"] = _rejected(exc)
        return report, False
    report["message"] = describe(msg, frame, full=full)
    report["verdict"] = "valid"
    return report, True


def _str_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _verifier_for(fields: dict[str, Any], pubkey: bytes | None) -> tuple[Verifier | None, str]:
    """A one-shot verifier: the given key for the header's node, or a birth's own key."""
    node = fields.get("node")
    if pubkey is not None and is_safe_id(node):
        return Verifier(allowlist={node: pubkey}), "checked against --pubkey"
    if fields.get("type") == "birth":
        return Verifier(), "checked against the birth's own key"
    return None, "not checked (give --pubkey HEX)"


def _rejected(exc: WireError) -> str:
    return f"rejected: {exc.reason}: {exc}"


# ---------------------------------------------------------------- rendering

def describe(msg: Message, frame: Frame, *, full: bool = False) -> dict[str, Any]:
    """A readable summary of a validated message; arrays summarised unless ``full``."""
    if isinstance(msg, DeltaMsg):
        return _describe_delta(msg, frame, full)
    return describe_control(msg)


def describe_control(msg: Message) -> dict[str, Any]:
    """The fields of a birth, heartbeat or sync request (empty for a death or a delta)."""
    if isinstance(msg, Birth):
        return {"public_key": msg.public_key.hex(), "version": msg.version}
    if isinstance(msg, Heartbeat):
        return {"version": msg.version, "size": msg.size}
    if isinstance(msg, SyncRequest):
        return {"origin": msg.origin, "since": msg.since}
    if isinstance(msg, Rebirth):
        return {"to": msg.to, "public_key": msg.public_key.hex(), "version": msg.version}
    return {}


def _describe_delta(msg: DeltaMsg, frame: Frame, full: bool) -> dict[str, Any]:
    d = msg.delta
    m = len(d)
    shown = m if full else min(m, _PREVIEW)
    cols = {f: a[:shown].tolist() for f, a in d.arrays().items()}
    cells = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    encoded = frame.fields.get("cells", {})
    out: dict[str, Any] = {
        "origin": d.origin, "from_version": d.from_version, "to_version": d.to_version,
        "cells": m,
        "bytes_per_cell": round(len(frame.body) / m, 2) if m else None,
        "encoding": {f: {"codec": a.get("c"), "bytes": _encoded_len(a.get("d"))}
                     for f, a in encoded.items() if isinstance(a, dict)},
        "q": _range(d.q), "lw": _range(d.lw), "n_sum": int(d.n.sum(dtype=np.uint64)),
        "cells_list" if full else "first_cells": cells,
        "signatures": {"count": len(msg.signatures),
                       "first" if not full else "all": [
                           {"key": s.key, "action": s.action, "confidence": s.confidence,
                            "visits": s.visits}
                           for s in (msg.signatures if full else msg.signatures[:_PREVIEW])]},
    }
    return out


def _range(a: np.ndarray) -> dict[str, float] | None:
    if a.size == 0:
        return None
    return {"min": float(a.min()), "max": float(a.max())}


def _encoded_len(data: object) -> int:
    if isinstance(data, bytes):
        return len(data)
    if isinstance(data, list):
        return sum(len(x) for x in data if isinstance(x, bytes))
    return 0


def _raw_fields(frame: Frame) -> dict[str, Any]:
    """The body as received, JSON-safe, for a message that did not validate."""
    return {str(k): _raw(v) for k, v in frame.fields.items()}


def _raw(value: Any, depth: int = 0) -> Any:
    """Any unpacked msgpack value → JSON-safe preview (bytes as length + head, lists capped)."""
    if depth > 8:
        return "…"
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value), "head": bytes(value[:_RAW_BYTES_PREVIEW]).hex()}
    if isinstance(value, dict):
        return {str(k): _raw(v, depth + 1) for k, v in list(value.items())[:_RAW_LIST_PREVIEW]}
    if isinstance(value, (list, tuple)):
        items = [_raw(v, depth + 1) for v in value[:_RAW_LIST_PREVIEW]]
        if len(value) > _RAW_LIST_PREVIEW:
            items.append(f"… {len(value) - _RAW_LIST_PREVIEW} more")
        return items
    return repr(value)[:200]


if __name__ == "__main__":
    sys.exit(main())
