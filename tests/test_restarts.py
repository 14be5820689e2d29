"""Relaunched workers across plans (policy/restarts.py, and ``build_plan(previous=)``):
tables over histories with zombie commits, takeovers and restored commits."""

from __future__ import annotations

from points import P

from bbp_dist_resume.policy.plan import RecoveryPlan, build_plan
from bbp_dist_resume.policy.restarts import pending_restarts, planning_view, restored_commits

OP = "op"
CH = "ch"


def T(seq: int) -> P:
    return P(seq, kind="takeover")


def prod(seq: int, offset: int, base: int | None = None) -> P:
    return P(seq, base=base, produced={CH: offset})


def cons(seq: int, offset: int, base: int | None = None) -> P:
    return P(seq, base=base, consumed={CH: offset})


# prod committed 2 and 3; the plan relaunched it at 3 having seen seq 3.
BEFORE = [T(1), prod(2, 4), prod(3, 8)]
CONSUMER = [T(1), cons(2, 8)]


def first_plan() -> RecoveryPlan:
    plan = build_plan(OP, {"prod": BEFORE, "cons": CONSUMER}, relaunched=["prod"])
    assert plan.restarts == {"prod": 3} and plan.entries["prod"].seq == 3
    return plan


# -- restored_commits ------------------------------------------------------------------------


def test_nothing_restored_before_a_takeover_after_since() -> None:
    zombie = [*BEFORE, prod(4, 12)]
    assert restored_commits(zombie, 3) is None
    assert restored_commits([*zombie, T(5)], 3) == []
    restored = prod(6, 9, base=3)
    assert restored_commits([*zombie, T(5), restored, prod(7, 10)], 3) == [restored, prod(7, 10)]


def test_a_takeover_at_or_below_since_is_not_the_restored_one() -> None:
    assert restored_commits(BEFORE, 0) == [prod(2, 4), prod(3, 8)]
    assert restored_commits(BEFORE, 3) is None


def test_the_records_may_come_in_any_order() -> None:
    shuffled = [prod(6, 9, base=3), T(5), prod(4, 12), *reversed(BEFORE)]
    assert restored_commits(shuffled, 3) == [prod(6, 9, base=3)]


# -- pending and the planning view -----------------------------------------------------------


def test_a_relaunch_is_pending_until_a_commit_after_its_takeover() -> None:
    entries = {"prod": 3}
    zombie = [*BEFORE, prod(4, 12)]
    for history in (zombie, [*zombie, T(5)]):
        assert pending_restarts({"prod": 3}, entries, {"prod": history}) == {"prod": (3, 3)}
    done = [*zombie, T(5), prod(6, 9, base=3)]
    assert pending_restarts({"prod": 3}, entries, {"prod": done}) == {}
    # A worker the plan has no entry for is not carried (it left the operation).
    assert pending_restarts({"gone": 3}, entries, {"prod": zombie}) == {}


def test_the_view_hides_a_pending_workers_checkpoints_above_its_entry_only() -> None:
    history = [*BEFORE, prod(4, 12), T(5)]
    view = planning_view({"prod": history, "cons": CONSUMER}, {"prod": (3, 3)})
    assert view["prod"] == [*BEFORE, T(5)]
    assert view["cons"] is CONSUMER


# -- build_plan with the plan in force --------------------------------------------------------


def test_a_zombie_commit_before_the_takeover_is_never_planned_from() -> None:
    first = first_plan()
    taken = [*BEFORE, prod(4, 12), T(5)]  # the zombie's 4, then the replacement's takeover
    consumer = [*CONSUMER, cons(3, 12)]  # it read what the zombie wrote, optimistically
    second = build_plan(OP, {"prod": taken, "cons": consumer}, relaunched=["cons"], previous=first)
    assert second.entries["prod"].seq == 3 and not second.entries["prod"].rollback
    assert second.channels[CH] == ("prod", 8)
    assert second.entries["cons"].seq == 2  # back to what 8 records cover
    assert second.restarts == {"prod": 3, "cons": 3}  # carried; the consumer's is fresh
    # Without the plan in force the zombie's commit is taken as the producer's cut:
    blind = build_plan(OP, {"prod": taken, "cons": consumer}, relaunched=["cons"])
    assert blind.entries["prod"].seq == 4 and blind.channels[CH] == ("prod", 12)


def test_a_zombie_commit_before_the_replacement_started_is_not_planned_from_either() -> None:
    first = first_plan()
    second = build_plan(
        OP, {"prod": [*BEFORE, prod(4, 12)], "cons": CONSUMER}, relaunched=["cons"], previous=first
    )
    assert second.entries["prod"].seq == 3 and second.restarts["prod"] == 3


def test_the_restored_incarnations_commits_count_once_it_commits() -> None:
    first = first_plan()
    done = [*BEFORE, prod(4, 12), T(5), prod(6, 10, base=3)]
    second = build_plan(OP, {"prod": done, "cons": CONSUMER}, relaunched=["cons"], previous=first)
    assert second.entries["prod"].seq == 6 and second.channels[CH] == ("prod", 10)
    assert second.restarts == {"cons": 2}  # the relaunch is over: not carried


def test_a_relaunch_is_carried_over_several_plans_and_a_new_one_starts_afresh() -> None:
    first = first_plan()
    taken = [*BEFORE, prod(4, 12), T(5)]
    second = build_plan(OP, {"prod": taken, "cons": CONSUMER}, relaunched=["cons"], previous=first)
    third = build_plan(OP, {"prod": taken, "cons": CONSUMER}, relaunched=["cons"], previous=second)
    assert third.restarts["prod"] == 3 and third.entries["prod"].seq == 3
    # The replacement commits once (base 3: it restored 3) and dies; the slot is
    # relaunched again, with a fresh since.
    again = [*taken, prod(6, 13, base=3)]
    fourth = build_plan(OP, {"prod": again, "cons": CONSUMER}, relaunched=["prod"], previous=third)
    assert fourth.restarts["prod"] == 6
    # Seq 6 came after the takeover of the incarnation that restored 3, so it is that
    # incarnation's (the fence protocol refuses an older one's commit after a takeover).
    assert fourth.entries["prod"].seq == 6


def test_a_plan_without_restarts_keeps_the_old_rule() -> None:
    first = first_plan()
    legacy = RecoveryPlan.from_body(
        OP, 1, {k: v for k, v in first.to_body().items() if k != "restarts"}
    )
    taken = [*BEFORE, prod(4, 12), T(5)]
    plan = build_plan(OP, {"prod": taken, "cons": CONSUMER}, relaunched=["cons"], previous=legacy)
    assert plan.entries["prod"].seq == 4
