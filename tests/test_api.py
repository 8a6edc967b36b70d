"""The local HTTP API: end to end against `peerd run` processes on a real broker, and its error
contract (JSON 4xx, never a traceback) against a daemon served in process."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import ACTIONS, DaemonProcess, new_federation, wait_until, write_config

from peerd.client import ApiError, PeerdClient
from peerd.config import load_config
from peerd.daemon import Daemon
from peerd.testing.broker import Broker, free_port

# -- against `peerd run` ------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Any:
    made: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        d = DaemonProcess(config)
        made.append(d)
        return d

    yield start
    for d in made:
        d.close()


def test_client_round_trip_against_peerd_run(broker: Broker, tmp_path: Path, daemons: Any) -> None:
    """act, learn, table, status, peers, healthz and /metrics work through PeerdClient."""
    d = daemons(write_config(tmp_path, "solo", fed=new_federation(), broker=broker))
    assert d.wait_ready(connected=True)["node"] == "solo"
    c = d.client
    state = {"zone": 3, "load": [1, 2]}
    a = c.act(state)
    assert 0 <= a < len(ACTIONS)
    details = c.act_details(state, explore=False)
    assert details["action_name"] == ACTIONS[details["action"]] and len(details["values"]) == 3
    versions = [c.learn(state, "b", 1.0, next_state="idle") for _ in range(3)]
    versions.append(c.learn("idle", 2, -0.5, done=True, success=False))
    assert versions == [1, 2, 3, 4]

    row = c.table(state)
    assert row["actions"] == ACTIONS and row["visits"] == [0, 3, 0]
    assert row["own_share"] == [0.0, 1.0, 0.0] and row["values"][1] > 0
    assert c.table("idle")["visits"] == [0, 0, 1]
    status = c.status()
    assert status["counters"]["interactions"] == 4 and status["version"] == 4
    assert status["connected"] and status["store"]["cells"] == 2
    assert c.peers() == []

    metrics = {f.name: f for f in text_string_to_metric_families(c.metrics())}
    assert metrics["peerd_interactions"].samples[0].value == 4
    assert metrics["peerd_broker_connected"].samples[0].value == 1
    assert metrics["peerd_own_version"].samples[0].value == 4
    assert d.stop() == 0


def test_two_daemons_see_each_other_and_converge(broker: Broker, tmp_path: Path,
                                                 daemons: Any) -> None:
    """Two daemons on one broker list each other online, merge to the same visits (the sum of all
    interactions), and a stopped one shows as offline to the other."""
    fed = new_federation()
    a = daemons(write_config(tmp_path, "alpha", fed=fed, broker=broker))
    b = daemons(write_config(tmp_path, "beta", fed=fed, broker=broker))
    a.wait_ready(connected=True)
    b.wait_ready(connected=True)

    def online(d: DaemonProcess, peer: str) -> bool:
        return any(p["node"] == peer and p["status"] == "online" for p in d.client.peers())

    wait_until(lambda: online(a, "beta") and online(b, "alpha"), 15, "peers see each other")

    own = {name: {f"s{i}": [0, 0, 0] for i in range(4)} for name in ("alpha", "beta")}
    for i in range(12):  # alpha: actions 0 and 1 on s0..s3
        s = f"s{i % 4}"
        a.client.learn(s, i % 2, 1.0, next_state=f"s{(i + 1) % 4}")
        own["alpha"][s][i % 2] += 1
    for i in range(9):  # beta: actions 1 and 2, overlapping alpha's cells
        s = f"s{i % 4}"
        b.client.learn(s, 1 + (i // 4) % 2, 0.5, done=True)
        own["beta"][s][1 + (i // 4) % 2] += 1
    total = {s: [x + y for x, y in zip(own["alpha"][s], own["beta"][s], strict=True)]
             for s in own["alpha"]}

    def converged() -> bool:
        return all(d.client.table(s)["visits"] == v for d in (a, b) for s, v in total.items())

    wait_until(converged, 15, f"merged visits {total}")
    both = [(s, i) for s, v in own["alpha"].items() for i in range(3)
            if v[i] and own["beta"][s][i]]
    assert both
    for s, i in both:  # each node knows which part of a shared cell's visits is its own
        assert a.client.table(s)["own_share"][i] == pytest.approx(own["alpha"][s][i] / total[s][i])
        assert b.client.table(s)["own_share"][i] == pytest.approx(own["beta"][s][i] / total[s][i])

    assert b.stop() == 0
    wait_until(lambda: any(p["node"] == "beta" and p["status"] == "offline"
                           for p in a.client.peers()), 10, "alpha sees beta offline")
    assert a.stop(signal.SIGINT) == 0


# -- the error contract, in process ---------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Daemon, str]]:
    """A daemon served in this process (no broker): (daemon, "host:port")."""
    listen = f"127.0.0.1:{free_port()}"
    cfg = load_config(write_config(tmp_path, "local", fed=new_federation(), listen=listen,
                                   api={"max_body": 4096}), env={})
    d = Daemon(cfg)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(d.serve(stop.wait, ready))
    await asyncio.wait_for(ready.wait(), 10)
    yield d, listen
    stop.set()
    assert await asyncio.wait_for(task, 20) == 0


def raw(listen: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request with http.client; (status, JSON body, headers)."""
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


LEARN_OK = {"state": "s", "action": "a", "reward": 1.0}

BAD_REQUESTS = [
    ("POST", "/v1/act", b"{not json", 400, "malformed_json"),
    ("POST", "/v1/act", b"[1, 2]", 400, "malformed_json"),
    ("POST", "/v1/act", b'{"state": NaN}', 400, "malformed_json"),
    ("POST", "/v1/act", b"{}", 400, "missing_field"),
    ("POST", "/v1/act", b'{"state": "s", "explore": "yes"}', 400, "invalid_field"),
    ("POST", "/v1/learn", b'{"state": "s", "action": "a"}', 400, "missing_field"),
    ("POST", "/v1/learn", b'{"state": "s", "action": "jump", "reward": 1}', 400, "unknown_action"),
    ("POST", "/v1/learn", b'{"state": "s", "action": 7, "reward": 1}', 400, "unknown_action"),
    ("POST", "/v1/learn", b'{"state": "s", "action": true, "reward": 1}', 400, "invalid_field"),
    ("POST", "/v1/learn", b'{"state": "s", "action": 0, "reward": "1"}', 400, "invalid_field"),
    ("POST", "/v1/learn", b'{"state": "s", "action": 0, "reward": 1e400}', 400, "invalid_reward"),
    ("POST", "/v1/learn", b'{"state": "s", "action": 0, "reward": 1e300}', 400, "invalid_reward"),
    ("POST", "/v1/learn", b'{"state": "s", "action": 0, "reward": 1, "done": 1}', 400,
     "invalid_field"),
    ("GET", "/v1/table", None, 400, "missing_field"),
    ("GET", "/v1/nothing", None, 404, "not_found"),
    ("GET", "/v1/act", None, 405, "method_not_allowed"),
    ("POST", "/v1/status", b"{}", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS,
                         ids=[f"{m} {p} {c}" for m, p, _, _, c in BAD_REQUESTS])
async def test_bad_requests_get_json_errors(served: tuple[Daemon, str], method: str, path: str,
                                            body: bytes | None, status: int, code: str) -> None:
    """Each malformed request gets its status and a JSON {error, detail}; the table is untouched."""
    d, listen = served
    got, answer, _ = await asyncio.to_thread(raw, listen, method, path, body)
    assert (got, answer["error"]) == (status, code), answer
    assert isinstance(answer["detail"], str) and answer["detail"]
    assert d.node.table.version == 0 and d.node.counters.interactions == 0


async def test_oversized_body_gets_413(served: tuple[Daemon, str]) -> None:
    """A body over api.max_body gets 413, announced by Content-Length or sent chunked."""
    _, listen = served
    big = json.dumps({**LEARN_OK, "state": "x" * 5000}).encode()
    status, answer, _ = await asyncio.to_thread(raw, listen, "POST", "/v1/learn", big)
    assert (status, answer["error"]) == (413, "body_too_large")

    def chunked() -> tuple[int, dict[str, Any]]:
        host, port = listen.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", "/v1/learn", body=iter([big[:3000], big[3000:]]),
                         encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, answer = await asyncio.to_thread(chunked)
    assert (status, answer["error"]) == (413, "body_too_large")


async def test_405_names_the_allowed_methods(served: tuple[Daemon, str]) -> None:
    """A wrong method gets 405 with an Allow header, as HTTP requires."""
    _, listen = served
    status, _, headers = await asyncio.to_thread(raw, listen, "DELETE", "/v1/learn")
    assert status == 405 and "POST" in headers["Allow"]


async def test_internal_error_is_500_without_a_traceback(served: tuple[Daemon, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception becomes a 500 JSON error that reveals nothing of it."""
    d, listen = served

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("secret internals at /etc/peerd")

    monkeypatch.setattr(d.node, "peer_table", broken)
    status, answer, _ = await asyncio.to_thread(raw, listen, "GET", "/v1/peers")
    assert (status, answer["error"]) == (500, "internal_error")
    assert "secret" not in json.dumps(answer) and "Traceback" not in json.dumps(answer)


async def test_table_state_is_json_or_a_plain_string(served: tuple[Daemon, str]) -> None:
    """?state= takes JSON (the client's encoding) or, when it is not JSON, the plain string."""
    _, listen = served
    client = PeerdClient(f"http://{listen}")
    await asyncio.to_thread(client.learn, "idle", "c", 2.0, done=True)
    await asyncio.to_thread(client.learn, ["x", 1], "a", 1.0, done=True)
    _, plain, _ = await asyncio.to_thread(raw, listen, "GET", "/v1/table?state=idle")
    _, quoted, _ = await asyncio.to_thread(raw, listen, "GET", "/v1/table?state=%22idle%22")
    assert plain["visits"] == quoted["visits"] == [0, 0, 1]
    assert (await asyncio.to_thread(client.table, ("x", 1)))["visits"] == [1, 0, 0]


async def test_client_raises_api_error_with_the_server_message(served: tuple[Daemon, str]) -> None:
    """PeerdClient turns a 4xx into ApiError carrying status, code and the server's detail."""
    _, listen = served
    client = PeerdClient(f"http://{listen}")
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(client.learn, "s", "jump", 1.0)
    assert info.value.status == 400 and info.value.code == "unknown_action"
    assert "jump" in info.value.message
