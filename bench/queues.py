"""``python -m bench.queues``: issue #15's figures (bounded queues, fairness), measured on real processes.

Each scenario starts its own services, as the fault benchmark does (``bench._faults_procs.cluster``): a
private ``redis-server`` on a free port (so ``INFO memory`` is this scenario's alone), a freshly created and
migrated database, the fake provider in a process of its own answering in ``LATENCY_MS`` (100 ms), and
``WORKERS`` (2) worker processes started as the README starts them, ``batcher worker``, with the same
explicit concurrency as the main benchmark (``--concurrency 100``: ``batcher worker``'s default). Everything
is stopped by its PID and the database dropped at the end of each scenario, whatever happened.

Scenarios (the issue's sizes by default; ``--quick`` runs small ones, a smoke run whose numbers are not the
issue's):

- ``memory``: Redis ``used_memory`` before a job of ``--memory-prompts`` prompts is submitted, right after the
  submission returns, and its peak over the first ``--memory-window-s`` of running; the job is then cancelled.
- ``small-behind-large``: a small job's time alone, then submitted right after a large one: time from its
  submission to its completion (waited for at most ``--small-timeout-s``).
- ``after-cancel``: a large job runs ``--cancel-after-s``, is cancelled, and a small job is submitted at once:
  time to its completion. One fresh cluster per size of ``--cancel-prompts``.
- ``tenants``: two API keys (``batcher keys create``) each submit ``--tenant-prompts`` through ``batcher api``,
  the second ``--tenant-delay-s`` later; each job's completed count is sampled while both run, and their
  throughputs over that overlap (from the second submission to the first job's end) are compared.

The table (scenario, figure, now, goal, met?) is printed at the end; ``--json`` writes every raw number.
``--extra-command ARGS`` also runs ``batcher ARGS`` next to the workers in each scenario, should the deployment
need a process besides ``batcher worker`` (a dispatcher of its own, ``batcher beat``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from batcher import Client, Job, JobState, RequestSpec, WaitTimeoutError
from batcher._config import DEFAULT_WORKER_CONCURRENCY
from batcher._db.postgres import SHARD_SUMS
from batcher.testing.servers import RedisServer, free_port
from bench._faults_procs import API_KEY, READY_TIMEOUT_S, Child, Cluster, cluster, prompts, until

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CLI = "import sys; sys.argv[0] = 'batcher'; from batcher.cli import main; sys.exit(main())"
"""``batcher ...`` run by this interpreter (the checkout under test), as the installed script runs it."""

# --- the setup, as the issue measured it ------------------------------------------------------------

WORKERS = 2
WORKER_CONCURRENCY = DEFAULT_WORKER_CONCURRENCY
"""Threads per worker: ``batcher worker``'s default (100), as the main benchmark's W1 runs them, passed
explicitly so a changed default does not change what is measured."""
LATENCY_MS = 100
MODEL = "queues-100ms"
"""The fake provider's model (``openai/queues-100ms``): every scenario's requests answer in ``LATENCY_MS``."""

# --- the sizes (the issue's) and how long to wait -----------------------------------------------------

DEFAULT_MEMORY_PROMPTS = 1_000_000
DEFAULT_MEMORY_WINDOW_S = 60.0
"""How long the memory job runs (sampled) before it is cancelled."""
DEFAULT_LARGE_PROMPTS = 100_000
DEFAULT_SMALL_PROMPTS = 10
DEFAULT_SMALL_TIMEOUT_S = 300.0
"""How long a small job is waited for; longer is reported as "> 300 s"."""
DEFAULT_CANCEL_PROMPTS = (20_000, 100_000)
DEFAULT_CANCEL_AFTER_S = 5.0
"""How long the job to cancel runs (from its first completion) before ``cancel()``."""
DEFAULT_TENANT_PROMPTS = 50_000
DEFAULT_TENANT_DELAY_S = 60.0
DEFAULT_TENANT_TIMEOUT_S = 1_800.0
"""The longest the two tenants' overlap is sampled (from the second submission), whatever happens."""
SAMPLE_EVERY_S = 0.25
"""Period of the Redis memory and job-progress samples."""
SUBMIT_TIMEOUT_S = 1_800.0
"""The longest a submission over HTTP may take (50,000 prompts take seconds)."""

QUICK: dict[str, Any] = {
    "memory_prompts": 2_000,
    "memory_window_s": 5.0,
    "large_prompts": 3_000,
    "small_prompts": 10,
    "small_timeout_s": 60.0,
    "cancel_prompts": "1000,3000",
    "cancel_after_s": 1.0,
    "tenant_prompts": 1_500,
    "tenant_delay_s": 3.0,
    "tenant_timeout_s": 120.0,
}
"""``--quick``: the sizes of a smoke run of the harness (seconds per scenario, not the issue's numbers)."""

# --- the goals (issue #15, "Done means") ---------------------------------------------------------------

GOAL_MEMORY_MB = 20.0
"""Redis memory growth for a 1,000,000-prompt job (and flat in job size)."""
GOAL_SMALL_S = 3.0
"""A 10-prompt job behind a 100,000-prompt one, or right after cancelling one."""
GOAL_SMALL_TIMES_ALONE = 3.0
"""... and at most this many times its time alone."""
GOAL_TENANT_RATIO = 0.9
"""The slower tenant's throughput over the faster one's while both run ("within 10 %")."""

MB = 1_000_000
X = "\u00d7"  # multiplication sign
"""Megabytes as the issue counts them (10^6 bytes)."""

ISSUE = {
    "memory": "+116 MB for 100,000 prompts (1.2 KB per prompt: 1.2 GB for 1M)",
    "small-behind-large": "not done after 300 s",
    "after-cancel": "37-39 s (20,000 / 100,000)",
    "tenants": "not measured",
}
"""What issue #15 measured before the dispatcher (its table), for the table's "issue" column."""


# --- results ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    figure: str
    now: str
    goal: str
    met: bool | None
    issue: str = ""


@dataclass
class Outcome:
    """One scenario: its rows, notes and every raw number (for ``--json``)."""

    scenario: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def fmt_s(seconds: float | None, timeout_s: float | None = None) -> str:
    """``1.23 s``; ``> 300 s`` for a wait that ran out (``seconds`` None)."""
    if seconds is None:
        return f"> {timeout_s:g} s" if timeout_s is not None else "-"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.1f} MB"


def fmt_bytes(n_bytes: float) -> str:
    return f"{n_bytes / 1000:,.2f} KB" if abs(n_bytes) >= 1000 else f"{n_bytes:,.0f} B"


def throughput(samples: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    """Completions per second between ``start`` and ``end``, from (time, completed) samples taken in order.

    Measured between the first and the last sample inside the interval (a job that did nothing there is 0.0);
    None when fewer than two samples fall inside it."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0)


def ratio(a: float | None, b: float | None) -> float | None:
    """The slower over the faster of two throughputs (1.0: equal); None when neither ran."""
    if a is None or b is None or max(a, b) <= 0:
        return None
    return min(a, b) / max(a, b)


def table(outcomes: Sequence[Outcome]) -> str:
    """The markdown table: scenario, figure, what the issue measured, now, goal, met?"""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    met = {True: "**met**", False: "**not met**", None: "-"}
    lines = ["| scenario | figure | issue (before) | now | goal | met? |", "|---|---|---|---|---|---|"]
    for outcome in outcomes:
        for r in outcome.rows:
            lines.append(
                f"| {r.scenario} | {cell(r.figure)} | {cell(r.issue)} | {cell(r.now)} | {cell(r.goal)} | {met[r.met]} |"
            )
    notes = [note for outcome in outcomes for note in outcome.notes]
    if notes:
        lines += ["", *[f"- {cell(note)}" for note in notes]]
    return "\n".join(lines) + "\n"


def report(outcomes: Sequence[Outcome], *, command: str, started: str, load: tuple[float, float], quick: bool) -> str:
    """The whole printout: what ran where, then the table."""
    head = [
        "## Bounded queues and fairness (issue #15)",
        "",
        f"`{command}` on {started}, commit {git_commit()}; 1-minute load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after ({os.cpu_count()} cores, shared with other test suites).",
        "",
        f"Each scenario: a private `redis-server`, a fresh database, the fake provider at {LATENCY_MS} ms in its "
        f"own process, {WORKERS} workers started with `batcher worker --concurrency {WORKER_CONCURRENCY}`; all "
        "removed afterwards.",
        "",
    ]
    if quick:
        head += ["**Quick run** (small sizes): a smoke test of the harness, not the issue's numbers.", ""]
    return "\n".join([*head, table(outcomes)])


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


# --- the cluster's processes -------------------------------------------------------------------------


def start_workers(c: Cluster, n: int = WORKERS) -> list[Child]:
    """``n`` times ``batcher worker --concurrency 100``, each named; ready when all answer a ping.

    WARNING logs, as the main benchmark's workers: ``batcher worker``'s INFO writes a line per task, CPU the
    2-core machine would take from the work measured."""
    started = []
    for _ in range(n):
        c._started += 1
        name = f"{c.name}-w{c._started}"
        argv = [sys.executable, "-c", CLI, "worker", "--concurrency", str(WORKER_CONCURRENCY)]
        argv += ["--loglevel", "WARNING", "-n", f"{name}@%h"]
        child = Child(name, argv, c.env, c.workdir / f"{name}.log")
        c.workers.append(child.start())
        started.append(child)
    _wait_pinged(c, started)
    return started


def _wait_pinged(c: Cluster, workers: Sequence[Child]) -> None:
    from batcher._celery import make_celery_app

    app = make_celery_app(c.settings)
    wanted = {w.name for w in workers}
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for w in workers:
                if not w.alive():
                    raise RuntimeError(f"{w.name} exited:\n{w.log()[-3000:]}")
            up = {name.split("@")[0] for reply in app.control.ping(timeout=0.5) for name in reply}
            if wanted <= up:
                return
    finally:
        app.close()
    raise RuntimeError(f"workers not ready in {READY_TIMEOUT_S:g} s:\n{workers[0].log()[-3000:]}")


def cli(c: Cluster, *args: str) -> str:
    """``batcher ARGS`` in the cluster's environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", CLI, *args], env=c.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"batcher {shlex.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


@contextmanager
def api_server(c: Cluster) -> Iterator[str]:
    """``batcher api`` on a free port in the cluster's environment; its base URL. Stopped by PID at exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def healthy(_: Child) -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    argv = [sys.executable, "-c", CLI, "api", "--port", str(port), "--log-level", "warning"]
    child = Child(f"{c.name}-api", argv, c.env, c.workdir / "api.log")
    try:
        child.start(healthy)
        yield base
    finally:
        child.stop()


class MemorySampler(threading.Thread):
    """``used_memory`` of the scenario's Redis every ``SAMPLE_EVERY_S``: the peak while it runs, and the trace."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(name="queues-memory", daemon=True)
        self.client = server.client()
        self.peak = 0
        self.trace: list[tuple[float, int]] = []
        self.errors = 0
        self._done = threading.Event()
        self._t0 = time.monotonic()

    def sample(self) -> int:
        used = int(self.client.info("memory")["used_memory"])
        self.peak = max(self.peak, used)
        self.trace.append((round(time.monotonic() - self._t0, 2), used))
        return used

    def run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            try:
                self.sample()
            except redis.RedisError:
                self.errors += 1

    def stop(self) -> None:
        self._done.set()
        self.join(30)
        self.client.close()


def spec_stream(n: int, prefix: str) -> Iterator[RequestSpec]:
    """``n`` one-line prompts, generated as submitted (a million prompts never sit in a list)."""
    model = f"openai/{MODEL}"
    for i in range(n):
        yield RequestSpec(model=model, messages=[{"role": "user", "content": f"{prefix} {i}"}])


def answered(job: Job) -> Callable[[], bool]:
    """Whether ``job`` has an answer yet (a condition for ``until``)."""
    return lambda: job.status().succeeded > 0


def timed_small_job(client: Client, n: int, timeout_s: float, prefix: str) -> tuple[float | None, Job, str]:
    """Submit ``n`` prompts and wait: seconds from the submission to the end (None: not final in time)."""
    started = time.monotonic()
    job = client.submit(model=f"openai/{MODEL}", messages=prompts(n, prefix))
    try:
        status = job.wait(timeout=timeout_s)
    except WaitTimeoutError:
        status = job.status()
        return None, job, f"{status.state.value}, {status.succeeded}/{status.total} done at the timeout"
    return time.monotonic() - started, job, status.state.value


# --- the scenarios ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What every scenario shares: the sizes chosen, where to work, the Postgres to create databases on."""

    args: argparse.Namespace
    workdir: Path
    say: Callable[[str], None]

    @contextmanager
    def cluster(self, name: str) -> Iterator[Cluster]:
        with cluster(
            name,
            self.workdir,
            admin_url=self.args.pg_admin_url,
            models={MODEL: {"latency_ms": LATENCY_MS}},
            say=self.say,
        ) as c:
            yield c

    def start_services(self, c: Cluster) -> None:
        """The workers, then each ``--extra-command`` (``batcher ARGS``), all stopped by PID with the cluster."""
        start_workers(c)
        for i, command in enumerate(self.args.extra_command or []):
            name = f"{c.name}-extra{i + 1}"
            child = Child(name, [sys.executable, "-c", CLI, *shlex.split(command)], c.env, c.workdir / f"{name}.log")
            c.workers.append(child.start())
            self.say(f"{c.name}: started batcher {command} (pid {child.pid})")


def memory(run: Run) -> Outcome:
    """Redis memory for one large job: before, right after submission, peak over its first minute."""
    n, window_s = run.args.memory_prompts, run.args.memory_window_s
    with run.cluster("memory") as c:
        run.start_services(c)
        sampler = MemorySampler(c.redis)
        before = sampler.sample()
        sampler.start()
        try:
            with c.client() as client:
                began = time.monotonic()
                job = client.submit_requests(spec_stream(n, "memory"))
                submit_s = time.monotonic() - began
                after_submit = sampler.sample()
                run.say(f"memory: {n:,} prompts submitted in {submit_s:.1f} s; Redis {fmt_mb(after_submit)}")
                running_from = time.monotonic()
                time.sleep(window_s)  # a duration to sample over, not an event to wait for
                ran_s = time.monotonic() - running_from
                done_at_end = job.status().succeeded
                cancelled = job.cancel()
        finally:
            sampler.stop()
        server_peak = c.redis.memory()["peak"]
    peak = max(sampler.peak, server_peak)
    growth = peak - before
    per_prompt = growth / n
    raw = {
        "prompts": n,
        "submit_s": round(submit_s, 2),
        "submit_prompts_per_s": round(n / submit_s) if submit_s else None,
        "used_memory_before": before,
        "used_memory_after_submit": after_submit,
        "used_memory_peak_sampled": sampler.peak,
        "used_memory_peak_info": server_peak,
        "growth_after_submit_bytes": after_submit - before,
        "growth_peak_bytes": growth,
        "growth_bytes_per_prompt": round(per_prompt, 1),
        "growth_if_linear_for_1m_bytes": round(per_prompt * 1_000_000),
        "window_s": round(ran_s, 1),
        "succeeded_in_window": done_at_end,
        "state_after_cancel": cancelled.state.value,
        "sample_errors": sampler.errors,
        "trace": sampler.trace,
    }
    goal = f"≤ {GOAL_MEMORY_MB:g} MB for 1,000,000 prompts, flat in job size"
    return Outcome(
        "memory",
        rows=[
            Row(
                "memory",
                f"Redis used_memory growth, {n:,}-prompt job (peak over {window_s:g} s of running)",
                f"+{fmt_mb(growth)} ({fmt_bytes(per_prompt)} per prompt); +{fmt_mb(after_submit - before)} right "
                f"after submit",
                goal,
                growth <= GOAL_MEMORY_MB * MB,
                ISSUE["memory"],
            ),
            Row("memory", "submission time", f"{fmt_s(submit_s)} ({n / submit_s:,.0f} prompts/s)", "reported", None),
        ],
        notes=[
            f"memory: used_memory {fmt_mb(before)} before, {fmt_mb(after_submit)} after submit, peak "
            f"{fmt_mb(peak)} (INFO used_memory_peak {fmt_mb(server_peak)}, sampled {fmt_mb(sampler.peak)}); "
            f"{done_at_end:,} answered in {ran_s:.0f} s, then cancelled; if linear in job size, 1,000,000 prompts "
            f"would take +{fmt_mb(per_prompt * 1_000_000)}."
        ],
        raw=raw,
    )


def small_behind_large(run: Run) -> Outcome:
    """A small job alone, then right behind a large one."""
    large, small, timeout_s = run.args.large_prompts, run.args.small_prompts, run.args.small_timeout_s
    with run.cluster("small-behind-large") as c:
        run.start_services(c)
        with c.client() as client:
            timed_small_job(client, small, timeout_s, "warm-up")  # keep-alive connections, pools, imports
            alone_s, _, alone_state = timed_small_job(client, small, timeout_s, "alone")
            began = time.monotonic()
            big = client.submit_requests(spec_stream(large, "large"))
            large_submit_s = time.monotonic() - began
            behind_s, small_job, behind_state = timed_small_job(client, small, timeout_s, "behind")
            big_done = big.status().succeeded
            big.cancel()
        small_row = c.rows("SELECT created_at, started_at, finished_at FROM jobs WHERE id = :id", id=str(small_job.id))[
            0
        ]
    times_alone = behind_s / alone_s if behind_s is not None and alone_s else None
    raw = {
        "large_prompts": large,
        "small_prompts": small,
        "timeout_s": timeout_s,
        "alone_s": None if alone_s is None else round(alone_s, 3),
        "alone_state": alone_state,
        "large_submit_s": round(large_submit_s, 2),
        "behind_s": None if behind_s is None else round(behind_s, 3),
        "behind_state": behind_state,
        "times_alone": None if times_alone is None else round(times_alone, 2),
        "large_succeeded_meanwhile": big_done,
        "small_job_row": {k: None if v is None else v.isoformat() for k, v in small_row.items()},
    }
    return Outcome(
        "small-behind-large",
        rows=[
            Row(
                "small-behind-large",
                f"{small}-prompt job submitted right after a {large:,}-prompt one: submit to completion",
                fmt_s(behind_s, timeout_s) + ("" if behind_s is not None else f" ({behind_state})"),
                f"≤ {GOAL_SMALL_S:g} s",
                behind_s is not None and behind_s <= GOAL_SMALL_S,
                ISSUE["small-behind-large"],
            ),
            Row(
                "small-behind-large",
                "... over its time alone",
                (f"{times_alone:.1f}{X}" if times_alone is not None else f"> {timeout_s / (alone_s or 1):.0f}{X}")
                + f" (alone {fmt_s(alone_s, timeout_s)})",
                f"≤ {GOAL_SMALL_TIMES_ALONE:g}{X}",
                times_alone is not None and times_alone <= GOAL_SMALL_TIMES_ALONE,
            ),
        ],
        notes=[
            f"small-behind-large: the {large:,}-prompt job was submitted in {large_submit_s:.1f} s and had "
            f"{big_done:,} answers when the small job ended (or its wait ran out); it was then cancelled."
        ],
        raw=raw,
    )


def after_cancel(run: Run) -> Outcome:
    """A large job cancelled after a few seconds of running, and a small job submitted at once: one cluster per size."""
    sizes = [int(s) for s in str(run.args.cancel_prompts).split(",") if s.strip()]
    small, timeout_s, after_s = run.args.small_prompts, run.args.small_timeout_s, run.args.cancel_after_s
    outcome = Outcome("after-cancel")
    for n in sizes:
        with run.cluster(f"after-cancel-{n}") as c:
            run.start_services(c)
            with c.client() as client:
                timed_small_job(client, small, timeout_s, "warm-up")
                began = time.monotonic()
                big = client.submit_requests(spec_stream(n, "to-cancel"))
                submit_s = time.monotonic() - began
                until(answered(big), READY_TIMEOUT_S, "the large job's first answer")
                time.sleep(after_s)  # a duration of running, not an event to wait for
                done_at_cancel = big.status().succeeded
                began = time.monotonic()
                cancelled = big.cancel()
                cancel_call_s = time.monotonic() - began
                took, _, state = timed_small_job(client, small, timeout_s, "after-cancel")
                done_after = big.status().succeeded
        raw = {
            "prompts": n,
            "submit_s": round(submit_s, 2),
            "ran_s": after_s,
            "succeeded_at_cancel": done_at_cancel,
            "succeeded_after_small_job": done_after,
            "cancel_call_s": round(cancel_call_s, 3),
            "state_after_cancel": cancelled.state.value,
            "small_s": None if took is None else round(took, 3),
            "small_state": state,
        }
        outcome.raw[str(n)] = raw
        outcome.rows.append(
            Row(
                "after-cancel",
                f"{small}-prompt job right after cancelling a {n:,}-prompt job (run {after_s:g} s)",
                fmt_s(took, timeout_s) + ("" if took is not None else f" ({state})"),
                f"≤ {GOAL_SMALL_S:g} s",
                took is not None and took <= GOAL_SMALL_S,
                ISSUE["after-cancel"],
            )
        )
        outcome.notes.append(
            f"after-cancel {n:,}: {done_at_cancel:,} answered when cancelled ({cancel_call_s:.2f} s to cancel); "
            f"{done_after - done_at_cancel:,} more of its requests were answered after the cancel (in flight then)."
        )
    return outcome


def _progress(c: Cluster, ids: Sequence[str]) -> dict[str, tuple[int, int, bool]]:
    """Each job's (completed, total, final) now, in one statement."""
    rows = c.rows(
        f"SELECT j.id::text AS id, j.succeeded + j.failed + s.succeeded + s.failed AS done, j.total, j.state "
        f"FROM jobs AS j {SHARD_SUMS} WHERE j.id::text = ANY(:ids)",  # the row plus its counter shards
        ids=list(ids),
    )
    return {r["id"]: (int(r["done"]), int(r["total"]), JobState(r["state"]).is_final) for r in rows}


def _ended(progress: tuple[int, int, bool] | None) -> bool:
    return progress is not None and (progress[0] >= progress[1] or progress[2])


def tenants(run: Run) -> Outcome:
    """Two API keys, each one job over HTTP, the second later; their throughputs while both run."""
    n, delay_s, timeout_s = run.args.tenant_prompts, run.args.tenant_delay_s, run.args.tenant_timeout_s
    with run.cluster("tenants") as c, ExitStack() as stack:
        keys = [cli(c, "keys", "create", "--name", f"tenant-{t}").split()[0] for t in "ab"]
        base = stack.enter_context(api_server(c))
        run.start_services(c)
        clients = [stack.enter_context(Client(base_url=base, api_key=key)) for key in keys]
        samples: dict[str, list[tuple[float, int]]] = {}
        t0 = time.monotonic()

        def sample(ids: Sequence[str]) -> dict[str, tuple[int, int, bool]]:
            seen = _progress(c, ids)
            now = time.monotonic() - t0  # after the read: a count is never stamped before it was taken
            for job_id, (done, _, _) in seen.items():
                samples.setdefault(job_id, []).append((now, done))
            return seen

        first = clients[0].submit_requests(spec_stream(n, "tenant-a"))
        ids = [str(first.id)]
        a_submitted = time.monotonic() - t0
        sample(ids)
        run.say(f"tenants: A submitted {n:,} in {a_submitted:.1f} s; B in {delay_s:g} s")
        while time.monotonic() - t0 < a_submitted + delay_s:  # the delay is the scenario's, not an event
            sample(ids)
            time.sleep(SAMPLE_EVERY_S)
        began = time.monotonic() - t0
        second = clients[1].submit_requests(spec_stream(n, "tenant-b"))
        ids.append(str(second.id))
        overlap_start = time.monotonic() - t0
        sample(ids)  # both counts as the overlap starts (the bounds below are sample times)
        run.say(f"tenants: B submitted {n:,} in {overlap_start - began:.1f} s; sampling until one ends")
        ended_by = "timeout"
        while time.monotonic() - t0 < overlap_start + timeout_s:
            seen = sample(ids)
            over = [name for name, job_id in zip("AB", ids, strict=True) if _ended(seen.get(job_id))]
            if over:
                ended_by = over[0]
                break
            time.sleep(SAMPLE_EVERY_S)
        overlap_end = time.monotonic() - t0
        for job in (first, second):
            if not job.status().is_final:
                job.cancel()
    a_rate = throughput(samples.get(ids[0], []), overlap_start, overlap_end)
    b_rate = throughput(samples.get(ids[1], []), overlap_start, overlap_end)
    a_solo = throughput(samples.get(ids[0], []), a_submitted, began)
    r = ratio(a_rate, b_rate)
    raw = {
        "prompts_each": n,
        "delay_s": delay_s,
        "a_submit_s": round(a_submitted, 2),
        "b_submit_s": round(overlap_start - began, 2),
        "overlap_s": round(overlap_end - overlap_start, 1),
        "overlap_ended_by": ended_by,
        "a_alone_per_s": None if a_solo is None else round(a_solo, 1),
        "a_overlap_per_s": None if a_rate is None else round(a_rate, 1),
        "b_overlap_per_s": None if b_rate is None else round(b_rate, 1),
        "ratio": None if r is None else round(r, 3),
        "samples": {name: samples.get(job_id, []) for name, job_id in zip("AB", ids, strict=True)},
    }
    rates = f"A {a_rate or 0:,.0f}/s, B {b_rate or 0:,.0f}/s"
    return Outcome(
        "tenants",
        rows=[
            Row(
                "tenants",
                f"2 API keys, {n:,} prompts each, the second {delay_s:g} s later: throughput while both run, "
                "slower / faster",
                (f"{r:.2f}" if r is not None else "-") + f" ({rates} over {overlap_end - overlap_start:.0f} s)",
                f"≥ {GOAL_TENANT_RATIO:g} (within {100 * (1 - GOAL_TENANT_RATIO):.0f} %)",
                r is not None and r >= GOAL_TENANT_RATIO,
                ISSUE["tenants"],
            )
        ],
        notes=[
            f"tenants: A alone {a_solo or 0:,.0f} completions/s; the overlap ran from B's submission until "
            + ("the sampling timeout" if ended_by == "timeout" else f"{ended_by} finished")
            + "; the unfinished job was then cancelled."
        ],
        raw=raw,
    )


SCENARIOS: dict[str, Callable[[Run], Outcome]] = {
    "memory": memory,
    "small-behind-large": small_behind_large,
    "after-cancel": after_cancel,
    "tenants": tenants,
}


# --- main -------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.queues", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--json", type=Path, help="write every raw number here")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run); explicit sizes still win")
    p.add_argument("--memory-prompts", type=int, help=f"memory: the job's prompts (default {DEFAULT_MEMORY_PROMPTS:,})")
    p.add_argument(
        "--memory-window-s", type=float, help=f"memory: seconds sampled (default {DEFAULT_MEMORY_WINDOW_S:g})"
    )
    p.add_argument("--large-prompts", type=int, help=f"small-behind-large: (default {DEFAULT_LARGE_PROMPTS:,})")
    p.add_argument("--small-prompts", type=int, help=f"the small job's prompts (default {DEFAULT_SMALL_PROMPTS})")
    p.add_argument("--small-timeout-s", type=float, help=f"the small job's wait (default {DEFAULT_SMALL_TIMEOUT_S:g})")
    p.add_argument(
        "--cancel-prompts",
        help=f"after-cancel: comma-separated sizes (default {','.join(str(x) for x in DEFAULT_CANCEL_PROMPTS)})",
    )
    p.add_argument(
        "--cancel-after-s", type=float, help=f"after-cancel: seconds run (default {DEFAULT_CANCEL_AFTER_S:g})"
    )
    p.add_argument("--tenant-prompts", type=int, help=f"tenants: each job (default {DEFAULT_TENANT_PROMPTS:,})")
    p.add_argument(
        "--tenant-delay-s", type=float, help=f"tenants: the second later (default {DEFAULT_TENANT_DELAY_S:g})"
    )
    p.add_argument(
        "--tenant-timeout-s",
        type=float,
        help=f"tenants: longest overlap sampled (default {DEFAULT_TENANT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BATCHER_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL),
        help="the Postgres the scenarios create their databases on",
    )
    p.add_argument(
        "--extra-command",
        action="append",
        metavar="ARGS",
        help="also run `batcher ARGS` next to the workers in every scenario (repeatable), for a process the "
        "deployment needs besides `batcher worker`",
    )
    p.add_argument("--logs", type=Path, help="keep every process's log in this directory (default: removed)")
    return p


DEFAULTS: dict[str, Any] = {
    "memory_prompts": DEFAULT_MEMORY_PROMPTS,
    "memory_window_s": DEFAULT_MEMORY_WINDOW_S,
    "large_prompts": DEFAULT_LARGE_PROMPTS,
    "small_prompts": DEFAULT_SMALL_PROMPTS,
    "small_timeout_s": DEFAULT_SMALL_TIMEOUT_S,
    "cancel_prompts": ",".join(str(x) for x in DEFAULT_CANCEL_PROMPTS),
    "cancel_after_s": DEFAULT_CANCEL_AFTER_S,
    "tenant_prompts": DEFAULT_TENANT_PROMPTS,
    "tenant_delay_s": DEFAULT_TENANT_DELAY_S,
    "tenant_timeout_s": DEFAULT_TENANT_TIMEOUT_S,
}


class UsageError(ValueError):
    """A bad command line: one line naming the option."""


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The options with every size filled in (given, else ``--quick``'s, else the issue's) and the scenarios."""
    args = parser().parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, base.get(name, default))
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise UsageError(
            f"--scenarios: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCENARIOS)}"
        )
    try:
        sizes = [int(s) for s in str(args.cancel_prompts).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--cancel-prompts: comma-separated whole numbers, got {args.cancel_prompts!r}") from None
    for name in ("memory_prompts", "large_prompts", "small_prompts", "tenant_prompts"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: at least 1, got {getattr(args, name)}")
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--cancel-prompts: at least one size, each at least 1, got {args.cancel_prompts!r}")
    for name in ("memory_window_s", "small_timeout_s", "cancel_after_s", "tenant_delay_s", "tenant_timeout_s"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')}: not negative, got {getattr(args, name)}")
    return args, chosen


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        args, chosen = parse(argv)
    except UsageError as exc:
        print(f"python -m bench.queues: {exc}", file=sys.stderr)
        return 2
    # Stopped with Ctrl-C or SIGTERM: unwind, so every process, server and database is removed.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # The benchmark's own environment: its submitter validates against the key the workers use, and no
    # BATCHER_* of the caller's shell changes what it measures.
    for key in [k for k in os.environ if k.startswith("BATCHER_") and not k.startswith("BATCHER_BENCH")]:
        del os.environ[key]
    os.environ["OPENAI_API_KEY"] = API_KEY
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m bench.queues" + (" " + shlex.join(given) if given else "")

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    say(f"load average {load_before:.2f}; scenarios {', '.join(chosen)}")
    outcomes: list[Outcome] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="batcher-queues-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = Run(args, workdir, say)
        for name in chosen:
            say(f"{name}: starting")
            began = time.monotonic()
            try:
                outcome = SCENARIOS[name](run)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # an infrastructure fault: keep what the other scenarios measured
                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
                outcome = Outcome(name, rows=[Row(name, "the harness failed", f"{type(exc).__name__}", "", False)])
            outcomes.append(outcome)
            for row in outcome.rows:
                say(f"{name}: {row.figure}: {row.now} [{ {True: 'met', False: 'not met', None: '-'}[row.met] }]")
            say(f"{name}: done in {time.monotonic() - began:.0f} s")
    load_after = os.getloadavg()[0]
    print()
    print(report(outcomes, command=command, started=started, load=(load_before, load_after), quick=args.quick))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "started": started,
                    "commit": git_commit(),
                    "load_before": load_before,
                    "load_after": load_after,
                    "cores": os.cpu_count(),
                    "setup": {"workers": WORKERS, "concurrency": WORKER_CONCURRENCY, "latency_ms": LATENCY_MS},
                    "sizes": {name: getattr(args, name) for name in DEFAULTS},
                    "failures": failures,
                    "scenarios": {o.scenario: {"rows": [vars(r) for r in o.rows], **o.raw} for o in outcomes},
                },
                indent=1,
                default=str,
            )
        )
        say(f"wrote {args.json}")
    if failures:
        print("QUEUES BENCHMARK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
