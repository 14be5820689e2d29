"""Relaunched workers across plans (policy/restarts.py, and ``build_plan(previous=)``):
tables over histories with zombie commits, takeovers and restored commits. Every record
carries the fence of the incarnation that wrote it: 1 for the first, 2 for the one that
took the slot over after the crash."""

from __future__ import annotations

from points import P

from bbp_dist_resume.api.barrier import awaited, rolled_back
from bbp_dist_resume.policy.plan import RecoveryPlan, build_plan
from bbp_dist_resume.policy.restarts import pending_restarts, planning_view, restored_commits

OP = "op"
CH = "ch"


def T(seq: int, fence: int) -> P:
    return P(seq, kind="takeover", fence=fence)


def prod(seq: int, offset: int, base: int | None = None, fence: int = 1) -> P:
    return P(seq, base=base, produced={CH: offset}, fence=fence)


def cons(seq: int, offset: int, base: int | None = None, fence: int = 1) -> P:
    return P(seq, base=base, consumed={CH: offset}, fence=fence)


# prod (fence 1) committed 2 and 3; the plan relaunches it at 3, replacing fence 1.
BEFORE = [T(1, 1), prod(2, 4), prod(3, 8)]
CONSUMER = [T(1, 1), cons(2, 8)]
ZOMBIE = prod(4, 12)  # the old incarnation's commit after the plan, before the takeover
TAKEN = [*BEFORE, ZOMBIE, T(5, 2)]
RESTORED = prod(6, 10, base=3, fence=2)  # the replacement's first commit


def first_plan() -> RecoveryPlan:
    plan = build_plan(OP, {"prod": BEFORE, "cons": CONSUMER}, relaunched=["prod"])
    assert plan.restarts == {"prod": 1} and plan.entries["prod"].seq == 3
    return plan


# -- restored_commits ------------------------------------------------------------------------


def test_nothing_is_restored_before_a_takeover_above_the_fence() -> None:
    assert restored_commits([*BEFORE, ZOMBIE], 1) is None
    assert restored_commits(TAKEN, 1) == []
    assert restored_commits([*TAKEN, RESTORED, prod(7, 11, fence=2)], 1) == [
        RESTORED,
        prod(7, 11, fence=2),
    ]


def test_a_takeover_at_or_below_the_fence_is_not_the_restored_one() -> None:
    assert restored_commits(BEFORE, 0) == [prod(2, 4), prod(3, 8)]
    assert restored_commits(BEFORE, 1) is None


def test_a_zombie_commit_after_the_takeover_is_still_the_dead_incarnations() -> None:
    # By seq it comes after the takeover (a store that let it land); by fence it is 1.
    late = prod(6, 30, base=3)
    assert restored_commits([*TAKEN, late], 1) == []


def test_the_records_may_come_in_any_order() -> None:
    shuffled = [RESTORED, T(5, 2), ZOMBIE, *reversed(BEFORE)]
    assert restored_commits(shuffled, 1) == [RESTORED]


# -- pending and the planning view -----------------------------------------------------------


def test_a_relaunch_is_pending_until_a_commit_above_its_fence() -> None:
    entries = {"prod": 3}
    for history in ([*BEFORE, ZOMBIE], TAKEN):
        assert pending_restarts({"prod": 1}, entries, {"prod": history}) == {"prod": (1, 3)}
    assert pending_restarts({"prod": 1}, entries, {"prod": [*TAKEN, RESTORED]}) == {}
    # A worker the plan has no entry for is not carried (it left the operation).
    assert pending_restarts({"gone": 1}, entries, {"prod": TAKEN}) == {}


def test_the_view_hides_a_pending_workers_checkpoints_above_its_entry_only() -> None:
    view = planning_view({"prod": TAKEN, "cons": CONSUMER}, {"prod": (1, 3)})
    assert view["prod"] == [*BEFORE, T(5, 2)]
    assert view["cons"] is CONSUMER


# -- build_plan with the plan in force --------------------------------------------------------


def test_a_zombie_commit_before_the_takeover_is_never_planned_from() -> None:
    first = first_plan()
    consumer = [*CONSUMER, cons(3, 12)]  # it read what the zombie wrote, optimistically
    second = build_plan(OP, {"prod": TAKEN, "cons": consumer}, relaunched=["cons"], previous=first)
    assert second.entries["prod"].seq == 3 and not second.entries["prod"].rollback
    assert second.channels[CH] == ("prod", 8)
    assert second.entries["cons"].seq == 2  # back to what 8 records cover
    assert second.restarts == {"prod": 1, "cons": 1}  # carried; the consumer's is fresh
    # Without the plan in force the zombie's commit is taken as the producer's cut:
    blind = build_plan(OP, {"prod": TAKEN, "cons": consumer}, relaunched=["cons"])
    assert blind.entries["prod"].seq == 4 and blind.channels[CH] == ("prod", 12)


def test_a_zombie_commit_before_the_replacement_started_is_not_planned_from_either() -> None:
    second = build_plan(
        OP,
        {"prod": [*BEFORE, ZOMBIE], "cons": CONSUMER},
        relaunched=["cons"],
        previous=first_plan(),
    )
    assert second.entries["prod"].seq == 3 and second.restarts["prod"] == 1


def test_a_replacement_that_took_over_before_the_histories_were_read_is_counted() -> None:
    # The coordinator read fence 1 when it handled the crash; the replacement's takeover
    # (fence 2) was already in the histories it planned from.
    plan = build_plan(
        OP, {"prod": TAKEN, "cons": CONSUMER}, relaunched=["prod"], replaced={"prod": 1}
    )
    assert plan.restarts == {"prod": 1}
    later = build_plan(
        OP, {"prod": [*TAKEN, RESTORED], "cons": CONSUMER}, relaunched=["cons"], previous=plan
    )
    assert later.entries["prod"].seq == 6 and "prod" not in later.restarts


def test_the_restored_incarnations_commits_count_once_it_commits() -> None:
    done = [*TAKEN, RESTORED]
    second = build_plan(
        OP, {"prod": done, "cons": CONSUMER}, relaunched=["cons"], previous=first_plan()
    )
    assert second.entries["prod"].seq == 6 and second.channels[CH] == ("prod", 10)
    assert second.restarts == {"cons": 1}  # the relaunch is over: not carried


def test_a_relaunch_is_carried_over_several_plans_and_a_new_one_starts_afresh() -> None:
    histories = {"prod": TAKEN, "cons": CONSUMER}
    second = build_plan(OP, histories, relaunched=["cons"], previous=first_plan())
    third = build_plan(OP, histories, relaunched=["cons"], previous=second)
    assert third.restarts["prod"] == 1 and third.entries["prod"].seq == 3
    # The replacement commits once (base 3: it restored 3) and dies; the slot is
    # relaunched again, replacing fence 2.
    again = {"prod": [*TAKEN, RESTORED], "cons": CONSUMER}
    fourth = build_plan(OP, again, relaunched=["prod"], previous=third)
    assert fourth.restarts["prod"] == 2 and fourth.entries["prod"].seq == 6


# -- the recovery barrier ---------------------------------------------------------------------


def test_the_barrier_waits_for_a_producer_whose_relaunch_a_plan_carries() -> None:
    # The consumer crashes before the relaunched producer has restored (or committed):
    # its replacement must not read the channel before the producer cut it back.
    consumer = [*CONSUMER, cons(3, 12)]
    second = build_plan(
        OP, {"prod": TAKEN, "cons": consumer}, relaunched=["cons"], previous=first_plan()
    )
    assert rolled_back(second.to_body()) == {"cons"}  # only it goes back: no re-reads
    assert awaited(second.to_body()) == {"prod"}
    done = build_plan(
        OP, {"prod": [*TAKEN, RESTORED], "cons": consumer}, relaunched=["cons"], previous=second
    )
    assert awaited(done.to_body()) == set()  # it committed: nothing to wait for
