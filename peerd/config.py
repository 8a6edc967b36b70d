"""Node configuration: one frozen dataclass, loaded from TOML, overridable by ``PEERD_*`` variables.

Every setting has a TOML section and key (``[broker] url``) and an environment
variable made of both (``PEERD_BROKER_URL``); the environment wins. Values are
validated at start, and an error names the key and the problem, so that a
typo in a systemd drop-in fails loudly instead of running with a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerd.errors import ConfigError
from peerd.task import Task

_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_BROKER_URL = re.compile(r"^mqtts?://[^/:]+(:\d+)?/?$")


def _opt(section: str, key: str, default: Any, doc: str, **kw: Any) -> Any:
    meta = {"section": section, "key": key, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to run. Build with ``NodeConfig(...)`` or ``load_config``."""

    federation: str = _opt("node", "federation", "default", "federation name (MQTT topic level)")
    node_id: str = _opt("node", "id", "", "this node's id, unique in the federation (default: hostname)")
    secret: str = _opt("node", "secret", "", "federation secret: keys the state hash (same on every node)")
    state_dir: str = _opt("node", "state_dir", "", "dir of peerd.db and node.key (peerd run: required)")
    actions: list[str] = _opt("task", "actions", [], "action names, in a fixed order")
    gamma: float = _opt("task", "gamma", 0.95, "discount factor")
    task_name: str = _opt("task", "name", "task", "task name (informational)")
    broker_url: str = _opt("broker", "url", "", "mqtt://host:port or mqtts://; empty = no gossip")
    broker_urls: list[str] = _opt("broker", "urls", [],
                                  "members of a clustered broker, tried in this order on "
                                  "connection loss (instead of url)")
    subscribe_qos: int = _opt("broker", "subscribe_qos", 1,
                              "highest QoS the broker delivers to us: 1, or 0 on NATS (no "
                              "JetStream consumer per subscription; anti-entropy repairs losses)")
    username: str = _opt("broker", "username", "", "MQTT user name")
    password: str = _opt("broker", "password", "", "MQTT password (prefer password_file)")
    password_file: str = _opt("broker", "password_file", "", "file holding the MQTT password")
    ca_certs: str = _opt("broker", "ca_certs", "", "CA bundle for mqtts://")
    certfile: str = _opt("broker", "certfile", "", "client certificate for mqtts://")
    keyfile: str = _opt("broker", "keyfile", "", "client key for mqtts://")
    keepalive: int = _opt("broker", "keepalive", 30, "MQTT keepalive, seconds")
    retain: bool = _opt("broker", "retain", True,
                        "retained presence (births, the Will); false for a broker without "
                        "retained messages (mosquitto retain_available false)")
    strategy: str = _opt("learning", "strategy", "weighted_average",
                         "weighted_average | max | min | median | trimmed_mean[:beta] | "
                         "weighted_median | clipped_mean[:k]")
    half_life: float = _opt("learning", "half_life", 600.0, "evidence half-life H, seconds")
    min_visits: int = _opt("learning", "min_visits", 1, "peers' cells with fewer visits do not count")
    visit_cap: int = _opt("learning", "visit_cap", 1000, "reject cells claiming more fresh visits")
    policy: str = _opt("learning", "policy", "epsilon_greedy", "epsilon_greedy | ucb1 | thompson")
    eps_start: float = _opt("learning", "eps_start", 1.0, "ε-greedy: initial exploration rate")
    eps_end: float = _opt("learning", "eps_end", 0.05, "ε-greedy: final exploration rate")
    eps_decay_steps: int = _opt("learning", "eps_decay_steps", 2000, "ε-greedy: decisions to decay over")
    q_bound: float = _opt("learning", "q_bound", 1e6, "reject |q| above this")
    quarantine_below: float = _opt("learning", "quarantine_below", 0.2,
                                   "peers trusted less than this do not count in the merged "
                                   "view until their trust recovers; 0 = off")
    seed: int = _opt("learning", "seed", -1, "random seed of the policy; -1 = random")
    deviation_ratio: float = _opt("trust", "deviation_ratio", 3.0,
                                  "quarantine a peer whose values deviate more than this many "
                                  "times the median deviation; 0 = no deviation quarantine")
    deviation_leave: float = _opt("trust", "deviation_leave", 2.0,
                                  "restore a quarantined peer below this many times the median")
    probation_rounds: int = _opt("trust", "probation_rounds", 2,
                                 "a new origin's cells count only after this many deviation "
                                 "rounds within the consensus; 0 = off")
    version_rate_cap: float = _opt("trust", "version_rate_cap", 1000.0,
                                   "most versions (interactions) per second a peer may add")
    version_rate_multiple: float = _opt("trust", "version_rate_multiple", 10.0,
                                        "... and at most this many times the federation's median")
    version_burst: int = _opt("trust", "version_burst", 1000,
                              "versions a peer may be ahead of its rate bound")
    evidence_budget: bool = _opt("trust", "evidence_budget", True,
                                 "check deltas against the evidence budget")
    publish_every: int = _opt("gossip", "publish_every", 10, "publish after this many interactions")
    publish_interval: float = _opt("gossip", "publish_interval", 60.0, "or after this many seconds")
    heartbeat_interval: float = _opt("gossip", "heartbeat_interval", 15.0, "heartbeat period, seconds")
    suspect_after: int = _opt("gossip", "suspect_after", 3, "missed heartbeats before suspect")
    peer_timeout: float = _opt("gossip", "peer_timeout", 300.0, "silence before offline, seconds")
    origin_ttl: float = _opt("gossip", "origin_ttl", 7 * 86400.0, "offline peers' knowledge kept, s")
    sync_interval: float = _opt("gossip", "sync_interval", 2.0, "min seconds between sync asks per origin")
    signatures: int = _opt("gossip", "signatures", 32, "pattern signatures per delta")
    max_payload: int = _opt("gossip", "max_payload", 8 << 20, "largest accepted message, bytes")
    max_entries: int = _opt("gossip", "max_entries", 1_000_000, "most cells in one delta")
    max_origins: int = _opt("gossip", "max_origins", 1024,
                            "most peers held; past it a new one is refused (allowlisted: always in)")
    relay: bool = _opt("gossip", "relay", True,
                       "keep peers' signed payloads and relay them for silent origins")
    strict: bool = _opt("security", "strict", False, "accept only nodes in the allowlist")
    allowlist: dict[str, str] = _opt("security", "allowlist", {}, "node id = hex Ed25519 public key")
    api_listen: str = _opt("api", "listen", "127.0.0.1:8765",
                           "host:port on loopback, or unix:/path/to.sock; empty = no API")
    api_max_body: int = _opt("api", "max_body", 1 << 20, "largest accepted request body, bytes")
    log_level: str = _opt("log", "level", "info", "debug | info | warning | error")
    log_json: str = _opt("log", "json", "auto", "auto (JSON when not a terminal) | true | false")
    synchronous: str = _opt("store", "synchronous", "FULL", "SQLite synchronous: FULL | NORMAL")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(key: str, problem: str) -> ConfigError:
            section, name = _location(key)
            return ConfigError(f"[{section}] {name}: {problem}")

        if not _ID.match(self.federation):
            raise bad("federation", f"{self.federation!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if self.node_id and not _ID.match(self.node_id):
            raise bad("node_id", f"{self.node_id!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if not self.actions:
            raise bad("actions", "the task needs at least one action")
        if len(set(self.actions)) != len(self.actions):
            raise bad("actions", "action names must be unique")
        if not 0.0 <= self.gamma <= 1.0:
            raise bad("gamma", f"must be within [0, 1], got {self.gamma}")
        if self.broker_url and not _BROKER_URL.match(self.broker_url):
            raise bad("broker_url", f"{self.broker_url!r} is not mqtt://host[:port] or mqtts://")
        self._validate_members(bad)
        if self.subscribe_qos not in (0, 1):
            raise bad("subscribe_qos", f"must be 0 or 1, got {self.subscribe_qos!r}")
        positive = ("half_life", "publish_interval", "heartbeat_interval", "peer_timeout",
                    "origin_ttl", "q_bound", "keepalive", "publish_every", "visit_cap",
                    "max_payload", "max_entries", "api_max_body", "suspect_after")
        for key in positive:
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(key, f"must be a positive number, got {v!r}")
        for key in ("version_rate_cap", "version_rate_multiple", "version_burst"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(key, f"must be a positive number, got {v!r}")
        if self.deviation_ratio and not 1.0 <= self.deviation_leave <= self.deviation_ratio:
            raise bad("deviation_leave", "need 1 <= deviation_leave <= deviation_ratio")
        if isinstance(self.max_origins, bool) or not isinstance(self.max_origins, int) \
                or self.max_origins < 1:
            raise bad("max_origins", f"must be a positive integer, got {self.max_origins!r}")
        if not 0.0 <= self.quarantine_below <= 2.0:
            raise bad("quarantine_below", f"must be within [0, 2], got {self.quarantine_below}")
        for key in ("sync_interval", "min_visits", "signatures", "eps_decay_steps",
                    "probation_rounds"):
            if getattr(self, key) < 0:
                raise bad(key, f"cannot be negative, got {getattr(self, key)}")
        if not (0.0 <= self.eps_end <= self.eps_start <= 1.0):
            raise bad("eps_start", "need 0 <= eps_end <= eps_start <= 1")
        if self.policy not in ("epsilon_greedy", "ucb1", "thompson"):
            raise bad("policy", f"unknown policy {self.policy!r}")
        from peerd.strategies import make_strategy
        try:
            make_strategy(self.strategy)
        except ValueError as exc:
            raise bad("strategy", str(exc)) from None
        if self.strict and not self.allowlist:
            raise bad("strict", "strict mode needs an allowlist of node keys")
        for node, key in self.allowlist.items():
            if not re.fullmatch(r"[0-9a-fA-F]{64}", str(key)):
                raise bad("allowlist", f"key of {node!r} must be 64 hex digits")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise bad("synchronous", "must be FULL, NORMAL or EXTRA")
        if self.log_json not in ("auto", "true", "false"):
            raise bad("log_json", "must be auto, true or false")
        if self.api_listen and not self.api_listen.startswith("unix:"):
            host, _, port = self.api_listen.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise bad("api_listen", f"{self.api_listen!r} is not host:port or unix:/path")

    def _validate_members(self, bad: Callable[[str, str], ConfigError]) -> None:
        """``[broker] urls``: well-formed, distinct, one TLS mode, and not contradicting ``url``."""
        urls = self.broker_urls
        for url in urls:
            if not isinstance(url, str) or not _BROKER_URL.match(url):
                raise bad("broker_urls", f"{url!r} is not mqtt://host[:port] or mqtts://")
        if len(set(urls)) != len(urls):
            dup = next(u for u in urls if urls.count(u) > 1)
            raise bad("broker_urls", f"{dup!r} is listed twice")
        if len({u.startswith("mqtts://") for u in urls}) > 1:
            raise bad("broker_urls", "mixes mqtt:// and mqtts:// members; one TLS setting serves all")
        if self.broker_url and urls and urls != [self.broker_url]:
            raise bad("broker_urls", "set either [broker] url (one broker) or [broker] urls "
                                     "(the members of a cluster), not both")

    # ------------------------------------------------------------ derived
    @property
    def broker_members(self) -> list[str]:
        """The broker URLs to connect to, in order: ``urls``, else ``[url]``, else none."""
        if self.broker_urls:
            return list(self.broker_urls)
        return [self.broker_url] if self.broker_url else []

    @property
    def task(self) -> Task:
        return Task(self.actions, gamma=self.gamma, name=self.task_name)

    @property
    def node(self) -> str:
        """The node id, defaulting to the host name (made topic-safe)."""
        if self.node_id:
            return self.node_id
        return re.sub(r"[^A-Za-z0-9_.\-]", "-", os.uname().nodename)[:64] or "node"

    def broker_password(self) -> str:
        if self.password_file:
            try:
                return Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"[broker] password_file: cannot read: {exc}") from None
        return self.password

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


def _location(name: str) -> tuple[str, str]:
    f = {f.name: f for f in dataclasses.fields(NodeConfig)}[name]
    return f.metadata["section"], f.metadata["key"]


def _coerce(raw: Any, default: Any, where: str) -> Any:
    """Convert a TOML or environment value to the type of the default."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if isinstance(raw, bool) and isinstance(default, (int, float)):
            raise ValueError(f"expected a number, got a boolean {raw!r}")
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"not an integer: {raw!r}")
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            if isinstance(raw, str):
                raw = [x.strip() for x in raw.split(",") if x.strip()]
            if not isinstance(raw, list):
                raise ValueError("expected a list")
            return [str(x) for x in raw]
        if isinstance(default, dict):
            if isinstance(raw, str):
                raw = json.loads(raw)
            if not isinstance(raw, dict):
                raise ValueError("expected a table")
            return {str(k): str(v) for k, v in raw.items()}
        if isinstance(raw, (dict, list)):
            raise ValueError("expected a string")
        if isinstance(raw, bool):  # TOML ``json = false`` for a "true"/"false" string setting
            return "true" if raw else "false"
        return str(raw)
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None, **overrides: Any) -> NodeConfig:
    """Read a TOML file (optional), apply ``PEERD_<SECTION>_<KEY>`` variables, then ``overrides``."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    fields = {(f.metadata["section"], f.metadata["key"]): f for f in dataclasses.fields(NodeConfig)}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got a value")
        for key in table:
            if (section, key) not in fields:
                known = sorted(k for s, k in fields if s == section)
                sections = sorted({s for s, _ in fields})
                hint = (f"; known keys: {', '.join(known)}" if known else
                        f" (unknown section; known sections: {', '.join(sections)})")
                raise ConfigError(f"[{section}] {key}: unknown setting{hint}")
    values: dict[str, Any] = {}
    for (section, key), f in fields.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if key in data.get(section, {}):
            values[f.name] = _coerce(data[section][key], default, f"[{section}] {key}")
        var = f"PEERD_{section}_{key}".upper()
        if var in env:
            values[f.name] = _coerce(env[var], default, f"${var}")
    known_vars = {f"PEERD_{s}_{k}".upper() for s, k in fields}
    unknown = sorted(v for v in env if v.startswith("PEERD_") and v not in known_vars)
    if unknown:  # a typo in a systemd drop-in must not silently fall back to a default
        raise ConfigError(f"unknown environment setting(s) {', '.join(unknown)}; "
                          "see config/peerd.example.toml for PEERD_<SECTION>_<KEY> names")
    values.update(overrides)
    return NodeConfig(**values)


def describe_settings() -> list[dict[str, Any]]:
    """Every setting with section, key, env variable, default and doc (for docs and --help)."""
    out = []
    for f in dataclasses.fields(NodeConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append({"section": f.metadata["section"], "key": f.metadata["key"],
                    "env": f"PEERD_{f.metadata['section']}_{f.metadata['key']}".upper(),
                    "default": default, "doc": f.metadata["doc"]})
    return out
