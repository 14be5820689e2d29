"""Output: JSON for scripts (``--json``), rich tables for people, and progress bars that
show on a terminal only (a pipe stays quiet)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bbp_dist_resume.api.admin_models import plain

Tick = Callable[[int, int], None]


def emit_json(console: Console, data: Any) -> None:
    """Print ``data`` as indented JSON (dataclasses, enums and datetimes made plain)."""
    console.print_json(json.dumps(plain(data), sort_keys=True, default=str), indent=2)


def table(console: Console, title: str | None, columns: Sequence[str], rows: Sequence[Any]) -> None:
    """Print a table; ``rows`` are sequences of cells (None shows as a dash)."""
    out = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        out.add_column(col, overflow="fold")
    for row in rows:
        out.add_row(*(cell_text(c) for c in row))
    console.print(out)


def fields(console: Console, pairs: Sequence[tuple[str, Any]]) -> None:
    """Print ``name: value`` lines, aligned."""
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        console.print(f"{name:<{width}}  {cell_text(value)}", markup=False)


def cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.1f} s"
    return str(value)


def size(n: int | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextmanager
def progress(console: Console, what: str, *, show: bool) -> Iterator[Tick]:
    """A ``tick(done, total)`` callback that drives a progress bar on a terminal and
    does nothing otherwise."""
    if not show:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(what, total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick
