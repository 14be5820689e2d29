"""Print the README's configuration reference: every CheckpointConfig field with its
environment variable, default and meaning, as a Markdown table.

    .venv/bin/python infra/dev/config_reference.py

tests/test_readme.py checks that README.md holds exactly this table, so the reference
cannot drift from the code.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Any

from bbp_dist_resume.config import CheckpointConfig

HIDDEN = {"best_fn", "chooser"}  # callables: code only, no file or variable


def default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g} s"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "empty" if not value else ", ".join(map(str, value))
    return f"`{value}`"


def table() -> str:
    rows = ["| field | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in CheckpointConfig.model_fields.items():
        if name in HIDDEN:
            continue
        default = default_text(info.default)
        rows.append(f"| `{name}` | `BBP_{name.upper()}` | {default} | {info.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
