"""Who a node is (its Ed25519 key) and whom it believes (pinned keys, replay counters).

``Identity`` signs this node's message bodies. ``Verifier`` decides whether a
peer's message is authentic and fresh: it pins a node's public key from the
first birth it accepts (trust on first use) or from a configured allowlist, and
remembers the last ``(epoch, seq)`` accepted per (node, message type). Counters
are per type because the broker may reorder QoS 0 heartbeats against QoS 1
deltas, and a node's MQTT Will (its death) is signed before its birth.

Checking and committing are separate steps: ``peerd.wire.decode`` checks as
soon as the header is known and commits only after the whole message
validated, so a rejected message changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing

from peerd.errors import StoreError
from peerd.wire import (
    KEYED_TYPES,
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    BadSignature,
    Header,
    KeyMismatch,
    Message,
    Replay,
    UnknownSender,
)

__all__ = ["Identity", "RelayedView", "Verifier", "verify_signature"]

_SEED_LEN = 32
_SNAPSHOT_FORMAT = 1


class Identity:
    """This node's Ed25519 signing key. ``repr`` shows the public key only."""

    __slots__ = ("_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Rebuild a key from its 32-byte seed (what the key file holds)."""
        if len(seed) != _SEED_LEN:
            raise ValueError(f"an Ed25519 seed has {_SEED_LEN} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key file, or create it (mode 0600) if it does not exist yet.

        The file holds the hex seed on one line. Creation writes a temporary
        file and hard-links it into place, so a crash never leaves a half key
        and two processes racing both end up with the same key.
        """
        p = Path(path)
        if not p.exists():
            _create_key_file(p)
        return cls.from_seed(_read_seed(p))

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def seed(self) -> bytes:
        """The secret seed; only ``load_or_create`` needs to persist it."""
        return bytes(self._key)

    def sign(self, body: bytes) -> bytes:
        """The 64-byte detached signature of ``body``."""
        return self._key.sign(body).signature

    def __repr__(self) -> str:
        return f"Identity(public_key={self.public_key.hex()[:16]}…)"


def _read_seed(path: Path) -> bytes:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read node key {path}: {exc.strerror or exc}") from None
    try:
        seed = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != _SEED_LEN:
        raise StoreError(f"node key {path} is corrupt: expected {2 * _SEED_LEN} hex digits; "
                         "restore it from a backup or delete it to make a new identity "
                         "(peers that pinned the old key will then reject this node)")
    return seed


def _create_key_file(path: Path) -> None:
    """Write a fresh seed atomically with mode 0600; keep a key another process made first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(nacl.signing.SigningKey.generate().encode().hex().encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # lost a race: use the winner's key
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot create node key {path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_signature(public_key: bytes, body: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``public_key``'s Ed25519 signature of ``body``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.signing.VerifyKey(bytes(public_key)).verify(bytes(body), bytes(signature))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError,
            TypeError):
        return False
    return True


class Verifier:
    """Pinned keys and replay counters of the peers of one node.

    ``allowlist`` maps node ids to public keys configured by the operator: those
    keys are pinned from the start and win over anything learned. With
    ``strict=True`` only allowlisted nodes are accepted at all.
    """

    def __init__(self, *, allowlist: dict[str, bytes] | None = None, strict: bool = False) -> None:
        self.strict = bool(strict)
        self._allow: dict[str, bytes] = {}
        for node, key in (allowlist or {}).items():
            if len(key) != PUBLIC_KEY_LEN:
                raise ValueError(f"allowlisted key of {node!r} must be {PUBLIC_KEY_LEN} bytes")
            self._allow[str(node)] = bytes(key)
        self._pins: dict[str, bytes] = {}
        self._last: dict[tuple[str, str], tuple[int, int]] = {}
        self._verify_keys: dict[bytes, nacl.signing.VerifyKey] = {}

    # -- queries

    def pinned(self, node: str) -> bytes | None:
        """The key this verifier holds for ``node`` (allowlist first), or None."""
        return self._allow.get(node) or self._learned_pin(node)

    def allowlisted(self, node: str) -> bool:
        return node in self._allow

    def last_accepted(self, node: str, msg_type: str) -> tuple[int, int] | None:
        """The newest (epoch, seq) accepted from ``node`` for messages of ``msg_type``."""
        return self._window(node, msg_type)

    # -- where pins and replay windows live: plain dicts here; a node's peer
    #    registry (``peerd.registry``) overrides these to keep them in its entries

    def _learned_pin(self, node: str) -> bytes | None:
        return self._pins.get(node)

    def _pin(self, node: str, key: bytes) -> None:
        self._pins[node] = key

    def _window(self, node: str, msg_type: str) -> tuple[int, int] | None:
        return self._last.get((node, msg_type))

    def _advance(self, node: str, msg_type: str, stamp: tuple[int, int]) -> None:
        self._last[(node, msg_type)] = stamp

    def _drop(self, node: str) -> None:
        self._pins.pop(node, None)
        for k in [k for k in self._last if k[0] == node]:
            del self._last[k]

    # -- the two steps

    def check(self, header: Header, msg_type: str, body: bytes, signature: bytes, *,
              public_key: bytes | None = None, replay: bool = True) -> None:
        """Raise unless the message is from a known key, correctly signed and newer.

        ``public_key`` is the key a birth announces (required for births).
        ``replay=False`` skips the freshness check (relayed payloads). Changes nothing.
        """
        key = self._key_for(header.node, msg_type, public_key)
        if not self._verify(key, body, signature):
            raise BadSignature(f"{msg_type} from {header.node!r} has a bad signature")
        if not replay:
            return
        last = self._window(header.node, msg_type)
        stamp = (header.epoch, header.seq)
        if last is not None and stamp <= last:
            raise Replay(f"{msg_type} from {header.node!r} at (epoch, seq)={stamp} is not newer "
                         f"than {last}", duplicate=stamp == last)

    def commit(self, msg: Message) -> None:
        """Record an accepted message: pin a birth's key, advance the (node, type) counter.

        Counters only move forward, so committing out of order is harmless.
        """
        h = msg.header
        if msg.type in KEYED_TYPES and self.pinned(h.node) is None:
            self._pin(h.node, msg.public_key)  # type: ignore[union-attr]
        stamp = (h.epoch, h.seq)
        last = self._window(h.node, msg.type)
        if last is None or stamp > last:
            self._advance(h.node, msg.type, stamp)

    def pin_first(self, node: str, key: bytes) -> bool:
        """Pin ``key`` for ``node`` unless a key is already held (trust on first use); True if pinned."""
        if self.pinned(node) is not None or len(key) != PUBLIC_KEY_LEN:
            return False
        self._pin(node, bytes(key))
        return True

    def relayed(self, own: str | None = None) -> RelayedView:
        """A view for payloads an origin signed and another node relays (``peerd.relay``).

        ``own``: the receiving node's id, whose relayed payloads are not checked (see
        ``RelayedView``)."""
        return RelayedView(self, own)

    def unpin(self, node: str) -> None:
        """Forget a learned key and counters (an operator re-keyed that node)."""
        self._drop(node)

    def _key_for(self, node: str, msg_type: str, announced: bytes | None) -> bytes:
        pinned = self.pinned(node)
        if self.strict and node not in self._allow:
            raise UnknownSender(f"node {node!r} is not on the allowlist")
        if msg_type not in KEYED_TYPES:
            if pinned is None:
                raise UnknownSender(f"no key pinned for {node!r}: {msg_type} before its birth")
            return pinned
        if announced is None:
            raise UnknownSender(f"{msg_type} of {node!r} announces no key")
        if pinned is not None and pinned != announced:
            raise KeyMismatch(f"{msg_type} of {node!r} announces key {announced.hex()[:16]}…, "
                              f"pinned is {pinned.hex()[:16]}…")
        return announced

    def _verify(self, key: bytes, body: bytes, signature: bytes) -> bool:
        vk = self._verify_keys.get(key)
        if vk is None:
            try:
                vk = nacl.signing.VerifyKey(key)
            except (nacl.exceptions.CryptoError, ValueError, TypeError):
                return False
            if len(self._verify_keys) > 4096:  # bound the cache against key-spraying births
                self._verify_keys.clear()
            self._verify_keys[key] = vk
        try:
            vk.verify(body, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError,
                TypeError):
            return False
        return True

    # -- persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: learned pins, counters, and the configuration they were made under."""
        last: dict[str, dict[str, list[int]]] = {}
        for (node, msg_type), (epoch, seq) in sorted(self._last.items()):
            last.setdefault(node, {})[msg_type] = [epoch, seq]
        return {
            "format": _SNAPSHOT_FORMAT,
            "strict": self.strict,
            "allowlist": {n: k.hex() for n, k in sorted(self._allow.items())},
            "pinned": {n: k.hex() for n, k in sorted(self._pins.items())},
            "last": last,
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any], *, allowlist: dict[str, bytes] | None = None,
                strict: bool | None = None) -> Verifier:
        """Rebuild from ``snapshot()``; a given ``allowlist``/``strict`` (the current config) wins.

        Raises ``StoreError`` for a snapshot of another format or a damaged one.
        """
        try:
            if snapshot.get("format") != _SNAPSHOT_FORMAT:
                raise ValueError(f"unknown format {snapshot.get('format')!r}")
            allow = allowlist if allowlist is not None else {
                n: bytes.fromhex(k) for n, k in snapshot["allowlist"].items()}
            v = cls(allowlist=allow,
                    strict=bool(snapshot["strict"]) if strict is None else strict)
            for node, key in snapshot["pinned"].items():
                raw = bytes.fromhex(key)
                if len(raw) != PUBLIC_KEY_LEN:
                    raise ValueError(f"pinned key of {node!r} has {len(raw)} bytes")
                v._pins[str(node)] = raw
            for node, per_type in snapshot["last"].items():
                for msg_type, (epoch, seq) in per_type.items():
                    v._last[(str(node), str(msg_type))] = (int(epoch), int(seq))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"verifier snapshot is damaged: {exc}") from None
        return v


class RelayedView:
    """Checks a relayed payload as its origin's own: pinned key and signature, not freshness.

    Relayed payloads are old by nature, and the CRDT makes duplicates and
    reordering harmless, so the replay window is neither checked nor moved
    (``commit`` does nothing): the origin's own live messages stay unaffected.
    A relayed birth's key is pinned by the node (``Verifier.pin_first``), not here.
    """

    def __init__(self, verifier: Verifier, own: str | None = None) -> None:
        self._verifier = verifier
        self._own = own

    def check(self, header: Header, msg_type: str, body: bytes, signature: bytes, *,
              public_key: bytes | None = None) -> None:
        if header.node == self._own:
            # A node's own payloads come back in relays meant for others; it pins no key of
            # its own to check them with (they were rejected as unknown_sender, ~170 per
            # sybil run), and it never applies them: it is the authority on its own cells.
            return
        self._verifier.check(header, msg_type, body, signature, public_key=public_key,
                             replay=False)

    def commit(self, msg: Message) -> None:
        return None
