"""The ``peerd`` command. It dispatches one way: each command module has
``add_parser(subparsers)``, which registers its subcommand(s) with a ``--help``
and sets ``func``; ``main`` runs ``args.func(args)`` and returns its exit status.

    sim                          peerd.sim_cmd     (the [sim] extra)
    run                          peerd.daemon
    decode                       peerd.decode_cmd
    inspect                      peerd.inspect_cmd
    status, peers, table, keygen peerd.tools_cmd

Heavy imports happen inside the commands, so that ``peerd --help`` is instant
and an edge install never imports the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from peerd import __doc__ as _pkg_doc

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: The modules whose ``add_parser`` builds the ``peerd`` command, in ``--help`` order.
COMMAND_MODULES = ("peerd.sim_cmd", "peerd.daemon", "peerd.decode_cmd", "peerd.inspect_cmd",
                   "peerd.tools_cmd")


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The ``peerd`` parser: every command module registers itself with ``add_parser``."""
    parser = argparse.ArgumentParser(
        prog="peerd", description=(_pkg_doc or "").strip().splitlines()[0],
        epilog="Run 'peerd COMMAND --help' for the options of a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command's ``func``; return its exit status.

    ``peerd run`` builds only the daemon's parser: the daemon lives for months,
    and the other commands' modules would stay imported in it (~2 MB of RSS).
    """
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(("peerd.daemon",) if words[:1] == ["run"] else COMMAND_MODULES)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
