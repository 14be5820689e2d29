"""Committed watermarks: how far a channel's producer has committed what no crash of it
can take back (``ResumeSystem.committed_offset``).

A consumer that must never be rolled back ("read committed") reads a channel only up to
this offset. A record below it is covered by a committed checkpoint of the producer's
live lineage, so a restarted producer restores at or past it and never writes that
record again; a record above it may be replaced when the producer crashes.

The rule, over the published resume plan (if any) and the producer's index entries:

- no plan in force: the ``produced`` offset of the producer's latest checkpoint (a crash
  restores the latest one);
- a plan in force that does not restart the producer: the plan's offset, or the latest
  checkpoint the producer committed after its plan entry;
- a plan that restarts the producer (it was relaunched, or consistency rolls it back):
  the plan's offset until the incarnation that restored the plan entry commits; then
  that incarnation's latest checkpoint. Commits in between belong to the old incarnation
  and will be replaced. The incarnation that restored the entry shows itself by its
  first commit, whose ``base`` is the entry's seq; for a relaunched producer only
  commits above the fence the plan's ``restarts`` names count (``policy.restarts``, also
  for a plan that carries a relaunch of an earlier one forward), so a zombie's commit
  with that base cannot pass for it. This is
  the rule ``WorkerSession`` applies when it decides whether a consumer must roll back,
  so a consumer that reads only up to the watermark is never rolled back by a plan.

The producer of a channel is the plan's, else the one worker whose checkpoints carry
``produced[channel]``. A channel nobody has committed yet is at 0: a consumer that starts
before its producer's first commit simply waits, it is not an error.

Not covered: a producer that is itself a consumer rolled back by consistency (read
committed all the way up, or declare it deterministic); a producer checkpoint that later
fails verification (the plan falls back past it); a replacement started by hand from a
stale plan before the coordinator publishes the new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.errors import InvalidCheckpoint
from bbp_dist_resume.policy.plan import RecoveryPlan
from bbp_dist_resume.policy.recovery import Point
from bbp_dist_resume.policy.restarts import restored_commits


def committed_offset(
    channel: str, plan: RecoveryPlan | None, histories: Mapping[str, Sequence[Point]]
) -> int:
    """The committed watermark of ``channel`` (see the module docstring).

    Args:
        channel: the channel's name.
        plan: the resume plan in force, or None.
        histories: worker -> its index entries (any order; takeovers are ignored); only
            the producer's are needed when the plan names the channel's producer.

    Returns:
        The offset, 0 when nothing of the channel is committed.

    Raises:
        InvalidCheckpoint: two workers' checkpoints claim to produce the channel.
    """
    pair = plan.channels.get(channel) if plan is not None else None
    producer = pair[0] if pair is not None else producer_of(channel, histories)
    if producer is None:
        return 0
    points = _checkpoints(histories.get(producer, ()))
    if plan is None:
        return _latest(points, channel)
    entry = plan.entries.get(producer)
    since = (entry.seq if entry is not None else None) or 0
    floor = pair[1] if pair is not None else 0
    relaunch = plan.restarts.get(producer)
    if relaunch is not None:
        # Its takeovers count here: the raw history, not only its checkpoints.
        history = histories.get(producer, ())
        return max(floor, restarted_offset(history, channel, since, relaunch))
    restarted = producer in plan.relaunched or (entry is not None and entry.rollback)
    return max(floor, _since(points, channel, since, restarted=restarted))


def producer_of(channel: str, histories: Mapping[str, Sequence[Point]]) -> str | None:
    """The worker whose checkpoints carry ``produced[channel]`` (None: no such worker).

    Raises:
        InvalidCheckpoint: more than one worker does.
    """
    found = sorted(w for w, h in histories.items() if any(channel in p.produced for p in h))
    if len(found) > 1:
        raise InvalidCheckpoint(
            f"channel {channel!r} is produced by both {found[0]!r} and {found[1]!r}"
        )
    return found[0] if found else None


def _checkpoints(history: Iterable[Point]) -> list[Point]:
    return sorted((p for p in history if p.kind == "checkpoint"), key=lambda p: p.seq)


def _latest(points: Sequence[Point], channel: str) -> int:
    """The offset at the latest checkpoint: the one a crash restores (its live lineage
    always ends there)."""
    return points[-1].produced.get(channel, 0) if points else 0


def restored_marker(
    history: Iterable[Point], since: int, relaunch: int | None = None
) -> int | None:
    """The seq of the first commit of an incarnation that restored seq ``since`` (0: the
    initial state): the first checkpoint after it whose ``base`` is ``since`` (above the
    plan's ``restarts`` fence ``relaunch`` when given: a zombie's commit with that base
    is not it). Retention keeps it while a plan names ``since`` (``Maintenance.protected``):
    without it the restored incarnation's later commits could not be told from the old
    one's."""
    points: Iterable[Point] = history
    if relaunch is not None:
        points = restored_commits(list(history), relaunch) or []
    return next((p.seq for p in _checkpoints(points) if p.seq > since and p.base == since), None)


def restarted_offset(
    history: Iterable[Point], channel: str, since: int, relaunch: int | None = None
) -> int:
    """How far the incarnation that restored seq ``since`` has committed ``channel``
    (0 while it has not committed): the rule both ``committed_offset`` and a consumer's
    rollback check (``PlanWatch``) apply to a restarted producer. ``relaunch``: the
    plan's ``restarts`` fence of a relaunched producer (only commits above it count)."""
    points = list(history)
    if relaunch is not None:
        points = restored_commits(points, relaunch) or []
    return _since(_checkpoints(points), channel, since, restarted=True)


def _since(points: Sequence[Point], channel: str, since: int, *, restarted: bool) -> int:
    """The offset at the latest checkpoint after seq ``since`` that a crash would not take
    back; 0 when there is none."""
    start = since
    if restarted:
        # The old incarnation's commits above the entry are replaced; the new one shows
        # itself by its first commit, whose base is the entry it restored.
        marker = restored_marker(points, since)
        if marker is None:
            return 0
        start = marker - 1
    return _latest([p for p in points if p.seq > start], channel)


def read_committed_offset(coord: Coordination, operation_id: str, channel: str) -> int:
    """``committed_offset`` from the backend: the plan, then the producer's index (every
    worker's when the plan does not name the channel). Two round trips.

    Raises:
        InvalidCheckpoint: a malformed plan, or two producers of the channel.
        CoordinationUnavailable: the backend did not answer.
    """
    stored = coord.read_plan(operation_id)
    plan = None
    if stored is not None:
        plan = RecoveryPlan.from_body(operation_id, stored.generation, stored.body)
    pair = plan.channels.get(channel) if plan is not None else None
    if pair is None:
        histories = coord.index_all(operation_id)
    else:
        histories = {pair[0]: coord.index(operation_id, pair[0])}
    return committed_offset(channel, plan, histories)
