"""``ops``, ``checkpoints``, ``inspect``, ``verify`` and ``plan``: what is stored and
what a recovery would do. None of them changes anything."""

from __future__ import annotations

from typing import Any

import click

from bbp_dist_resume.api.admin_models import CheckpointDetails, OperationView
from bbp_dist_resume.api.models import CheckpointMetadata, ResumeMode
from bbp_dist_resume.cli import output as out
from bbp_dist_resume.cli.app import App, CheckFailed, pass_app

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command()
@click.argument("operation", required=False)
@json_option
@pass_app
def ops(app: App, operation: str | None, as_json: bool) -> None:
    """List operations (status, workers, lease health, progress), or one operation's workers."""
    with app.admin() as admin:
        views = [admin.operation(operation)] if operation else admin.operations()
    if as_json:
        out.emit_json(app.out, [v.to_dict() for v in views])
    elif operation:
        _workers_table(app, views[0])
    else:
        out.table(app.out, None, _OPS_COLUMNS, [_ops_row(v) for v in views])


_OPS_COLUMNS = ("OPERATION", "STATUS", "WORKERS", "LEASES", "PROGRESS", "CHECKPOINTS", "PLAN")


def _ops_row(v: OperationView) -> list[Any]:
    counts: dict[str, int] = {}
    for w in v.workers:
        counts[w.lease.value] = counts.get(w.lease.value, 0) + 1
    leases = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    done = counts.get("done", 0)
    return [
        v.operation_id,
        v.status,
        f"{done}/{len(v.workers)} done",
        leases or None,
        f"{v.progress:.0f}%",
        v.checkpoints,
        v.generation or None,
    ]


def _workers_table(app: App, v: OperationView) -> None:
    title = f"{v.operation_id}: {v.status}, plan generation {v.generation}"
    rows = [
        [
            w.worker_id,
            w.lease.value,
            None if w.lease_ms is None else f"{w.lease_ms / 1000:.1f} s",
            w.fence,
            None if w.progress is None else f"{w.progress:.0f}%",
            w.checkpoints,
            w.latest,
        ]
        for w in v.workers
    ]
    columns = ("WORKER", "LEASE", "EXPIRES IN", "FENCE", "PROGRESS", "CHECKPOINTS", "LATEST")
    out.table(app.out, title, columns, rows)


@click.command()
@click.argument("operation")
@click.option("--worker", help="Only this worker's checkpoints.")
@json_option
@pass_app
def checkpoints(app: App, operation: str, worker: str | None, as_json: bool) -> None:
    """List an operation's resume points, oldest first."""
    with app.admin() as admin:
        points = admin.resume_points(operation, worker)
    if as_json:
        out.emit_json(app.out, points)
        return
    columns = ("CHECKPOINT", "STAGE", "PROGRESS", "SIZE", "CREATED", "VERIFIED", "CHANNELS")
    out.table(app.out, None, columns, [_point_row(p) for p in points])


def _point_row(p: CheckpointMetadata) -> list[Any]:
    return [
        p.checkpoint_id,
        p.stage_name,
        f"{p.progress_percentage:.0f}%",
        out.size(p.logical_size),
        p.timestamp,
        p.is_verified,
        channels_text(p.consumed, p.produced) or None,
    ]


def channels_text(consumed: Any, produced: Any) -> str:
    """``in: a=3  out: b=7`` from a checkpoint's channel offsets."""
    parts = []
    if consumed:
        parts.append("in: " + " ".join(f"{c}={n}" for c, n in sorted(consumed.items())))
    if produced:
        parts.append("out: " + " ".join(f"{c}={n}" for c, n in sorted(produced.items())))
    return "  ".join(parts)


@click.command()
@click.argument("checkpoint")
@json_option
@pass_app
def inspect(app: App, checkpoint: str, as_json: bool) -> None:
    """Show one checkpoint: manifest, parts, sizes, dedup and channels."""
    with app.admin() as admin:
        details = admin.details(checkpoint)
    if as_json:
        out.emit_json(app.out, details.to_dict())
        return
    _details_text(app, details)


def _details_text(app: App, d: CheckpointDetails) -> None:
    m = d.metadata
    out.fields(
        app.out,
        [
            ("checkpoint", m.checkpoint_id),
            ("created", m.timestamp),
            ("stage", f"{m.stage_name} ({m.granularity})"),
            ("progress", f"{m.progress_percentage:.1f}%"),
            ("owner / fence", f"{d.owner_token} / {d.fence}"),
            ("root", m.verification_hash),
            ("resumed from seq", d.base),
            ("epoch", m.epoch),
            ("channels", channels_text(m.consumed, m.produced) or None),
            ("encrypted", d.encrypted),
            ("logical size", out.size(m.logical_size)),
            ("distinct chunks", f"{d.unique_chunks} ({out.size(d.unique_bytes)})"),
            ("stored (encoded)", out.size(d.stored_bytes)),
            ("dedup in checkpoint", f"{d.dedup_ratio:.2f}x"),
            ("new since previous", f"{out.size(d.new_bytes)} (previous: {d.previous or '-'})"),
            ("metadata", dict(m.custom_metadata) or None),
        ],
    )
    rows = [[p.name, out.size(p.size), p.chunks, p.inline, out.size(p.new_bytes)] for p in d.parts]
    out.table(app.out, "parts", ("PART", "SIZE", "CHUNKS", "INLINE", "NEW"), rows)


@click.command()
@click.argument("target", metavar="OPERATION|CHECKPOINT")
@click.option("--deep", is_flag=True, help="Download and re-hash every chunk.")
@json_option
@pass_app
def verify(app: App, target: str, deep: bool, as_json: bool) -> None:
    """Verify checkpoints: every chunk present (quick) or intact (--deep).

    Exit code 3 when any checkpoint is damaged; the report names the object.
    """
    with app.admin() as admin, out.progress(app.err, "verifying", show=app.interactive) as tick:
        reports = admin.verify(target, deep=deep, progress=tick)
    bad = [r for r in reports if not r.ok]
    if as_json:
        rows = [out_report(r) for r in reports]
        out.emit_json(app.out, rows)
    else:
        rows_text = [
            [r.checkpoint_id, "ok" if r.ok else "DAMAGED", r.chunks_checked, r.summary()]
            for r in reports
        ]
        out.table(app.out, None, ("CHECKPOINT", "RESULT", "CHUNKS", "DETAIL"), rows_text)
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(reports)} checkpoints damaged")


def out_report(r: Any) -> dict[str, Any]:
    return {
        "checkpoint_id": r.checkpoint_id,
        "ok": r.ok,
        "deep": r.deep,
        "chunks_checked": r.chunks_checked,
        "missing": list(r.missing),
        "corrupt": [list(c) for c in r.corrupt],
        "problems": list(r.problems),
    }


@click.command()
@click.argument("operation")
@click.option("--mode", type=click.Choice(["last", "best"]), default="last", show_default=True)
@json_option
@pass_app
def plan(app: App, operation: str, mode: str, as_json: bool) -> None:
    """Show the recovery line a recovery would publish now: per worker the checkpoint
    (or the initial state) and why, rollbacks, replay offsets and quarantined checkpoints."""
    with app.admin() as admin:
        recovery, generation = admin.plan(operation, ResumeMode(mode))
    body: dict[str, Any] = recovery.to_body() | {"published_generation": generation}
    if as_json:
        out.emit_json(app.out, body)
        return
    app.out.print(f"operation {operation}  (published generation {generation})", markup=False)
    rows = [
        [w, e["checkpoint_id"] or "initial state", e["reason"], e.get("rollback")]
        for w, e in body["entries"].items()
    ]
    out.table(app.out, None, ("WORKER", "CHECKPOINT", "REASON", "ROLLBACK"), rows)
    for cid, why in body["quarantined"].items():
        app.out.print(f"quarantined {cid}: {why}", markup=False)


COMMANDS = [ops, checkpoints, inspect, verify, plan]
