"""``bbp-resume``: run, inspect and operate distributed checkpoints from the shell.

Settings come from ``--config FILE`` (TOML), ``BBP_*`` environment variables and the
``--store`` / ``--coord`` flags, later ones winning. Every listing takes ``--json``.
Errors are one line on stderr and exit code 1 (2 for usage, 3 for a failed check); a
traceback only with ``--debug``.
"""

from __future__ import annotations

import click

from bbp_dist_resume import __version__
from bbp_dist_resume.cli import (
    cmd_config,
    cmd_demo,
    cmd_keys,
    cmd_maint,
    cmd_read,
    cmd_resume,
    cmd_run,
)
from bbp_dist_resume.cli.app import App, run, setup_logging

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    context_settings=_CONTEXT,
    help="Run, inspect and operate distributed checkpoints. Settings: --config FILE (TOML) "
    "< BBP_* environment variables < --store/--coord.",
)
@click.version_option(__version__, "--version", prog_name="bbp-resume")
@click.option(
    "--config",
    "config_file",
    envvar="BBP_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML config file (env BBP_CONFIG).",
)
@click.option("--store", metavar="URL", help="Store URL, file:DIR or s3://bucket/prefix?...")
@click.option("--coord", metavar="URL", help="Coordination URL, sqlite:FILE or redis://...")
@click.option("--debug", is_flag=True, help="Tracebacks and debug logs (env BBP_DEBUG=1).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="BBP_LOG_FORMAT",
    show_default=True,
    help="Log lines on stderr as text or JSON objects.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    *,
    config_file: str | None,
    store: str | None,
    coord: str | None,
    debug: bool,
    log_format: str,
) -> None:
    ctx.obj = App(
        config_file=config_file, store=store, coord=coord, debug=debug, log_format=log_format
    )
    setup_logging(debug, log_format)


for module in (cmd_demo, cmd_run, cmd_read, cmd_resume, cmd_maint, cmd_keys, cmd_config):
    for command in module.COMMANDS:
        cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    return run(cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
