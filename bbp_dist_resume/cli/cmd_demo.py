"""``demo``: the multi-worker pipeline, a crash, the recovery, and the proof."""

from __future__ import annotations

from pathlib import Path

import click

from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, CheckFailed, pass_app
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.demo.report import DemoEvent, DemoEventKind, DemoReport
from bbp_dist_resume.demo.runner import DEFAULT_HOSTS, run_demo

_STYLE = {
    DemoEventKind.KILL: "bold red",
    DemoEventKind.DETECT: "bold yellow",
    DemoEventKind.RESUME: "bold cyan",
    DemoEventKind.RECOVER: "bold green",
    DemoEventKind.CHECK: "bold",
    DemoEventKind.WARNING: "yellow",
}


@click.command()
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Logs, and the embedded store and SQLite file when no store is configured.",
)
@click.option(
    "--probers",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Probe workers (the pipeline has probers + 2 workers).",
)
@click.option(
    "--hosts",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_HOSTS,
    show_default=True,
    help="Size of the pipeline's input.",
)
@click.option("--no-kill", is_flag=True, help="Run without the crash (a reference run).")
@click.option("--seed", type=int, help="Input, victim and moment of the crash (default random).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (steps on stderr).")
@pass_app
def demo(
    app: App,
    *,
    work_dir: Path,
    probers: int,
    hosts: int,
    no_kill: bool,
    seed: int | None,
    as_json: bool,
) -> None:
    """Run a recon-style pipeline (expand -> probers -> rank) as worker processes with a
    coordinator, kill one worker with SIGKILL mid-run, watch the coordinator detect the
    expired lease and the slot resume from the recovery line, and check that the final
    output is byte for byte that of a run that never crashed.

    With no store configured it runs on the embedded default (a file store and SQLite under
    --dir); with --store s3://... --coord redis://... it runs against those servers.
    """
    steps = app.err if as_json else app.out

    def show(event: DemoEvent) -> None:
        style = _STYLE.get(event.kind, "")
        steps.print(f"[{event.elapsed_s:6.1f} s] {event.kind.value:<8} ", end="", style=style)
        steps.print(event.message, markup=False, highlight=False)

    report = run_demo(
        _configured(app),
        work_dir,
        probers=probers,
        hosts=hosts,
        kill=not no_kill,
        seed=seed,
        on_event=show,
    )
    if as_json:
        out.emit_json(app.out, report.to_dict())
    else:
        _summary(app, report)
    if not report.output_matches:
        raise CheckFailed("the output differs from the uncrashed run's")


def _configured(app: App) -> CheckpointConfig | None:
    """The user's store and backend when any source names one, else None (embedded)."""
    sources = CheckpointConfig.sources(app.config_file, **app.flags)
    named = any(sources[f] != "default" for f in ("store_url", "coord_url"))
    return app.config() if named else None


def _summary(app: App, r: DemoReport) -> None:
    secs = "{:.2f} s".format
    out.fields(
        app.out,
        [
            ("operation", r.operation_id),
            ("store / coordination", f"{r.store_url}  {r.coord_url}"),
            ("wall time", secs(r.wall_time_s)),
            ("workers", ", ".join(r.workers)),
            ("checkpoints", f"{r.checkpoints} ({_per_worker(r)})"),
            (
                "crash",
                f"kill -9 {r.killed_worker} (pid {r.killed_pid})" if r.killed_worker else "none",
            ),
            ("detection time", None if r.detection_time_s is None else secs(r.detection_time_s)),
            (
                "recovery time",
                None
                if r.recovery_time_s is None
                else f"{secs(r.recovery_time_s)} (resumed from {r.resumed_from})",
            ),
            (
                "first new commit",
                None if r.first_commit_time_s is None else secs(r.first_commit_time_s),
            ),
            (
                "bytes",
                f"logical {out.size(r.logical_bytes)}, stored {out.size(r.stored_bytes)}"
                f" ({out.size(r.stored_object_bytes)} encoded), uploaded "
                f"{out.size(r.uploaded_bytes)}",
            ),
            ("dedup ratio", f"{r.dedup_ratio:.1f}x"),
            (
                "output",
                f"{r.output_checkpoint}  {r.output_bytes} bytes  sha256 {r.output_sha256[:16]}",
            ),
            ("identical to uncrashed run", r.output_matches),
        ],
    )


def _per_worker(r: DemoReport) -> str:
    return ", ".join(f"{w} {n}" for w, n in r.checkpoints_per_worker.items())


COMMANDS = [demo]
