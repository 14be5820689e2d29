"""The README's references stay true to the code: the configuration table is exactly what
``infra/dev/config_reference.py`` generates from ``CheckpointConfig``, and the CLI
reference names every command the CLI has."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from bbp_dist_resume.cli.main import cli
from bbp_dist_resume.config import CheckpointConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "infra/dev/config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_table_is_generated_from_the_code() -> None:
    found = re.search(
        r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", README, re.S
    )
    assert found, "README.md lacks the config-reference markers"
    assert found.group(1) == _generator().table()  # type: ignore[attr-defined]


def test_every_config_field_has_a_description_and_a_row() -> None:
    for name, info in CheckpointConfig.model_fields.items():
        if name in ("best_fn", "chooser"):
            continue
        assert info.description, f"{name} has no description"
        assert f"| `{name}` | `BBP_{name.upper()}` |" in README


def test_the_cli_reference_names_every_command() -> None:
    section = README[README.index("## The `bbp-resume` command") :]
    section = section[: section.index("\n## ", 1)]
    for name in cli.commands:
        assert f"| `{name}" in section, f"bbp-resume {name} is not in the CLI reference"
