"""``peerd inspect``: watch a federation's traffic live, decoded and judged the way a node would.

For operators asking "what is on the wire right now, and would my nodes accept
it?". It subscribes to ``peerd/v1/{fed}/#`` (or one kind) through
``peerd.transport.MqttTransport`` -- the only module that speaks MQTT -- and
prints one line (or one JSON object with ``--json``) per message: receipt
time, type, node, epoch/seq, what it carries (cells, version range, origin,
pattern signatures), its size and the verdict.

The verdict comes from ``peerd.wire.decode`` with a ``Verifier`` that pins
each node's key from the first birth it accepts, exactly like a node
(DESIGN §5): ``valid``; ``unverified: no key yet`` for a well-formed message
of a node whose birth has not been seen (start inspect before the nodes, or
rely on the retained births); or ``rejected: <reason>: <why>``. A hostile or
broken payload is a line like any other: nothing a peer sends can stop the
watch.

What a node knows and inspect does not, and how it makes up for it:

- the task fingerprint: ``--fingerprint``, else the fingerprint of the first
  valid birth (retained births arrive first), else each message's own;
- the number of actions: ``--actions N``; without it any uint16 index is
  accepted and the highest action index seen is reported, so that the
  operator can compare it with the task;
- ``q_bound``: ``--q-bound`` (default the node default).

Exit status: 0 when stopped by ``--count``, ``--timeout`` or Ctrl-C; 1 when
the broker cannot be reached or ``--timeout`` expired before ``--count``
messages arrived; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from peerd.decode_cmd import _raw as raw_value
from peerd.decode_cmd import _rejected as rejected_text
from peerd.decode_cmd import describe, describe_control
from peerd.delta import DEFAULT_Q_BOUND
from peerd.errors import ConfigError, PeerdError, WireError
from peerd.identity import Verifier
from peerd.wire import (
    KEYED_TYPES,
    KINDS,
    MAX_PAYLOAD,
    TYPES,
    Birth,
    DeltaMsg,
    Message,
    check_id,
    decode,
    is_safe_id,
    peek,
)

__all__ = ["Inspector", "add_parser", "main", "run", "run_async"]

#: Without --actions every uint16 index is accepted (as in ``peerd decode``).
_ANY_ACTION = 65_536
VALID = "valid"
UNVERIFIED = "unverified: no key yet"
#: How long the first connection may take before inspect gives up (reconnects are silent).
_CONNECT_TIMEOUT = 10.0
_CONNECT_POLL = 0.05


# ---------------------------------------------------------------- command line

_DESCRIPTION = ("Subscribe to a federation's topics and print every message decoded, with "
                "the verdict a node would reach (keys pinned from births). Exit 0 when stopped "
                "by --count/--timeout/Ctrl-C, 1 if the broker cannot be reached or --count was "
                "not reached in time, 2 on usage errors.")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on a CLI's subparsers (``peerd/cli.py``)."""
    p = subparsers.add_parser(
        "inspect", help="watch a federation's messages live, decoded and verified",
        description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, metavar="URL",
                   help="mqtt://[user[:pass]@]host[:port] or mqtts://...")
    p.add_argument("--federation", "--fed", dest="federation", required=True, metavar="F",
                   help="federation to watch")
    p.add_argument("--topic", choices=KINDS, metavar="KIND",
                   help=f"watch one kind only: {', '.join(KINDS)} (default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--actions", type=int, metavar="N",
                   help="number of task actions: reject larger indices (default: report "
                        "the highest index seen)")
    p.add_argument("--fingerprint", metavar="FP",
                   help="task fingerprint to require (default: the first valid birth's)")
    p.add_argument("--q-bound", type=float, default=DEFAULT_Q_BOUND,
                   help=f"reject |q| above this (default {DEFAULT_Q_BOUND:g}, the node default)")
    p.add_argument("--max-payload", type=int, default=MAX_PAYLOAD, metavar="BYTES",
                   help=f"payload size limit (default {MAX_PAYLOAD})")
    p.add_argument("--username", help="MQTT user name (an account with read access)")
    p.add_argument("--password", help="MQTT password (prefer --password-file)")
    p.add_argument("--password-file", metavar="PATH", help="file holding the MQTT password")
    p.add_argument("--ca-certs", metavar="PATH", help="CA bundle for mqtts://")
    p.add_argument("--certfile", metavar="PATH", help="client certificate for mqtts://")
    p.add_argument("--keyfile", metavar="PATH", help="client key for mqtts://")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m peerd.inspect_cmd --broker URL --federation F``."""
    p = argparse.ArgumentParser(prog="peerd inspect", description=_DESCRIPTION)
    _add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Watch until a stop condition; return the exit status (module docstring)."""
    from peerd import logs

    problem = _options_error(args)
    if problem:  # before touching the process's logging: nothing else happened
        print(f"peerd inspect: {problem}", file=sys.stderr)
        return 2
    # Transport chatter would drown the stream; connection failures are reported by
    # run_async itself, so only errors (a refused subscription) are worth a log line.
    logs.configure("error")
    try:
        code = asyncio.run(run_async(args, out=sys.stdout))
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a live watch normally ends
    _quiet_closed_stdout()
    return code


def _quiet_closed_stdout() -> None:
    """After ``| head`` closed our stdout, keep Python's exit-time flush from complaining."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _options_error(args: argparse.Namespace) -> str | None:
    if args.count is not None and args.count < 1:
        return f"--count must be >= 1, got {args.count}"
    if args.timeout is not None and not args.timeout > 0:
        return f"--timeout must be > 0, got {args.timeout}"
    if args.actions is not None and not 1 <= args.actions <= 65_535:
        return f"--actions must be within 1..65535, got {args.actions}"
    if not args.q_bound > 0:
        return f"--q-bound must be > 0, got {args.q_bound}"
    if args.max_payload < 1:
        return f"--max-payload must be >= 1, got {args.max_payload}"
    if args.password and args.password_file:
        return "give --password or --password-file, not both"
    try:
        check_id(args.federation, "federation")
    except WireError as exc:
        return str(exc)
    return None


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        try:
            return Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {args.password_file}: "
                              f"{exc.strerror or exc}") from None
    return args.password or None


def _filter(fed: str, kind: str | None) -> str:
    return f"peerd/v1/{fed}/{kind}/+" if kind else f"peerd/v1/{fed}/#"


async def run_async(args: argparse.Namespace, *, out: TextIO,
                    ready: asyncio.Event | None = None) -> int:
    """The watch itself, in the caller's event loop (tests run it next to their nodes).

    ``ready`` is set once the subscription is in place: what is published after
    that is seen.
    """
    problem = _options_error(args)
    if problem:
        print(f"peerd inspect: {problem}", file=sys.stderr)
        return 2
    from peerd.transport import MqttTransport, TLSConfig

    try:
        tls = None
        if args.ca_certs or args.certfile or args.keyfile:
            tls = TLSConfig(ca_certs=args.ca_certs, certfile=args.certfile, keyfile=args.keyfile)
        transport = MqttTransport(
            args.broker, client_id=f"peerd-inspect-{secrets.token_hex(4)}",
            subscriptions=[(_filter(args.federation, args.topic), 1)],
            username=args.username, password=_password(args), tls=tls)
    except (ConfigError, ValueError) as exc:
        print(f"peerd inspect: {exc}", file=sys.stderr)
        return 2

    inspector = Inspector(args.federation, fingerprint=args.fingerprint,
                          n_actions=args.actions, q_bound=args.q_bound,
                          max_payload=args.max_payload)
    printer = _JsonPrinter(out) if args.json else _StreamPrinter(out)
    done = asyncio.Event()
    seen = 0
    reader_gone = False

    async def on_message(topic: str, payload: bytes, retain: bool) -> None:
        nonlocal seen, reader_gone
        if done.is_set():  # arrived between the last counted message and the disconnect
            return
        record = inspector.examine(topic, payload, retain)
        seen += 1
        try:
            printer.emit(record)
        except BrokenPipeError:  # `peerd inspect | head`: the reader has what it wanted
            reader_gone = True
            done.set()
        if args.count is not None and seen >= args.count:
            done.set()

    async def on_connect() -> None:
        if ready is not None:
            ready.set()

    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    runner = asyncio.create_task(transport.run(on_message, on_connect), name="inspect-transport")
    connected = False
    try:
        connected = await _first_connection(transport, runner, deadline)
        if not connected:
            why = transport.last_error or "no answer"
            print(f"peerd inspect: cannot connect to {args.broker}: {why}", file=sys.stderr)
            return 1
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), remaining)
    finally:
        await transport.disconnect()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        with contextlib.suppress(BrokenPipeError):
            printer.close()
        if connected:
            _summary(inspector, seen)
    if reader_gone:
        return 0
    if args.count is not None and seen < args.count:
        print(f"peerd inspect: --timeout {args.timeout:g}s expired after {seen} of "
              f"{args.count} messages", file=sys.stderr)
        return 1
    return 0


async def _first_connection(transport: Any, runner: asyncio.Task[None],
                            deadline: float | None) -> bool:
    """Wait for the first connection; give up on its first failure (wrong URL, refused login).

    An operator tool should say at once that it cannot connect, instead of
    retrying silently as a node does.
    """
    loop = asyncio.get_running_loop()
    limit = loop.time() + _CONNECT_TIMEOUT
    if deadline is not None:
        limit = min(limit, deadline)
    while not transport.connected:
        if transport.last_error is not None or runner.done() or loop.time() >= limit:
            return False
        await asyncio.wait({runner}, timeout=_CONNECT_POLL)
    return True


def _summary(inspector: Inspector, seen: int) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(inspector.verdicts.items())) or "none"
    top = inspector.max_action_seen
    tail = f"; highest action index in deltas: {top}" if top >= 0 else ""
    print(f"peerd inspect: {seen} messages ({counts}){tail}", file=sys.stderr)


# ---------------------------------------------------------------- judging messages

@dataclass
class Inspector:
    """Judges each message of one federation as a node would, remembering pins between them.

    ``examine`` never raises: whatever arrives becomes a record with a verdict.
    """

    fed: str
    fingerprint: str | None = None
    n_actions: int | None = None
    q_bound: float = DEFAULT_Q_BOUND
    max_payload: int = MAX_PAYLOAD
    verifier: Verifier = field(default_factory=Verifier)
    #: Highest action index in any valid delta or signature (-1: none yet).
    max_action_seen: int = -1
    #: Records by verdict class: valid, unverified, rejected:<reason>.
    verdicts: Counter[str] = field(default_factory=Counter)

    def examine(self, topic: str, payload: bytes, retain: bool = False,
                received: float | None = None) -> dict[str, Any]:
        """One JSON-able record: header, content summary, ``verdict`` and ``reason``."""
        rec: dict[str, Any] = {
            "time": _iso(time.time() if received is None else received),
            "topic": topic, "retained": bool(retain), "bytes": len(payload),
            "type": None, "node": None, "epoch": None, "seq": None, "ts": None, "fp": None,
        }
        try:
            self._judge(rec, topic, payload)
        except WireError as exc:
            rec.update(verdict=rejected_text(exc), reason=exc.reason)
        except Exception as exc:  # a bug here must not end the watch: show it as a rejection
            rec.update(verdict=f"rejected: internal: {type(exc).__name__}: {exc}",
                       reason="internal")
        verdict = rec["verdict"]
        self.verdicts["valid" if verdict == VALID else
                      "unverified" if verdict == UNVERIFIED else f"rejected:{rec['reason']}"] += 1
        return rec

    def _judge(self, rec: dict[str, Any], topic: str, payload: bytes) -> None:
        frame = peek(payload, max_payload=self.max_payload)
        f = frame.fields
        rec.update({k: raw_value(f.get(k)) for k in ("type", "node", "epoch", "seq", "ts", "fp")})
        msg_type, node, fp = f.get("type"), f.get("node"), f.get("fp")
        expected_fp = self.fingerprint or (fp if isinstance(fp, str) else "")
        # A message of a node whose key is not pinned yet can still be checked for
        # structure; only a birth carries (and proves) its own key.
        keyless = (msg_type in TYPES and msg_type not in KEYED_TYPES and is_safe_id(node)
                   and self.verifier.pinned(node) is None)
        # A relay carries another node's signed payload: the topic names the relayer.
        relayed = topic.split("/")[3:4] == ["relay"]
        verifier = self.verifier.relayed() if relayed else self.verifier
        msg = decode(payload, fed=self.fed, fingerprint=expected_fp,
                     n_actions=self.n_actions or _ANY_ACTION, q_bound=self.q_bound,
                     max_payload=self.max_payload, verifier=None if keyless else verifier,
                     topic=None if relayed else topic, commit=not relayed)
        rec.update(_summary_fields(msg))
        rec["detail"] = describe(msg, frame)
        if isinstance(msg, DeltaMsg):
            self.max_action_seen = max(self.max_action_seen, rec["max_action"])
        rec.update(verdict=UNVERIFIED if keyless else VALID, reason=None)
        if isinstance(msg, Birth) and self.fingerprint is None:
            self.fingerprint = msg.header.fp  # the federation's task, as its first birth says


def _summary_fields(msg: Message) -> dict[str, Any]:
    """The columns of the stream: what the message carries, in a few numbers."""
    if isinstance(msg, DeltaMsg):
        d = msg.delta
        actions = [int(d.actions.max())] if len(d) else []
        actions += [s.action for s in msg.signatures]
        return {"origin": d.origin, "cells": len(d), "from_version": d.from_version,
                "to_version": d.to_version,
                "cell_versions": [int(d.version.min()), int(d.version.max())] if len(d) else None,
                "signatures": len(msg.signatures), "max_action": max(actions, default=-1)}
    return describe_control(msg)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- output

class _JsonPrinter:
    """One JSON object per line, flushed at once so that pipes see messages live."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def emit(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.flush()


_VERDICT_STYLE = {"valid": "green", "unverified": "yellow", "rejected": "bold red"}


class _StreamPrinter:
    """Readable lines (colour on a terminal); peer-controlled text is sanitised first."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self._console = Console(file=out, highlight=False, soft_wrap=True, emoji=False)

    def emit(self, record: dict[str, Any]) -> None:
        from rich.text import Text

        line = Text()
        line.append(record["time"][11:23], style="dim")
        line.append(f"  {_clean(record['type'], 9):<9} {_clean(record['node'], 20):<20}")
        line.append(f" e{_clean(record['epoch'], 10)}/s{_clean(record['seq'], 10):<6}")
        line.append(f" {_content(record):<46}")
        line.append(f" {record['bytes']:>8} B  ")
        verdict = str(record.get("verdict", ""))
        style = _VERDICT_STYLE.get(verdict.split(":", 1)[0], "")
        line.append(_clean(verdict, 200), style=style)
        if record["retained"]:
            line.append("  (retained)", style="dim")
        self._console.print(line)
        self._console.file.flush()

    def close(self) -> None:
        self._console.file.flush()


def _content(record: dict[str, Any]) -> str:
    kind = record["type"]
    if "cells" in record and kind == "delta":
        lo, hi = record["from_version"], record["to_version"]
        text = f"{record['cells']} cells v{lo}→{hi} of {record['origin']}, {record['signatures']} sigs"
        if record["max_action"] >= 0:
            text += f", max a={record['max_action']}"
        return text
    if "public_key" in record:
        return f"key {record['public_key'][:16]}… version {record['version']}"
    if "size" in record:
        return f"version {record['version']}, {record['size']} cells"
    if "since" in record:
        return f"asks {record['origin']} for v>{record['since']}"
    return ""


def _clean(value: object, limit: int) -> str:
    """Printable, bounded text of a value a peer chose: no terminal escapes, no floods."""
    if value is None:
        return "?"
    text = str(value)
    text = "".join(c if c.isprintable() else f"\\x{ord(c) & 0xff:02x}" for c in text[:limit])
    return text if len(str(value)) <= limit else text + "…"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PeerdError as exc:  # pragma: no cover - run() reports everything it expects
        print(f"peerd inspect: {exc}", file=sys.stderr)
        sys.exit(1)
