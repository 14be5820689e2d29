"""Structured log fields and a JSON formatter, shared by every layer.

Every record the library emits carries three attributes, ``""`` when they do not apply:

- ``operation``: the operation id a system, session or coordinator step works on;
- ``worker``: the worker id of the system (or of the slot a coordinator step handles);
- ``checkpoint``: the checkpoint id being committed, restored, verified or deleted.

They come from context variables, set with ``log_context`` where a system, a session, a
checkpoint or a coordinator step knows them. The library's own threads (committer,
heartbeat, catalog pool) run their work in a copy of the context of the call that
started it (``in_context``), so their records carry that call's fields. ``get_logger``
returns a library logger with a ``ContextFilter`` on it, which writes the fields on each
record, so a user's format string may say ``%(operation)s``. A handler that also formats
other libraries' records with such a format needs ``ContextFilter()`` on itself (those
records have no such attributes). ``JsonFormatter`` writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from contextvars import ContextVar, copy_context
from datetime import UTC, datetime
from typing import ParamSpec, TextIO, TypeVar

FIELDS = ("operation", "worker", "checkpoint")
PACKAGE_LOGGER = "bbp_dist_resume"

_VARS: dict[str, ContextVar[str]] = {
    name: ContextVar(f"bbp_log_{name}", default="") for name in FIELDS
}
# The user:password part of a URL (redis://:secret@host, s3 endpoints with credentials):
# a message that quotes a URL must never put a password on a log line.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
P = ParamSpec("P")
R = TypeVar("R")


_OPERATION, _WORKER, _CHECKPOINT = (_VARS[name] for name in FIELDS)


class LogContext:
    """The ``with`` block of ``log_context``: sets its fields on entry, puts them back on
    exit. Spelled out field by field: it runs on every call of the worker API."""

    __slots__ = ("_checkpoint", "_operation", "_tokens", "_worker")

    def __init__(self, operation: str | None, worker: str | None, checkpoint: str | None) -> None:
        self._operation, self._worker, self._checkpoint = operation, worker, checkpoint

    def __enter__(self) -> None:
        op, worker, cid = self._operation, self._worker, self._checkpoint
        self._tokens = (
            None if op is None else _OPERATION.set(op),
            None if worker is None else _WORKER.set(worker),
            None if cid is None else _CHECKPOINT.set(cid),
        )

    def __exit__(self, *exc: object) -> None:
        op, worker, cid = self._tokens
        if cid is not None:
            _CHECKPOINT.reset(cid)
        if worker is not None:
            _WORKER.reset(worker)
        if op is not None:
            _OPERATION.reset(op)


def log_context(
    *, operation: str | None = None, worker: str | None = None, checkpoint: str | None = None
) -> LogContext:
    """Set some log fields for a ``with`` block; ``None`` leaves a field as it is.

    Args:
        operation: the operation id, or ``None``.
        worker: the worker id, or ``None``.
        checkpoint: the checkpoint id, or ``None``.

    Returns:
        The context manager.
    """
    return LogContext(operation, worker, checkpoint)


def current_fields() -> dict[str, str]:
    """The log fields of the current context."""
    return {name: var.get() for name, var in _VARS.items()}


def in_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, bound to a copy of the current context: wherever and however often it is
    then called (another thread, a pool), it sees the log fields of now.

    Args:
        fn: the callable to bind.

    Returns:
        A callable with ``fn``'s signature; each call runs in its own copy of the context.
    """
    context = copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # A context can be entered by one thread at a time: each call gets its own copy.
        return context.copy().run(fn, *args, **kwargs)

    return run


class ContextFilter(logging.Filter):
    """Writes ``operation``, ``worker`` and ``checkpoint`` on every record it sees; a value
    the caller gave with ``extra=`` is kept. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


_FILTER = ContextFilter()


def get_logger(name: str) -> logging.Logger:
    """The library logger ``name``, with the context filter installed (once).

    A logger's filters see only the records logged on that very logger, not those of
    its children: so every library logger gets the filter, not just the package's.

    Args:
        name: a logger name under ``bbp_dist_resume``.

    Returns:
        The logger.
    """
    logger = logging.getLogger(name)
    logger.addFilter(_FILTER)  # a no-op when it is there already
    return logger


def install_context_filter(target: logging.Logger | logging.Handler) -> None:
    """Add the context filter to a handler or logger of your own (idempotent), so that
    every record it handles has the three fields, the library's or not.

    Args:
        target: the handler or logger.
    """
    target.addFilter(_FILTER)


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ``***``.

    Args:
        text: a log message or exception text.

    Returns:
        The text, safe to write.
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, ``operation``, ``worker``, ``checkpoint``, ``thread``, and
    ``exception`` (the traceback text) when there is one.

    Only these keys are written: never the record's arguments or ``extra`` values, and
    URL credentials are masked, so a line cannot carry a secret the message does not.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        entry = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **{name: str(getattr(record, name, "") or "") for name in FIELDS},
            "thread": record.threadName or "",
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) that writes JSON lines with the context
    fields of every record, the library's or not: what ``--log-format json`` installs.

    Args:
        stream: a text stream; stderr when ``None``.

    Returns:
        The handler, to add to the root logger (or any other).
    """
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_FILTER)
    return handler
