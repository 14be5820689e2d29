"""``resume``: choose a worker's resume point by mode and restore it into a folder."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from bbp_dist_resume.api.admin import RestoreResult
from bbp_dist_resume.api.models import CheckpointMetadata, ResumeMode
from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, pass_app
from bbp_dist_resume.cli.cmd_read import channels_text
from bbp_dist_resume.errors import InteractiveUnavailable

_MODES = {m.value: m for m in ResumeMode}


@click.command()
@click.argument("operation")
@click.option("--worker", required=True, help="The worker whose resume point to restore.")
@click.option(
    "--mode",
    type=click.Choice(list(_MODES)),
    default="last",
    show_default=True,
    help="full: start clean; last: the worker's place in the recovery line; best: the "
    "best-scoring consistent cut; interactive: pick from a numbered list.",
)
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write state.json and every attachment into this folder (never overwriting).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def resume(
    app: App, *, operation: str, worker: str, mode: str, dest: Path | None, as_json: bool
) -> None:
    """Resume WORKER of OPERATION by mode, as the worker itself would, without taking its
    lease: show the checkpoint it would go on from, and restore it with --to."""
    chooser = _numbered_picker(app) if mode == "interactive" else None
    with app.admin() as admin, ExitStack() as stack:
        result = admin.restore(
            operation, worker, _MODES[mode], dest, chooser=chooser, on_file=_FileBar(app, stack)
        )
    if result is None:
        raise click.ClickException("the chosen checkpoint failed verification; nothing restored")
    if as_json:
        out.emit_json(app.out, _result_dict(result))
    else:
        _result_text(app, result)


class _FileBar:
    """Counts the files written on a progress bar that starts with the first file, after
    the interactive picker's prompt: a live bar would draw over the prompt."""

    def __init__(self, app: App, stack: ExitStack) -> None:
        self._app = app
        self._stack = stack
        self._tick: out.Tick | None = None
        self._done = 0

    def __call__(self, name: str, path: Path) -> None:
        if self._tick is None:
            bar = out.progress(self._app.err, "restoring", show=self._app.interactive)
            self._tick = self._stack.enter_context(bar)
        self._done += 1
        self._tick(self._done, self._done)


def _numbered_picker(app: App) -> Any:
    """A chooser that lists the worker's resume points and reads a number on a terminal
    (0: start clean). Without a terminal it refuses, as the API does."""
    if not (sys.stdin.isatty() and app.err.is_terminal):
        raise InteractiveUnavailable("interactive resume needs a terminal")

    def choose(points: list[CheckpointMetadata]) -> CheckpointMetadata | None:
        rows = [
            [
                i,
                p.checkpoint_id,
                p.stage_name,
                f"{p.progress_percentage:.0f}%",
                p.timestamp,
                p.is_verified,
            ]
            for i, p in enumerate(points, 1)
        ]
        out.table(
            app.err,
            "resume points (0: start clean)",
            ("#", "CHECKPOINT", "STAGE", "PROGRESS", "CREATED", "VERIFIED"),
            rows,
        )
        pick = click.prompt(
            "resume from", type=click.IntRange(0, len(points)), err=True, default=len(points)
        )
        return points[pick - 1] if pick else None

    return choose


def _result_dict(result: RestoreResult) -> dict[str, Any]:
    c = result.context
    return {
        "operation_id": c.operation_id,
        "checkpoint_id": c.checkpoint_id,
        "mode": c.resume_mode.value,
        "reason": c.resume_reason,
        "stage": c.stage_name,
        "progress": c.progress_percentage,
        "consumed": dict(c.consumed),
        "produced": dict(c.produced),
        "attachments": list(c.attachment_names),
        "files": {name: str(path) for name, path in result.files.items()},
    }


def _result_text(app: App, result: RestoreResult) -> None:
    c = result.context
    out.fields(
        app.out,
        [
            ("resume from", c.checkpoint_id or "a clean start"),
            ("why", c.resume_reason),
            ("stage", c.stage_name or None),
            ("progress", f"{c.progress_percentage:.1f}%"),
            ("channels", channels_text(c.consumed, c.produced) or None),
            ("attachments", ", ".join(c.attachment_names) or None),
        ],
    )
    for name, path in result.files.items():
        app.out.print(f"wrote {name} -> {path}", markup=False)


COMMANDS = [resume]
