"""``keys init | add | list``: a store's encryption keys.

The secret is the config's ``encryption_key`` (``BBP_ENCRYPTION_KEY``, the config file),
or typed at a hidden prompt on a terminal; it is never printed. Older secrets that must
keep opening old checkpoints go in ``decryption_keys``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from bbp_dist_resume.api import keyadmin
from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, pass_app
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import EncryptionKeyError


@click.group()
def keys() -> None:
    """Manage a store's encryption keys (passphrases wrap random data keys)."""


def _with_secret(app: App, *, confirm: bool) -> CheckpointConfig:
    config = app.config()
    if config.encryption_key is not None:
        return config
    if not (sys.stdin.isatty() and app.err.is_terminal):
        raise EncryptionKeyError("no encryption_key configured: set BBP_ENCRYPTION_KEY")
    secret = click.prompt(
        "encryption passphrase", hide_input=True, confirmation_prompt=confirm, err=True
    )
    return config.with_changes(encryption_key=secret)


@keys.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def keys_init(app: App, as_json: bool) -> None:
    """Make a new store encrypted: its first data key, under the configured secret."""
    info = keyadmin.init_keys(_with_secret(app, confirm=True))
    _show(app, "created data key", info, as_json)


@keys.command("add")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def keys_add(app: App, as_json: bool) -> None:
    """Add a data key under the configured secret and write with it from now on (key
    rotation: put the old secret in decryption_keys so old checkpoints stay readable)."""
    info = keyadmin.add_key(_with_secret(app, confirm=True))
    _show(app, "added data key", info, as_json)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def keys_list(app: App, as_json: bool) -> None:
    """List the store's data keys and which configured secret opens each."""
    found = keyadmin.list_keys(app.config())
    if as_json:
        out.emit_json(app.out, found)
        return
    rows = [[k.key_id, k.created_at, _opener(k.opened_by), k.writer] for k in found]
    out.table(app.out, None, ("KEY ID", "CREATED", "OPENED BY", "WRITES"), rows)


def _opener(index: int | None) -> str:
    if index is None:
        return "no configured secret"
    return "encryption_key" if index == 0 else f"decryption_keys[{index - 1}]"


def _show(app: App, verb: str, info: Any, as_json: bool) -> None:
    if as_json:
        out.emit_json(app.out, info)
    else:
        app.out.print(f"{verb} {info.key_id} (created {info.created_at})", markup=False)


COMMANDS = [keys]
