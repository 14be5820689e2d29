"""``retention``, ``gc`` and ``rebuild-index``: housekeeping of the store and the index."""

from __future__ import annotations

import click

from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, pass_app


@click.command()
@click.argument("operation", required=False)
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def retention(app: App, operation: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply retention (max_checkpoints, cleanup_age) to one operation or to all.

    Never removes a worker's newest checkpoint, an entry of the current plan or recovery
    line, or a takeover record. The chunks they used are freed later by `gc`.
    """
    with app.admin() as admin:
        removed = admin.retention(operation, dry_run=dry_run)
    if as_json:
        out.emit_json(app.out, {"dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    rows = [
        [op, worker, len(seqs), ", ".join(map(str, seqs))]
        for op, workers in sorted(removed.items())
        for worker, seqs in sorted(workers.items())
    ]
    total = sum(len(seqs) for workers in removed.values() for seqs in workers.values())
    out.table(app.out, None, ("OPERATION", "WORKER", "COUNT", "SEQS"), rows)
    app.out.print(f"{verb} {total} checkpoints", markup=False)


@click.command()
@click.option("--dry-run", is_flag=True, help="Mark and check, delete nothing.")
@click.option(
    "--break-lock", is_flag=True, help="Remove the lock a dead GC left (only if none runs)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def gc(app: App, *, dry_run: bool, break_lock: bool, as_json: bool) -> None:
    """Delete chunks that no checkpoint references and that are older than
    gc_safety_margin. Safe while workers checkpoint (README: Garbage collection); one
    run at a time (a store lock); a commit record it cannot read aborts it with nothing
    deleted."""
    with app.admin() as admin, out.progress(app.err, "collecting", show=app.interactive) as tick:
        report = admin.collect_garbage(dry_run=dry_run, progress=tick, break_lock=break_lock)
    if as_json:
        out.emit_json(app.out, report)
        return
    verb = "would delete" if dry_run else "deleted"
    app.out.print(
        f"{report.chunks_seen} chunks, {report.chunks_referenced} referenced by "
        f"{report.records_seen} commit records, {report.candidates} older than "
        f"{report.margin:g} s; {verb} {report.deleted} ({out.size(report.bytes_freed)}), "
        f"kept {report.kept} rewritten since, in {report.duration:.1f} s",
        markup=False,
    )


@click.command("rebuild-index")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def rebuild_index(app: App, as_json: bool) -> None:
    """Rebuild every checkpoint index and fencing counter from the store's commit records
    (after the coordination backend lost its data, a SQLite file included: it is made
    again). Safe to run again."""
    with app.admin(create_backend=True) as admin:
        report = admin.rebuild_index()
    if as_json:
        out.emit_json(app.out, report)
        return
    app.out.print(
        f"rebuilt {report.operations} operations: {report.entries_added} index entries added, "
        f"{len(report.fences)} fencing counters at or above every fence in the store",
        markup=False,
    )


COMMANDS = [retention, gc, rebuild_index]
