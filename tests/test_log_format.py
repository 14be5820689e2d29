"""The JSON log formatter: one object per line with the context fields, for the
library's records and anyone else's, exceptions included, URL credentials masked."""

from __future__ import annotations

import importlib
import io
import json
import logging
import pkgutil

from bbp_dist_resume.logs import (
    FIELDS,
    ContextFilter,
    get_logger,
    json_handler,
    log_context,
    redact,
)

JSON_KEYS = {"time", "level", "logger", "message", "thread", *FIELDS}


def test_json_lines_parse_back_with_the_fields_for_any_logger() -> None:
    stream = io.StringIO()
    handler = json_handler(stream)
    other = logging.getLogger("someone.else")
    ours = get_logger("bbp_dist_resume.test")
    for logger in (other, ours):
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    try:
        other.info("outside any context")
        with log_context(operation="op-1", worker="w9"):
            ours.info("two\nlines, %s", "one record")
            with log_context(checkpoint="op-1/w9/4"):
                try:
                    raise ValueError("boom")
                except ValueError:
                    ours.exception("failed at redis://:pa55word@10.0.0.5:6379/0")
            other.warning("a user's own record", extra={"worker": "given"})
    finally:
        for logger in (other, ours):
            logger.removeHandler(handler)
            logger.propagate = True
    lines = stream.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 4
    assert all(set(e) - {"exception"} == JSON_KEYS for e in entries)
    first, second, third, fourth = entries
    assert (first["logger"], first["operation"], first["worker"]) == ("someone.else", "", "")
    assert second["message"] == "two\nlines, one record" and second["level"] == "INFO"
    assert (second["operation"], second["worker"], second["checkpoint"]) == ("op-1", "w9", "")
    assert third["checkpoint"] == "op-1/w9/4" and "ValueError: boom" in third["exception"]
    assert "pa55word" not in lines[2] and "redis://***@10.0.0.5:6379/0" in third["message"]
    assert (fourth["operation"], fourth["worker"]) == ("op-1", "given")
    assert first["time"].endswith("Z") and first["thread"] == "MainThread"


def test_redact_masks_url_credentials_only() -> None:
    assert redact("s3://key:secret@host/b and redis://:pw@h:1/0") == (
        "s3://***@host/b and redis://***@h:1/0"
    )
    assert redact("file:/data/x@y and user@example.org") == "file:/data/x@y and user@example.org"


def test_every_library_logger_carries_the_context_filter() -> None:
    # A module that takes ``logging.getLogger`` instead of ``logs.get_logger`` emits records
    # without the fields, and a format naming %(operation)s fails on them.
    package = importlib.import_module("bbp_dist_resume")
    for module in pkgutil.walk_packages(package.__path__, "bbp_dist_resume."):
        importlib.import_module(module.name)
    loggers = {
        name: logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.split(".")[0] == "bbp_dist_resume" and isinstance(logger, logging.Logger)
    }
    assert "bbp_dist_resume" in loggers and "bbp_dist_resume.api.session" in loggers
    bare = sorted(
        n for n, lg in loggers.items() if not any(isinstance(f, ContextFilter) for f in lg.filters)
    )
    assert bare == [], f"use bbp_dist_resume.logs.get_logger in {bare}"
