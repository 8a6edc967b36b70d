"""An edge install stays lean: the daemon's import path pulls in no simulator or test broker,
and ``peerd sim`` without the ``[sim]`` extra says how to install it instead of failing."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from peerd import cli

REPO = Path(__file__).resolve().parents[1]
SIM_ONLY = ("gymnasium", "matplotlib", "rich", "amqtt")


def _imported_after(blocked: tuple[str, ...]) -> list[str]:
    """Import the daemon's entry points in a fresh interpreter where ``blocked`` packages are
    not installed; return which [sim] packages or peerd.testing modules got imported."""
    code = (
        "import json, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # as if not installed: import raises ImportError\n"
        "import peerd.node, peerd.daemon, peerd.cli, peerd.transport\n"
        "peerd.cli.build_parser()\n"
        f"heavy = {SIM_ONLY!r}\n"
        "print(json.dumps(sorted(m for m, mod in sys.modules.items() if mod is not None and\n"
        "                        (m.split('.')[0] in heavy or m.startswith('peerd.testing')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    return json.loads(out.stdout)


def test_daemon_imports_without_the_sim_extra() -> None:
    """peerd.node, peerd.daemon, peerd.cli and the transport import (and the CLI builds) in an
    interpreter where gymnasium, matplotlib, rich and amqtt are not installed."""
    assert _imported_after(SIM_ONLY) == []


def test_daemon_import_path_imports_no_simulator_or_test_broker() -> None:
    """With the extra installed, the daemon's import path still loads no gymnasium, matplotlib,
    amqtt or peerd.testing. (rich is left out here: structlog's console renderer imports it
    by itself when it happens to be installed, and works without it, as the test above shows.)"""
    imported = [m for m in _imported_after(()) if m.split(".")[0] != "rich"]
    assert imported == []


def test_daemon_loads_no_module_it_needs_only_for_convenience() -> None:
    """Every daemon pays for each module it loads (~2.5 MB for numpy.random, ~0.6 MB for
    statistics with decimal and fractions); with 50 daemons on a host that is the RSS budget.
    Importing the daemon and choosing actions with every policy loads none of them."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "import peerd.node, peerd.daemon, peerd.api, peerd.metrics, peerd.store, peerd.transport\n"
        "from peerd.policy import POLICIES\n"
        "row = np.array([1.0, 2.0, 0.5]), np.array([3, 1, 2]), np.array([1, 0, 2]), np.array([2, 1, 0])\n"
        "for cls in POLICIES.values():\n"
        "    for step in range(20):\n"
        "        cls(seed=step).choose(*row, step=step)\n"
        "print(json.dumps([m for m in ('numpy.random', 'statistics', 'decimal', 'fractions')\n"
        "                  if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("missing", SIM_ONLY)
def test_sim_without_the_extra_prints_the_install_line_and_exits_2(
        missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With one of the [sim] packages unimportable, `peerd sim` prints one line naming
    `pip install 'peerd[sim]'` and exits 2 without starting anything."""
    monkeypatch.setitem(sys.modules, missing, None)  # import machinery: "not installed"
    assert cli.main(["sim", "--nodes", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "pip install 'peerd[sim]'" in err
    assert missing in err


def test_core_dependencies_exclude_the_simulator_and_pin_amqtt() -> None:
    """pyproject: the simulator is the [sim] extra, amqtt pinned to the version
    peerd/testing/broker.py patches, and [test] pulls [sim]."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in SIM_ONLY:
        assert name not in core
    extras = project["optional-dependencies"]
    assert "amqtt==0.12.1" in extras["sim"]
    assert "peerd[sim]" in extras["test"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The README's two commands are two one-liners, the main job installs the [sim] extra,
    and .ci/run runs the README's test command verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1)[1].strip() for b in section.split("```sh")[1:]]
    blocks = [b.split("```", 1)[0].strip() for b in blocks]
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    main_job, tests = blocks
    assert "pip install '.[sim]'" in main_job and main_job.endswith("peerd sim --out out/")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci
