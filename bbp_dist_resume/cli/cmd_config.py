"""``config show | validate``: the effective configuration and what is wrong with it."""

from __future__ import annotations

from typing import Any

import click

from bbp_dist_resume.api import utils
from bbp_dist_resume.api.runtime import not_made_yet
from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, CheckFailed, pass_app
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import BBPError, ConfigError
from bbp_dist_resume.logs import redact


@click.group("config")
def config_group() -> None:
    """Show or check the effective configuration (file < BBP_* < flags)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: App, as_json: bool) -> None:
    """Every field's effective value and where it came from; secrets are masked."""
    config = app.config()
    sources = CheckpointConfig.sources(app.config_file, **app.flags)
    values = _shown(config)
    if as_json:
        out.emit_json(app.out, {f: {"value": v, "source": sources[f]} for f, v in values.items()})
        return
    rows = [[f, v, sources[f]] for f, v in values.items()]
    out.table(app.out, None, ("FIELD", "VALUE", "SOURCE"), rows)


def _shown(config: CheckpointConfig) -> dict[str, Any]:
    # model_dump(mode="json") masks SecretStr values as "**********"; redact masks the
    # user:password part of a URL (store_url, coord_url).
    data = config.model_dump(mode="json", exclude={"best_fn", "chooser"})
    return {k: redact(v) if isinstance(v, str) else v for k, v in data.items()}


@config_group.command("validate")
@click.option("--connect", is_flag=True, help="Also open the store and the coordination backend.")
@pass_app
def validate(app: App, connect: bool) -> None:
    """Check the configuration; exit code 3 with every problem listed when it is not valid.

    --connect also opens the store (bucket, credentials, keys) and the backend, as a
    reader: what the first worker creates (a local store folder, a store never written
    to, a SQLite file) is a note naming it, not a problem; nothing is created.
    """
    try:
        config = app.config()
    except ConfigError as exc:
        for field, why in exc.problems:
            app.out.print(f"{field}: {why}" if field else why, markup=False)
        count = len(exc.problems)
        noun = "problem" if count == 1 else "problems"
        raise CheckFailed(f"{count} {noun} in the configuration") from None
    advice = utils.validate_config(config)
    for line in advice:
        app.out.print(f"warning: {line}", markup=False)
    if connect:
        for note in _connect(config):
            app.out.print(f"note: {note}", markup=False)
    app.out.print("configuration is valid" + (" and reachable" if connect else ""), markup=False)


def _connect(config: CheckpointConfig) -> list[str]:
    try:
        return not_made_yet(config)
    except BBPError as exc:
        raise CheckFailed(f"cannot open the store or the backend: {exc}") from None


COMMANDS = [config_group]
