"""peerd.errors is the one exception tree: every public error lives there, is drawn in its
docstring, and every rejection reason a WireError can carry is listed in wire.REASONS."""

from __future__ import annotations

import importlib
import pkgutil

import peerd
from peerd import errors, wire


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def _import_every_peerd_module() -> None:
    """So that an error class defined anywhere in the package is seen by __subclasses__."""
    for info in pkgutil.walk_packages(peerd.__path__, "peerd."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def test_every_peerd_error_is_defined_in_errors_and_drawn_in_its_tree() -> None:
    """No module defines its own PeerdError subclass, and the docstring tree names them all."""
    _import_every_peerd_module()
    ours = {c for c in _all_subclasses(errors.PeerdError) if c.__module__.startswith("peerd")}
    assert {c.__module__ for c in ours} == {"peerd.errors"}
    for cls in ours:
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree"
    assert {"ApiError", "ToolError", "OriginMismatch", "MalformedMessage"} <= set(errors.__all__)


def test_reasons_cover_every_wire_error_class() -> None:
    """wire.REASONS (the pre-registered metric labels) holds the reason of every WireError
    class, including the ones decode never raises itself, and lists each once."""
    _import_every_peerd_module()
    reasons = {c.reason for c in _all_subclasses(errors.WireError)} | {errors.WireError.reason}
    assert reasons <= set(wire.REASONS)
    assert {"excessive_evidence", "origin_mismatch", "origin_limit"} <= set(wire.REASONS)
    assert len(set(wire.REASONS)) == len(wire.REASONS)
    assert wire.REASONS is errors.REASONS


def test_moved_errors_are_the_same_classes_where_they_used_to_be() -> None:
    """The old import paths still name the classes of peerd.errors (no second tree)."""
    from peerd import client, node, tools_cmd

    assert client.ApiError is errors.ApiError and client.ApiUnreachable is errors.ApiUnreachable
    assert tools_cmd.ToolError is errors.ToolError
    assert node.OriginMismatch is errors.OriginMismatch
    assert wire.Replay is errors.Replay and wire.MalformedMessage is errors.MalformedMessage
