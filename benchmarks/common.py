"""What both benchmarks share: the machine record, the services module, the table."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

SERVICES_PY = Path(__file__).resolve().parent.parent / "infra" / "dev" / "services.py"


def machine() -> dict[str, Any]:
    """The machine a run measured, for the JSON and the table's header."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
    }


def import_services() -> ModuleType:
    """infra/dev/services.py by path (neither directory is a package)."""
    name = "bbp_dev_services"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SERVICES_PY)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {SERVICES_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def table(head: tuple[str, ...], cells: list[tuple[str, ...]], *, left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the rest right."""
    cells = [head, *cells]
    widths = [max(len(c[i].strip()) for c in cells) for i in range(len(head))]
    lines = []
    for i, c in enumerate(cells):
        parts = [x.ljust(w) for x, w in zip(c[:left], widths[:left], strict=True)]
        parts += [x.strip().rjust(w) for x, w in zip(c[left:], widths[left:], strict=True)]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
