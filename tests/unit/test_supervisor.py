"""The supervisor of ``batcher worker`` with stand-in children (tiny Python processes): how many it starts,
restarts, gives up on, and how it stops them. tests/integration/test_supervisor.py runs it with Celery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batcher._supervisor import (
    EXIT_GAVE_UP,
    EXIT_OK,
    ClaimedName,
    NameTakenError,
    claim_name,
    processes_for,
    worker_specs,
)


def test_zero_means_one_process_per_usable_core() -> None:
    assert processes_for(0) == len(os.sched_getaffinity(0))
    assert processes_for(3) == 3


def test_specs_are_the_batch_workers_on_both_queues_and_one_race_only_worker() -> None:
    specs = worker_specs(
        processes=2, concurrency=7, race_concurrency=3, queue="q", race_queue="q.race", loglevel="INFO", extra=["-O"]
    )
    assert [s.name for s in specs] == ["batcher-1", "batcher-2", "batcher-race"]
    assert "--queues=q,q.race" in specs[0].argv and "--concurrency=7" in specs[0].argv
    assert "--hostname=batcher-2@%h" in specs[1].argv
    assert "--queues=q.race" in specs[2].argv and "--concurrency=3" in specs[2].argv
    assert all(s.argv[-1] == "-O" for s in specs)
    no_race = worker_specs(
        processes=2, concurrency=7, race_concurrency=0, queue="q", race_queue="q.race", loglevel="INFO"
    )
    assert [s.name for s in no_race] == ["batcher-1", "batcher-2"]


def _run_apart(code: str) -> dict[str, object]:
    """Run a supervisor in a process of its own, as ``batcher worker`` does: the test process's threads and
    signal handlers (left by other tests) must not take its children's SIGCHLDs or reap them."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_child_that_keeps_crashing_at_start_makes_it_give_up_and_stop_the_others(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    out = _run_apart(
        f"""
        import json, sys
        from batcher._supervisor import ChildSpec, Supervisor
        crash = "open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"
        healthy = "import time; time.sleep(600)"
        supervisor = Supervisor(
            [ChildSpec("bad", [sys.executable, "-c", crash]), ChildSpec("good", [sys.executable, "-c", healthy])],
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            max_fast_crashes=4,
        )
        code = supervisor.run()
        print(json.dumps({{"code": code, "good": supervisor.children[1].exit_codes}}))
        """
    )
    assert out["code"] == EXIT_GAVE_UP
    assert starts.read_text() == "xxxx"  # started, then restarted three times
    assert out["good"] == [-signal.SIGTERM]  # stopped by the supervisor, not left running


def test_a_child_exiting_0_on_its_own_is_not_restarted() -> None:
    out = _run_apart(
        """
        import json, sys
        from batcher._supervisor import ChildSpec, Supervisor
        supervisor = Supervisor([ChildSpec("done", [sys.executable, "-c", "pass"])], backoff_initial_s=0.01)
        code = supervisor.run()
        print(json.dumps({"code": code, "codes": supervisor.children[0].exit_codes}))
        """
    )
    assert out == {"code": EXIT_OK, "codes": [0]}


SUPERVISE = textwrap.dedent(
    """
    import sys
    from batcher._supervisor import ChildSpec, Supervisor

    child = '''
    import signal, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def stop(signum, frame):
        out.write_text(out.read_text() + f"{signum} ")
        if signum == signal.SIGQUIT:
            raise SystemExit(9)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGQUIT, stop)
    out.write_text("ready ")
    while True:
        time.sleep(1)
    '''
    specs = [ChildSpec(f"c{i}", [sys.executable, "-c", child, f"{sys.argv[1]}/c{i}"]) for i in range(2)]
    sys.exit(Supervisor(specs).run())
    """
)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_first_stop_signal_is_forwarded_warm_the_second_cold(tmp_path: Path, first: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(tmp_path)])
    try:
        outs = [tmp_path / "c0", tmp_path / "c1"]
        _until(lambda: all(o.exists() and o.read_text().startswith("ready") for o in outs), proc)
        proc.send_signal(first)
        _until(lambda: all(f"{int(signal.SIGTERM)} " in o.read_text() for o in outs), proc)
        assert proc.poll() is None  # the children handled SIGTERM without exiting: it waits for them
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == EXIT_OK
        assert [o.read_text() for o in outs] == [f"ready {int(signal.SIGTERM)} {int(signal.SIGQUIT)} "] * 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _until(condition: object, proc: subprocess.Popen[bytes]) -> None:
    import time

    assert callable(condition)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, "the supervisor exited"
        time.sleep(0.02)
    raise AssertionError("not within 30 s")


def test_a_hosts_worker_commands_get_names_of_their_own(tmp_path: Path) -> None:
    """The default name moves on when another `batcher worker` holds it; a name asked for is refused in one
    line naming the holder; a name is free again once its holder ended."""
    first = claim_name(None, lock_dir=tmp_path)
    second = claim_name(None, lock_dir=tmp_path)
    assert (first.name, first.moved_from) == ("batcher", None)
    assert (second.name, second.moved_from) == ("batcher2", "batcher")
    with pytest.raises(NameTakenError, match=rf"pid {os.getpid()}\) runs as batcher: give this one another --name"):
        claim_name("batcher", lock_dir=tmp_path)
    odd = claim_name("team/a b", lock_dir=tmp_path)  # any Celery node name, whatever a file name allows
    assert odd.name == "team/a b"
    with pytest.raises(NameTakenError):
        claim_name("team/a b", lock_dir=tmp_path)
    os.close(first.fd)
    again = claim_name(None, lock_dir=tmp_path)
    assert again.name == "batcher"
    for claimed in (second, odd, again):
        os.close(claimed.fd)


def test_a_lock_directory_that_cannot_be_written_leaves_the_name_unchecked(tmp_path: Path) -> None:
    """A read-only file system (a container's) must not stop a worker from starting: its name is used as before."""
    missing = tmp_path / "not-there"
    assert claim_name(None, lock_dir=missing) == ClaimedName("batcher", -1)
    assert claim_name("team-a", lock_dir=missing) == ClaimedName("team-a", -1)
