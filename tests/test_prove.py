"""The proof suite's quick scenarios (scripts/prove.py), each against real processes and real brokers.

Each test runs one ``run_scenario(name, quick=True)`` and checks its verdict
and the figures the verdict rests on, so that a failure names the broken
claim. The full-size runs are ``python scripts/prove.py`` (docs/prove.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import structlog

from peerd.testing.broker import find_mosquitto

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str) -> ModuleType:
    """Import scripts/prove.py by path (registered first: its dataclasses need their module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / "prove.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


prove = _load("peerd_prove_script")


@pytest.fixture(autouse=True)
def _keep_log_config() -> Iterator[None]:
    """run_scenario quiets structlog for clean output; the tests after these keep their setup."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _passed(result: dict[str, Any]) -> None:
    """Fail with the missed targets (or the error) first, then the figures."""
    verdict = {k: result[k] for k in ("error", "skipped", "targets") if k in result}
    assert result["pass"] is True, (json.dumps(verdict, indent=1, default=str) + "\nfigures: "
                                    + json.dumps(result, default=str)[:4000])


def test_crash_loses_no_acknowledged_interaction() -> None:
    """SIGKILLing a loaded `peerd run` 3 times loses no acknowledged interaction and invents none."""
    r = prove.run_scenario("crash", quick=True)
    _passed(r)
    assert r["kills"] == 3
    assert r["acknowledged"] > 0 and r["lost"] == 0
    assert r["unaccounted"] == 0 and r["duplicated"] == 0
    assert r["clean_stop_exit_status"] == 0


def test_broker_outage_reconnects_and_converges_exactly() -> None:
    """Nodes learning through a broker kill reconnect after its restart and converge with exact counts."""
    r = prove.run_scenario("outage", quick=True)
    _passed(r)
    assert r["reconnect_s"]["not_reconnected"] == 0
    assert r["interactions_during_outage"] > 0
    assert r["converge_s"] is not None


def test_outage_converges_on_a_broker_that_never_delivers_retained_messages() -> None:
    """The outage scenario passes on a broker whose retained presence never reaches anyone."""
    r = prove.run_scenario("outage", quick=True, deliver_retained=False)
    _passed(r)
    assert r["retained_delivered"] is False
    assert r["reconnect_s"]["not_reconnected"] == 0 and r["converge_s"] is not None


@pytest.mark.skipif(find_mosquitto() is None, reason="the partition needs mosquitto bridges")
def test_bridge_partition_heals_and_late_joiner_catches_up() -> None:
    """Two bridged sites cut apart while learning converge after the restore; a late joiner catches up."""
    r = prove.run_scenario("partition", quick=True)
    _passed(r)
    assert r["lag_a_behind_b"] > 0 and r["lag_b_behind_a"] > 0  # the cut was real
    assert r["converge_after_restore_s"] is not None
    assert r["late_joiner_converge_s"] is not None


def test_hostile_flood_changes_nothing_and_every_message_is_counted() -> None:
    """3k hostile messages: nodes stay up, no cell or trust changes, every message counted by reason."""
    r = prove.run_scenario("hostile", quick=True)
    _passed(r)
    assert r["messages_sent"] >= 3000
    for node in r["per_node"].values():
        assert node["cells_changed"] == 0 and node["versions_changed"] == 0
        assert node["received"] == node["rejected_total"] + node["accepted"]
        assert node["hostile_accepted"] == node["valid_sent"] == 1  # mallory's birth only
        assert node["trust_of_honest_peers_after"] == node["trust_of_honest_peers_before"]


@pytest.mark.skipif(not (SCRIPTS / "prove_poisoners.py").exists(),
                    reason="scripts/prove_poisoners.py not present")
def test_poisoners_are_quarantined_and_honest_nodes_still_learn() -> None:
    """With 20 % validly signed liars (invert, inflate) on the routing bandit, honest nodes reach the
    target within 3× the all-honest steps and every liar is out of every honest view within 10 rounds;
    inverters are also judged out by their values (quarantine). An inflater's every delta may be
    rejected by the evidence budget, leaving nothing to judge: it is out of the views all the same.

    The full matrix (Taxi, every attack, 2 and 3 liars, 3 seeds) is measured by
    ``scripts/prove.py --only poisoners`` and reported in docs/prove.md.
    """
    r = prove.run_scenario("poisoners", quick=True)
    honest = [row for row in r["table"] if not row["attack"]]
    attacked = [row for row in r["table"] if row["attack"]]
    assert honest and honest[0]["steps"] is not None
    assert honest[0]["honest_quarantine_rounds"] <= 1
    assert {row["attack"] for row in attacked} == {"invert", "inflate"}
    for row in attacked:
        assert row["slowdown"] is not None and row["slowdown"] <= 3.0, row
        assert row["rounds_to_exclusion"] is not None and row["rounds_to_exclusion"] <= 10, row
        if row["attack"] == "invert":
            assert row["rounds_to_quarantine"] is not None and row["rounds_to_quarantine"] <= 10, row


def test_unknown_scenarios_are_refused() -> None:
    """A misspelt scenario is an error, not an empty passing run."""
    with pytest.raises(ValueError):
        prove.run_scenario("crsh", quick=True)
    with pytest.raises(SystemExit):
        prove.main(["--only", "crash,nope"])
    with pytest.raises(SystemExit):
        prove.main(["--only", "soak"])  # the soak needs --soak MINUTES


def test_poisoner_report_judges_slowdown_quarantine_and_the_defences_cost(tmp_path: Path) -> None:
    """The poisoner table from run logs: slowdown vs the all-honest run, targets per row."""
    spec = importlib.util.spec_from_file_location("peerd_prove_poisoners_t", SCRIPTS / "prove_poisoners.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = {"env": "taxi", "count": 0, "attack": None, "rounds_to_quarantine": None, "seed": 1}
    lines = [
        {**base, "defences": False, "steps": 5000, "honest_quarantine_rounds": 0},
        {**base, "steps": 5400, "honest_quarantine_rounds": 1},
        {**base, "attack": "invert", "count": 2, "steps": 6480, "rounds_to_quarantine": 2,
         "honest_quarantine_rounds": 0},
        {**base, "attack": "extreme", "count": 3, "steps": None, "rounds_to_quarantine": None,
         "honest_quarantine_rounds": 9},
    ]
    log = tmp_path / "run.err"
    log.write_text("noise\n" + "".join(f"# poisoners {line!r}\n" for line in lines))
    doc = mod.merge_logs([log])
    rows = {(r["attack"], r["count"], r.get("defences", True)): r for r in doc["table"]}
    honest = rows[(None, 0, True)]
    assert honest["vs_before_defences"] == pytest.approx(1.08)
    assert honest["meets_slowdown"] and honest["meets_no_false_quarantine"]
    inv = rows[("invert", 2, True)]
    assert inv["slowdown"] == pytest.approx(1.2) and inv["meets_slowdown"] and inv["meets_quarantine"]
    ext = rows[("extreme", 3, True)]
    assert ext["meets_slowdown"] is False and ext["meets_quarantine"] is False
    assert doc["pass"] is False and len(doc["missed"]) == 1
