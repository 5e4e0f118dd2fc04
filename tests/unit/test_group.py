"""Group commit (``batcher._group.GroupRunner``): what many threads queue runs as one batch, each thread
gets its own item's outcome, and a lone item goes at once."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from batcher._group import GROUP_MAX_ITEMS, GroupRunner


def test_a_lone_item_runs_at_once_and_its_result_comes_back() -> None:
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        return [i * 10 for i in items]

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    assert runner.submit(4) == 40  # no timer to wait for: nothing else is queued
    assert batches == [[4]]


def test_items_queued_while_a_batch_runs_go_together_and_each_gets_its_own_outcome() -> None:
    first_running = threading.Event()
    release_first = threading.Event()
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if items == [0]:
            first_running.set()
            release_first.wait(30)
        return [ValueError(f"bad {i}") if i == 3 else i + 100 for i in items]

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    outcomes: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            outcomes[i] = runner.submit(i)
        except ValueError as exc:
            outcomes[i] = str(exc)

    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    assert first_running.wait(30)
    threads += [threading.Thread(target=submit, args=(i,)) for i in range(1, 6)]
    for t in threads[1:]:
        t.start()
    # Every later item is queued (each waits on its own outcome) before the first batch ends.
    while sum(1 for t in threads[1:] if t.is_alive()) < 5 or len(runner._queue) < 5:
        threading.Event().wait(0.001)
    release_first.set()
    for t in threads:
        t.join(30)
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2
    assert outcomes == {0: 100, 1: 101, 2: 102, 3: "bad 3", 4: 104, 5: 105}


def test_a_failing_batch_is_every_items_error_and_the_runner_goes_on() -> None:
    calls = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            raise ConnectionError("database away")
        return list(items)

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    with pytest.raises(ConnectionError):
        runner.submit(1)
    assert runner.submit(2) == 2


def test_a_batch_holds_at_most_the_maximum() -> None:
    gate = threading.Event()
    started = threading.Event()
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        if items == [-1]:
            started.set()
            gate.wait(30)
        return list(items)

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    blocker = threading.Thread(target=runner.submit, args=(-1,))
    blocker.start()
    assert started.wait(30)
    n = GROUP_MAX_ITEMS + 5
    threads = [threading.Thread(target=runner.submit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    while len(runner._queue) < n:
        threading.Event().wait(0.001)
    gate.set()
    for t in [blocker, *threads]:
        t.join(30)
    assert sizes == [1, GROUP_MAX_ITEMS, 5]


def test_a_posted_item_runs_with_the_batch_and_its_outcome_goes_to_its_callback() -> None:
    """``post``: the caller goes on at once; the item runs in the next batch, with the items others wait on,
    and its outcome (result or exception) reaches the callback; a callback that raises harms nobody."""
    gate = threading.Event()
    started = threading.Event()
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if items == [-1]:
            started.set()
            gate.wait(30)
        return [KeyError(i) if i == 2 else i * 2 for i in items]

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    blocker = threading.Thread(target=runner.submit, args=(-1,))
    blocker.start()
    assert started.wait(30)
    seen: list[object] = []
    runner.post(1, seen.append)  # returns while the runner is still busy with the blocker
    runner.post(2, seen.append)

    def raising(_: object) -> None:
        raise RuntimeError("a bug in a callback")

    runner.post(3, raising)
    waiter: list[int] = []
    submitter = threading.Thread(target=lambda: waiter.append(runner.submit(4)))
    submitter.start()
    while len(runner._queue) < 4:
        threading.Event().wait(0.001)
    assert seen == []
    gate.set()
    for t in (blocker, submitter):
        t.join(30)
    assert runner.drain(30)
    assert batches == [[-1], [1, 2, 3, 4]]
    assert seen[0] == 2 and isinstance(seen[1], KeyError) and waiter == [8]


def test_drain_waits_for_the_running_batch_and_gives_up_after_its_timeout() -> None:
    gate = threading.Event()
    started = threading.Event()
    seen: list[object] = []

    def run(items: Sequence[int]) -> list[int | BaseException]:
        started.set()
        gate.wait(30)
        return list(items)

    runner: GroupRunner[int, int] = GroupRunner(run, name="test-group")
    runner.post(7, seen.append)
    assert started.wait(30)
    assert runner.drain(0.05) is False  # the batch is still running
    gate.set()
    assert runner.drain(30) is True and seen == [7]
