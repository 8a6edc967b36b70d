"""Configuration (DESIGN §8): TOML file, ``PEERD_*`` overrides, validation naming the key."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from peerd.config import NodeConfig, describe_settings, load_config
from peerd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "peerd.example.toml"
KEY_A = "ab" * 32
KEY_B = "0123456789abcdef" * 4


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "peerd.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid() -> None:
    """Every default passes validation once the task has actions (the one required setting)."""
    cfg = NodeConfig(actions=["a"])
    for f in dataclasses.fields(NodeConfig):
        if f.name != "actions":
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            assert getattr(cfg, f.name) == default, f.name
    assert cfg.task.n_actions == 1
    assert cfg.node  # a hostname-derived id when none is given


def test_no_actions_is_an_error() -> None:
    """Without actions there is no task: the error names ``[task] actions``."""
    with pytest.raises(ConfigError, match=r"\[task\] actions"):
        load_config(env={})


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    """Values of every TOML type land in the right fields."""
    p = write(tmp_path, f"""
        [node]
        federation = "farm"
        id = "edge-1"
        [task]
        actions = ["left", "right"]
        gamma = 0.9
        [broker]
        url = "mqtts://broker.example:8883"
        keepalive = 45
        [learning]
        half_life = 120
        strategy = "trimmed_mean:0.2"
        [gossip]
        publish_every = 5
        [security]
        strict = true
        [security.allowlist]
        edge-2 = "{KEY_A}"
        [log]
        json = false
    """)
    cfg = load_config(p, env={})
    assert (cfg.federation, cfg.node_id, cfg.node) == ("farm", "edge-1", "edge-1")
    assert cfg.actions == ["left", "right"] and cfg.gamma == 0.9
    assert cfg.broker_url == "mqtts://broker.example:8883" and cfg.keepalive == 45
    assert cfg.half_life == 120.0 and isinstance(cfg.half_life, float)
    assert cfg.strategy == "trimmed_mean:0.2" and cfg.publish_every == 5
    assert cfg.strict is True and cfg.allowlist == {"edge-2": KEY_A}
    assert cfg.log_json == "false"  # a TOML boolean for the "true"/"false" string setting


def test_env_overrides_file_with_type_coercion(tmp_path: Path) -> None:
    """``PEERD_<SECTION>_<KEY>`` wins over the file and is coerced: int, float, bool, list, JSON dict."""
    p = write(tmp_path, """
        [task]
        actions = ["x"]
        [gossip]
        publish_every = 5
        [learning]
        half_life = 10.0
    """)
    env = {
        "PEERD_GOSSIP_PUBLISH_EVERY": "25",
        "PEERD_LEARNING_HALF_LIFE": "120.5",
        "PEERD_SECURITY_STRICT": "yes",
        "PEERD_TASK_ACTIONS": "a, b,c",
        "PEERD_SECURITY_ALLOWLIST": json.dumps({"n1": KEY_A, "n2": KEY_B}),
        "PEERD_BROKER_URL": "mqtt://localhost:1884",
        "UNRELATED": "ignored",
    }
    cfg = load_config(p, env=env)
    assert cfg.publish_every == 25 and isinstance(cfg.publish_every, int)
    assert cfg.half_life == 120.5
    assert cfg.strict is True
    assert cfg.actions == ["a", "b", "c"]
    assert cfg.allowlist == {"n1": KEY_A, "n2": KEY_B}
    assert cfg.broker_url == "mqtt://localhost:1884"


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("ON", True),
                                            ("0", False), ("no", False), ("off", False)])
def test_env_booleans(raw: str, value: bool) -> None:
    """Boolean variables accept the usual spellings, case-insensitively."""
    env = {"PEERD_TASK_ACTIONS": "a", "PEERD_SECURITY_STRICT": raw,
           "PEERD_SECURITY_ALLOWLIST": json.dumps({"n": KEY_A})}
    assert load_config(env=env).strict is value


@pytest.mark.parametrize(("var", "raw"), [
    ("PEERD_GOSSIP_PUBLISH_EVERY", "ten"),
    ("PEERD_GOSSIP_PUBLISH_EVERY", "2.5"),
    ("PEERD_LEARNING_HALF_LIFE", "long"),
    ("PEERD_SECURITY_STRICT", "maybe"),
    ("PEERD_SECURITY_ALLOWLIST", "{not json"),
    ("PEERD_SECURITY_ALLOWLIST", "[1, 2]"),
])
def test_env_value_of_wrong_type_names_the_variable(var: str, raw: str) -> None:
    """An environment value that cannot be coerced is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=re.escape(var)):
        load_config(env={"PEERD_TASK_ACTIONS": "a", var: raw})


def test_env_parameter_replaces_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``env=`` given, ``os.environ`` is not consulted at all."""
    monkeypatch.setenv("PEERD_BROKER_URL", "not a url")
    cfg = load_config(env={"PEERD_TASK_ACTIONS": "a"})
    assert cfg.broker_url == ""


def test_keyword_overrides_win_over_env() -> None:
    """Keyword overrides (field names) are applied last."""
    cfg = load_config(env={"PEERD_TASK_ACTIONS": "a", "PEERD_GOSSIP_PUBLISH_EVERY": "7"},
                      publish_every=3)
    assert cfg.publish_every == 3


@pytest.mark.parametrize(("toml", "raw"), [
    ("[broker]\nkeepalive = true\n", "boolean"),
    ("[broker]\nkeepalive = 2.5\n", "integer"),
    ("[broker]\nurl = [1]\n", "string"),
    ("[task]\nactions = 3\n", "list"),
    ("[security]\nallowlist = 3\n", "table"),
])
def test_toml_value_of_wrong_type_names_the_key(tmp_path: Path, toml: str, raw: str) -> None:
    """A TOML value of the wrong type is a ConfigError naming ``[section] key``, never silently coerced."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n' * ("[task]" not in toml) + toml)
    with pytest.raises(ConfigError, match=r"^\[(broker|task|security)\] \w+: .*" + raw):
        load_config(p, env={})


def test_unknown_key_is_named_with_known_keys(tmp_path: Path) -> None:
    """A misspelt key fails, naming it and listing the section's known keys."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n[gossip]\npublish_evry = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    msg = str(err.value)
    assert "[gossip] publish_evry" in msg
    for key in ("publish_every", "heartbeat_interval", "sync_interval"):
        assert key in msg


def test_unknown_section_is_named_with_known_sections(tmp_path: Path) -> None:
    """An unknown section fails, naming it and listing the sections that exist."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n[gosip]\npublish_every = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    msg = str(err.value)
    assert "[gosip]" in msg and "unknown section" in msg
    for section in ("broker", "gossip", "learning", "node", "task"):
        assert section in msg


def test_top_level_value_is_rejected(tmp_path: Path) -> None:
    """A bare key outside any section is an error, not ignored."""
    p = write(tmp_path, 'federation = "x"\n[task]\nactions = ["a"]\n')
    with pytest.raises(ConfigError, match=r"\[federation\] must be a table"):
        load_config(p, env={})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    p = write(tmp_path, "[task\nactions = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, env={})


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"half_life": -5.0}, "[learning] half_life"),
    ({"half_life": float("nan")}, "[learning] half_life"),
    ({"broker_url": "http://broker:1883"}, "[broker] url"),
    ({"broker_url": "mqtt://"}, "[broker] url"),
    ({"gamma": 2.0}, "[task] gamma"),
    ({"strict": True}, "[security] strict"),
    ({"allowlist": {"n1": "beef"}}, "[security] allowlist"),
    ({"allowlist": {"n1": "zz" * 32}}, "[security] allowlist"),
    ({"api_listen": "localhost"}, "[api] listen"),
    ({"api_listen": "127.0.0.1:99999"}, "[api] listen"),
    ({"api_listen": ":8765"}, "[api] listen"),
    ({"federation": "a/b"}, "[node] federation"),
    ({"node_id": "has space"}, "[node] id"),
    ({"actions": ["a", "a"]}, "[task] actions"),
    ({"publish_every": 0}, "[gossip] publish_every"),
    ({"sync_interval": -1.0}, "[gossip] sync_interval"),
    ({"eps_start": 0.01, "eps_end": 0.5}, "[learning] eps_start"),
    ({"policy": "softmax"}, "[learning] policy"),
    ({"strategy": "mode"}, "[learning] strategy"),
    ({"synchronous": "OFF"}, "[store] synchronous"),
    ({"log_json": "yes"}, "[log] json"),
    ({"broker_urls": ["mqtt://a:1883", "http://b:1883"]}, "[broker] urls"),
    ({"broker_urls": ["mqtt://a:1883", "mqtt://a:1883"]}, "[broker] urls"),
    ({"broker_urls": ["mqtt://a", "mqtts://b"]}, "[broker] urls"),
    ({"broker_url": "mqtt://a", "broker_urls": ["mqtt://b", "mqtt://c"]}, "[broker] urls"),
    ({"subscribe_qos": 2}, "[broker] subscribe_qos"),
]


@pytest.mark.parametrize(("bad", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_value_names_section_and_key(bad: dict[str, Any], where: str) -> None:
    """An invalid value is a ConfigError whose message starts with ``[section] key``."""
    with pytest.raises(ConfigError) as err:
        NodeConfig(**{"actions": ["a"], **bad})
    assert str(err.value).startswith(where + ":"), str(err.value)


def test_bad_value_from_file_names_section_and_key(tmp_path: Path) -> None:
    """Validation applies to loaded files too: a negative half-life in TOML names ``[learning] half_life``."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n[learning]\nhalf_life = -1\n')
    with pytest.raises(ConfigError, match=r"^\[learning\] half_life:"):
        load_config(p, env={})


def test_valid_edge_values() -> None:
    """Boundary values that are legal are accepted (gamma 0 and 1, unix socket, mqtt without port)."""
    for kw in ({"gamma": 0.0}, {"gamma": 1.0}, {"api_listen": "unix:/run/peerd.sock"},
               {"api_listen": ""}, {"broker_url": "mqtt://broker"}, {"sync_interval": 0.0},
               {"strict": True, "allowlist": {"n": KEY_A.upper()}}):
        NodeConfig(actions=["a"], **kw)


def test_describe_settings_covers_every_field() -> None:
    """``describe_settings`` lists each field once, with its section, key, env variable, default and doc."""
    rows = describe_settings()
    fields = dataclasses.fields(NodeConfig)
    assert len(rows) == len(fields)
    assert len({(r["section"], r["key"]) for r in rows}) == len(rows)
    assert len({r["env"] for r in rows}) == len(rows)
    for row, f in zip(rows, fields, strict=True):
        assert (row["section"], row["key"]) == (f.metadata["section"], f.metadata["key"])
        assert row["env"] == f"PEERD_{row['section']}_{row['key']}".upper()
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        assert row["default"] == default
        assert row["doc"].strip()


def test_every_setting_is_reachable_by_env() -> None:
    """Each documented env variable really sets its field (a round trip through ``load_config``)."""
    cfg = NodeConfig(actions=["a"])
    for row in describe_settings():
        name = next(f.name for f in dataclasses.fields(NodeConfig)
                    if (f.metadata["section"], f.metadata["key"]) == (row["section"], row["key"]))
        value = getattr(cfg, name)
        raw = (json.dumps(value) if isinstance(value, dict) else ",".join(value)
               if isinstance(value, list) else str(value).lower() if isinstance(value, bool)
               else str(value))
        env = {"PEERD_TASK_ACTIONS": "a", row["env"]: raw}
        assert getattr(load_config(env=env), name) == value, row["env"]


def _documented_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) pairs an example file sets or shows commented out (``# key = ...``)."""
    found: set[tuple[str, str]] = set()
    section = ""
    for line in text.splitlines():
        head = re.match(r"^\s*#?\s*\[([A-Za-z0-9_.\-]+)\]\s*(#.*)?$", line)
        if head:
            section = head.group(1)
            if "." in section:  # [security.allowlist] documents the allowlist table
                found.add(tuple(section.split(".", 1)))  # type: ignore[arg-type]
            continue
        kv = re.match(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if kv and section:
            found.add((section, kv.group(1)))
    return found


def test_example_config_loads_and_documents_every_setting() -> None:
    """``config/peerd.example.toml`` loads as it is and shows every setting of ``describe_settings``."""
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE.relative_to(REPO)} does not exist (yet): nothing to check")
    cfg = load_config(EXAMPLE, env={})
    assert isinstance(cfg, NodeConfig)
    documented = _documented_keys(EXAMPLE.read_text())
    missing = [f"[{r['section']}] {r['key']}" for r in describe_settings()
               if (r["section"], r["key"]) not in documented]
    assert not missing, f"example config does not document: {', '.join(missing)}"


def test_unknown_peerd_environment_variable_is_an_error() -> None:
    """A misspelt PEERD_* variable (PEERD_BROKER_URLL) stops the start with a message naming it."""
    with pytest.raises(ConfigError, match="PEERD_BROKER_URLL"):
        load_config(env={"PEERD_BROKER_URLL": "mqtt://x:1"}, actions=["a"])


# -- the members of a clustered broker ------------------------------------------------------


def test_broker_urls_from_file_and_environment(tmp_path: Path) -> None:
    """``[broker] urls`` lists cluster members in order; ``PEERD_BROKER_URLS`` is comma-separated."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n[broker]\n'
                        'urls = ["mqtt://n1:1883", "mqtt://n2:1884"]\n')
    assert load_config(p, env={}).broker_members == ["mqtt://n1:1883", "mqtt://n2:1884"]
    env = {"PEERD_BROKER_URLS": "mqtt://x:1, mqtt://y:2,mqtt://z:3"}
    assert load_config(p, env=env).broker_members == ["mqtt://x:1", "mqtt://y:2", "mqtt://z:3"]


def test_broker_url_is_the_one_member_case() -> None:
    """``url`` alone is a one-member list; ``url`` equal to a one-member ``urls`` is accepted."""
    assert NodeConfig(actions=["a"], broker_url="mqtt://b").broker_members == ["mqtt://b"]
    same = NodeConfig(actions=["a"], broker_url="mqtt://b", broker_urls=["mqtt://b"])
    assert same.broker_members == ["mqtt://b"]
    assert NodeConfig(actions=["a"]).broker_members == []


def test_url_and_urls_together_is_a_clear_error(tmp_path: Path) -> None:
    """Both set (and different) is refused with a message that says to pick one."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n[broker]\nurl = "mqtt://a"\n')
    with pytest.raises(ConfigError, match=r"^\[broker\] urls: set either \[broker\] url"):
        load_config(p, env={"PEERD_BROKER_URLS": "mqtt://b,mqtt://c"})


def test_bad_member_is_named(tmp_path: Path) -> None:
    """A malformed member in ``PEERD_BROKER_URLS`` is named in the error."""
    p = write(tmp_path, '[task]\nactions = ["a"]\n')
    with pytest.raises(ConfigError, match=r"'mqtt:/oops' is not mqtt://host"):
        load_config(p, env={"PEERD_BROKER_URLS": "mqtt://a,mqtt:/oops"})
