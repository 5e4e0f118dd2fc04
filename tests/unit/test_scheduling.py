"""The dispatcher's policy (``batcher._scheduling``): who gets the free slots, tick after tick."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from batcher._scheduling import DEFAULT_PRIORITY, FairScheduler, JobView

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ALICE = uuid.uuid4()
BOB = uuid.uuid4()


def job(owner: uuid.UUID | None = ALICE, backlog: int = 1_000_000, **kw: object) -> JobView:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "owner": owner,
        "priority": DEFAULT_PRIORITY,
        "deadline_at": None,
        "created_at": NOW,
        "backlog": backlog,
        "in_flight": 0,
    }
    fields.update(kw)
    return JobView(**fields)  # type: ignore[arg-type]


def run(scheduler: FairScheduler, jobs: list[JobView], ticks: int, free: int = 100) -> Counter[uuid.UUID]:
    """Ticks of a dispatcher whose window drains completely between ticks; returns what each job got."""
    got: Counter[uuid.UUID] = Counter()
    for _ in range(ticks):
        views = [replace(j, backlog=j.backlog - got[j.id]) for j in jobs]
        for grant in scheduler.plan(views, free, NOW):
            view = next(v for v in views if v.id == grant.job_id)
            scheduler.charge(view, grant.count, round(grant.count * view.tokens_per_request))
            got[grant.job_id] += grant.count
    return got


def test_two_tenants_share_equally() -> None:
    a, b = job(ALICE), job(BOB)
    got = run(FairScheduler(), [a, b], ticks=50)
    assert sum(got.values()) == 5_000
    assert abs(got[a.id] - got[b.id]) <= 16


def test_weights_divide_the_cluster() -> None:
    a, b = job(ALICE, weight=2.0), job(BOB, weight=1.0)
    got = run(FairScheduler(), [a, b], ticks=60)
    assert 1.9 < got[a.id] / got[b.id] < 2.1


def test_fairness_is_charged_in_tokens_not_requests() -> None:
    long, short = job(ALICE, tokens_per_request=1_000), job(BOB, tokens_per_request=100)
    got = run(FairScheduler(), [long, short], ticks=100)
    assert 9 < got[short.id] / got[long.id] < 11


def test_a_tenants_jobs_share_its_part_equally() -> None:
    a1, a2, b = job(ALICE), job(ALICE), job(BOB)
    got = run(FairScheduler(), [a1, a2, b], ticks=80)
    assert abs(got[a1.id] - got[a2.id]) <= 16
    assert abs((got[a1.id] + got[a2.id]) - got[b.id]) <= 32


def test_a_small_job_behind_a_giant_one_is_released_at_the_next_tick() -> None:
    scheduler = FairScheduler()
    giant = job(ALICE)
    run(scheduler, [giant], ticks=500)  # the giant had the cluster to itself for a while
    small = job(BOB, backlog=10)
    grants = {g.job_id: g.count for g in scheduler.plan([giant, small], 100, NOW)}
    assert grants[small.id] == 10
    assert grants[giant.id] == 90  # work-conserving: what the small job cannot use goes to the giant


def test_a_tenant_arriving_late_shares_from_then_on_without_starving_the_first() -> None:
    scheduler = FairScheduler()
    first, second = job(ALICE), job(BOB)
    run(scheduler, [first], ticks=300)
    got = run(scheduler, [first, second], ticks=50)
    assert abs(got[first.id] - got[second.id]) <= 16


def test_a_tenant_that_was_idle_gets_no_credit_for_it() -> None:
    scheduler = FairScheduler()
    a, b = job(ALICE), job(BOB)
    run(scheduler, [a, b], ticks=10)
    run(scheduler, [a], ticks=200)  # Bob went idle; Alice used the whole cluster
    got = run(scheduler, [a, b], ticks=20)
    assert abs(got[a.id] - got[b.id]) <= 16


def test_higher_priority_takes_every_slot_until_its_backlog_is_empty() -> None:
    scheduler = FairScheduler()
    low, high = job(ALICE, priority=2), job(BOB, priority=8, backlog=250)
    got = run(scheduler, [low, high], ticks=2)
    assert got[high.id] == 200 and got[low.id] == 0
    got = run(scheduler, [low, replace(high, backlog=50)], ticks=1)
    assert got[high.id] == 50 and got[low.id] == 50


def test_a_deadline_at_risk_goes_first_within_its_priority_only() -> None:
    scheduler = FairScheduler(urgency_s=600)
    relaxed = job(ALICE, deadline_at=NOW + timedelta(hours=20))
    late = job(BOB, backlog=150, deadline_at=NOW + timedelta(minutes=5))
    later = job(BOB, backlog=30, deadline_at=NOW + timedelta(minutes=8))
    grants = {g.job_id: g.count for g in scheduler.plan([relaxed, later, late], 100, NOW)}
    assert grants == {late.id: 100}
    grants = {g.job_id: g.count for g in scheduler.plan([relaxed, later, replace(late, backlog=50)], 100, NOW)}
    assert grants == {late.id: 50, later.id: 30, relaxed.id: 20}
    urgent_low = replace(late, priority=1)
    important = job(ALICE, priority=9)
    grants = {g.job_id: g.count for g in scheduler.plan([urgent_low, important], 100, NOW)}
    assert grants == {important.id: 100}


def test_a_deadline_counts_as_at_risk_when_the_work_left_needs_longer_than_the_time_left() -> None:
    scheduler = FairScheduler(urgency_s=60)
    far = job(ALICE, backlog=100_000, deadline_at=NOW + timedelta(hours=1))
    other = job(BOB)
    assert {g.job_id for g in scheduler.plan([far, other], 100, NOW, rate=1_000.0)} == {far.id, other.id}
    # at 10 completions/s its 100,000 requests need ~3 h: it goes first
    assert {g.job_id for g in scheduler.plan([far, other], 100, NOW, rate=10.0)} == {far.id}


def test_max_concurrent_requests_caps_a_tenant_and_the_rest_goes_to_others() -> None:
    scheduler = FairScheduler()
    capped = job(ALICE, in_flight=3, owner_max_concurrent=5)
    other = job(BOB)
    grants = {g.job_id: g.count for g in scheduler.plan([capped, other], 100, NOW)}
    assert grants == {capped.id: 2, other.id: 98}
    full = replace(capped, in_flight=5)
    assert {g.job_id: g.count for g in scheduler.plan([full], 100, NOW)} == {}


def test_no_free_slots_no_grants() -> None:
    assert FairScheduler().plan([job()], 0, NOW) == []


def test_standing_says_who_is_served_and_what_waits_ahead() -> None:
    scheduler = FairScheduler()
    high = job(ALICE, priority=7, backlog=500)
    a = job(ALICE, backlog=40)
    b1, b2 = job(BOB, backlog=60), job(BOB, backlog=10)
    done = job(BOB, backlog=0, in_flight=25)
    standing = scheduler.standing([a, b1, b2, high, done], 100, NOW)
    assert standing[high.id].position == 1 and standing[high.id].ahead == 0 and standing[high.id].share == 1.0
    for waiting in (a, b1, b2):
        assert standing[waiting.id].position == 2
        assert standing[waiting.id].ahead == 500
        assert standing[waiting.id].share == 0.0
    without_high = scheduler.standing([a, b1, b2], 100, NOW)
    assert without_high[a.id].share == 0.5
    assert without_high[b1.id].share == without_high[b2.id].share == 0.25
    assert standing[done.id].position == 0 and standing[done.id].share == 0.25


def test_a_tick_with_few_free_slots_is_shared_too() -> None:
    scheduler = FairScheduler()
    old, new = job(ALICE), job(BOB, backlog=3)
    run(scheduler, [old], ticks=5)
    grants = {g.job_id: g.count for g in scheduler.plan([old, new], 6, NOW)}
    assert grants == {old.id: 3, new.id: 3}
