"""The peerd CLI dispatches one way: every subcommand comes from a module's add_parser, has a
help line and a description, and runs through the ``func`` it set."""

from __future__ import annotations

import argparse
import importlib

import pytest

from peerd import cli

EXPECTED = {"sim", "run", "decode", "inspect", "status", "peers", "table", "keygen"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_registers_a_func_and_a_helpful_help() -> None:
    """Each subcommand sets ``func`` (a callable from its own module) and documents itself:
    a one-line help in `peerd --help` and a description of at least a sentence."""
    parser = cli.build_parser()
    listing = parser.format_help()
    subs = _subcommands()
    assert set(subs) == EXPECTED
    modules = {importlib.import_module(m) for m in cli.COMMAND_MODULES}
    for name, sub in subs.items():
        func = sub.get_default("func")
        assert callable(func), name
        assert importlib.import_module(func.__module__) in modules, name
        assert name in listing
        assert sub.description and len(sub.description) > 40, name


def test_main_runs_the_func_the_subcommand_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() returns whatever the chosen command's func returns (no second dispatch table)."""
    from peerd import decode_cmd

    seen: list[argparse.Namespace] = []

    def fake_run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    monkeypatch.setattr(decode_cmd, "run", fake_run)
    assert cli.main(["decode", "payload.bin"]) == 7
    assert seen and seen[0].file == "payload.bin"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`peerd` alone lists the commands and exits 2."""
    assert cli.main([]) == 2
    assert "keygen" in capsys.readouterr().out


def test_run_imports_no_other_command_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """``peerd run`` builds the daemon's parser only: the other commands stay out of the daemon."""
    from peerd import daemon

    imported: list[str] = []
    real = importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda m: imported.append(m) or real(m))
    monkeypatch.setattr(daemon, "run", lambda args: 0)
    parser_modules: list[tuple[str, ...]] = []
    real_build = cli.build_parser

    def build(modules: tuple[str, ...] = cli.COMMAND_MODULES) -> argparse.ArgumentParser:
        parser_modules.append(modules)
        return real_build(modules)

    monkeypatch.setattr(cli, "build_parser", build)
    assert cli.main(["run", "--config", "x.toml"]) == 0
    assert parser_modules == [("peerd.daemon",)] and imported == ["peerd.daemon"]
