"""Logging setup: structlog, JSON lines when not on a terminal (journald), readable when it is.

Event names are stable snake_case (``delta_applied``, ``peer_suspect``) with
fields, never formatted sentences; ``node`` and ``peer`` are bound fields.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger


def _import_structlog() -> ModuleType:
    """structlog, without the rich it imports eagerly for console tracebacks (~5 MB per daemon).

    A process that already uses rich (``peerd sim``) keeps rich tracebacks;
    elsewhere tracebacks print plainly, and JSON logs (journald) never used it.
    """
    if "rich" in sys.modules or "structlog" in sys.modules:
        import structlog
        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails inside structlog
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog


structlog = _import_structlog()

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


def get_logger(**bound: object) -> FilteringBoundLogger:
    """A bound logger; configures the defaults (info, stderr) if nobody did.

    structlog's own default prints debug lines to stdout, which would mix logs
    into the output of commands such as ``peerd decode``.
    """
    if not _configured and not structlog.is_configured():
        configure()
    return structlog.get_logger("peerd").bind(**bound)
