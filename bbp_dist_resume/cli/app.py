"""What every command shares: the global options, the effective config, the consoles,
and the one place where errors become exit codes.

Exit codes: 0 done; 1 an error (one line on stderr; a traceback only with ``--debug``);
2 a usage error; 3 a check that ran and failed (damaged checkpoints, an invalid config, a
demo whose output differs); 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console

from bbp_dist_resume.api.admin import Admin
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import BBPError
from bbp_dist_resume.logs import FIELDS, install_context_filter, json_handler

# Structured fields (bbp_dist_resume.logs) show where they apply.
_TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [%(operation)s %(worker)s %(checkpoint)s] %(message)s"
)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_INTERRUPTED = 130


@dataclass
class App:
    """The global options of one ``bbp-resume`` run and what is built from them."""

    config_file: str | None = None
    store: str | None = None
    coord: str | None = None
    debug: bool = False
    log_format: str = "text"
    out: Console = field(default_factory=lambda: _console(sys.stdout))
    err: Console = field(default_factory=lambda: _console(sys.stderr))
    _config: CheckpointConfig | None = None

    def config(self, **overrides: Any) -> CheckpointConfig:
        """The effective config: defaults < ``--config`` file < ``BBP_*`` < flags."""
        if self._config is None:
            self._config = CheckpointConfig.load(self.config_file, **self.flags)
        return self._config.with_changes(**overrides) if overrides else self._config

    @property
    def flags(self) -> dict[str, Any]:
        """The config fields given as flags (``--store``, ``--coord``)."""
        return {k: v for k, v in (("store_url", self.store), ("coord_url", self.coord)) if v}

    @contextmanager
    def admin(self, *, create_backend: bool = False, **overrides: Any) -> Iterator[Admin]:
        """An ``Admin`` that creates nothing to open (``create_backend``: but the SQLite
        database, for ``rebuild-index``)."""
        with Admin(self.config(**overrides), create_backend=create_backend) as admin:
            yield admin

    @property
    def interactive(self) -> bool:
        """Progress bars and prompts only for a person at a terminal, never in pipes."""
        return self.err.is_terminal


def _console(stream: Any) -> Console:
    # Pipes get no colour and a wide page, so tables are not wrapped into nonsense.
    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal else 200, highlight=False)


pass_app = click.make_pass_decorator(App)


class CheckFailed(click.ClickException):
    """A check ran and found a problem (exit code 3); its report is already printed."""

    exit_code = EXIT_CHECK_FAILED


def run(cli: click.Group, argv: list[str] | None) -> int:
    """Run the command line; map every outcome to an exit code (the only place that does)."""
    debug = _debug_asked(argv)
    try:
        return int(cli.main(args=argv, prog_name="bbp-resume", standalone_mode=False) or EXIT_OK)
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(exc, debug)


def _exit_code(exc: BaseException, debug: bool) -> int:
    if isinstance(exc, click.exceptions.Exit):  # --help, --version
        return int(exc.exit_code)
    if isinstance(exc, click.UsageError):
        exc.show()
        return EXIT_USAGE
    if isinstance(exc, click.ClickException):  # CheckFailed too, with its own exit code
        _error_line(exc.format_message())
        return exc.exit_code
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        _error_line("interrupted")
        return EXIT_INTERRUPTED
    # A library error is expected; anything else is a bug, still one line by default.
    prefix = "" if isinstance(exc, BBPError) else f"internal error ({type(exc).__name__}): "
    return _failed(exc, debug, prefix)


def _failed(exc: BaseException, debug: bool, prefix: str) -> int:
    if debug:
        traceback.print_exception(exc)
    _error_line(prefix + str(exc) + ("" if debug else _hint(exc)))
    return EXIT_ERROR


def _hint(exc: BaseException) -> str:
    return "" if isinstance(exc, BBPError) else " (run with --debug for the traceback)"


def _error_line(message: str) -> None:
    print(f"bbp-resume: error: {message}", file=sys.stderr)


def _debug_asked(argv: list[str] | None) -> bool:
    # Known before parsing, so even a parse-time failure can honour it.
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("BBP_DEBUG", "").lower() in ("1", "true", "yes")


def setup_logging(debug: bool, log_format: str) -> None:
    """Log to stderr, as text or one JSON object a line: warnings and up (a service
    command lowers it to info with :func:`service_logging`), everything with --debug."""
    if log_format == "json":
        handler = json_handler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter())
        install_context_filter(handler)  # other libraries' records get the fields too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


class TextFormatter(logging.Formatter):
    """``time level logger: message  operation=... worker=... checkpoint=...``, the
    structured fields (``bbp_dist_resume.logs``) only where they apply."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [(f, getattr(record, f, "")) for f in FIELDS]
        shown = " ".join(f"{name}={value}" for name, value in fields if value)
        return f"{line}  {shown}" if shown else line


def service_logging() -> None:
    """Long-running commands (coordinator, worker) say what they do: info and up."""
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
