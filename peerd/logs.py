"""Logging setup: structlog, JSON lines when not on a terminal (journald), readable when it is.

Event names are stable snake_case (``delta_applied``, ``peer_suspect``) with
fields, never formatted sentences; ``node`` and ``peer`` are bound fields.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once for the process; ``json=None`` decides from the terminal."""
    global _configured
    if json is None:
        json = not sys.stderr.isatty()
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,  # so that a later configure() (CLI, tests) applies
    )
    _configured = True


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A bound logger; configures the defaults (info, stderr) if nobody did.

    structlog's own default prints debug lines to stdout, which would mix logs
    into the output of commands such as ``peerd decode``.
    """
    if not _configured and not structlog.is_configured():
        configure()
    return structlog.get_logger("peerd").bind(**bound)
