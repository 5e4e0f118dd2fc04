"""``docs/benchmarks.md``: medians with their spread (min-max over the repetitions), as ratios to LiteLLM."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _config as cfg
from bench._profile import Profile
from bench._workloads import Bench, Run

NOTES_MARKER = "<!-- notes: everything below this line is written by hand and kept by `python -m bench` -->"
MB = 2**20
X = "\u00d7"  # multiplication sign
DASH = "\u2013"  # en dash


@dataclass
class Stat:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        if not self.values:
            return "-"
        med = format(self.median, spec) + unit
        if len(self.values) == 1:
            return f"{med} (1 run)"
        return (
            f"{med} ({format(min(self.values), spec)}{DASH}{format(max(self.values), spec)}, {len(self.values)} runs)"
        )


BUSY_LOAD_BEFORE = 1.0
"""1-minute load average before a run above which its numbers are marked preliminary (2 cores)."""


def stat(runs: Iterable[Run], fn: Callable[[Run], float]) -> Stat:
    return Stat([fn(r) for r in runs])


def _runs(bench: Bench, workload: str, system: str) -> list[Run]:
    return [r for r in bench.runs if r.workload == workload and r.system == system]


def _ratio(a: Stat, b: Stat, spec: str = ".2f") -> str:
    if not a.values or not b.values or not b.median:
        return "-"
    return f"{format(a.median / b.median, spec)}{X}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def machine(bench: Bench) -> list[str]:
    import psutil

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = bench.db.scalar("SELECT version()") or ""
    redis_version = bench.redis.client.info("server").get("redis_version", "?")
    try:
        from importlib.metadata import version

        litellm_version = version("litellm")
    except Exception:
        litellm_version = "not installed"
    return [
        f"- CPU: {cpu}, {psutil.cpu_count()} cores; RAM {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {pg.split(' on ')[0]}; Redis {redis_version}; "
        f"LiteLLM {litellm_version}",
        f"- Worker setup: {bench.sizes.workers} Celery worker processes (threads pool, started with the flags of "
        f"`batcher worker` and its defaults: {bench.sizes.w1_slots_per_worker} threads each, task events off, "
        f"prefetch 1; W2: {bench.sizes.w2_slots // bench.sizes.workers} threads each), everything on this machine; "
        "fake provider on loopback in its own process; LiteLLM's `batch_completion` with its 100 threads",
    ]


def write(
    path: Path,
    bench: Bench,
    *,
    sessions: list[dict[str, Any]],
    profile: Profile | None,
    profile_completions: int,
    failures: list[str],
    limiter_wired: bool,
) -> None:
    s = bench.sizes
    out: list[str] = ["# Benchmarks", ""]
    for session in sessions:
        lb, la = session["load_before"], session["load_after"]
        out.append(
            f"- `{session['command']}` on {session['started']} ({', '.join(session['workloads'])}); "
            f"1-minute load average {lb[0]:.2f} before, {la[0]:.2f} after"
        )
    # The load after a run is the run's own; only the load before it says whether others were busy.
    if any(x["load_before"][0] > BUSY_LOAD_BEFORE for x in sessions):
        out += [
            "",
            f"**Preliminary:** the machine was busy ({os.cpu_count()} cores shared with other test suites "
            "and benchmarks): absolute numbers are low and noisy, and CPU time per completion is inflated by "
            "contention. Ratios measured side by side in the same session are the fairer reading.",
        ]
    out += ["", "## Machine", "", *machine(bench)]
    out.append(
        "- Every session's load average (1, 5, 15 min): "
        + "; ".join(
            f"{x['started']}: {', '.join(f'{v:.2f}' for v in x['load_before'])} before, "
            f"{', '.join(f'{v:.2f}' for v in x['load_after'])} after"
            for x in sessions
        )
    )
    if failures:
        out += ["", "## Failures", "", *[f"- {f}" for f in failures]]

    out += _summary(bench, limiter_wired)
    out += _cpu_table(bench)
    out += _w4(bench)
    out += _w5(bench)
    out += _timelines(bench)
    out += _scale(bench)
    out += _rate_limit(bench, limiter_wired)
    out += _experiments(bench)
    if profile is not None and profile.samples:
        out += _profile(profile, profile_completions, s)
    out.append("")

    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(out) + "\n" + NOTES_MARKER + (notes or "\n"))


def _summary(bench: Bench, limiter_wired: bool) -> list[str]:
    s = bench.sizes
    rows = [
        "",
        "## Results against the targets",
        "",
        f"Medians over the repetitions, with min{DASH}max. Ratios are batcher ÷ LiteLLM from the same run.",
        "",
        "| workload | metric | batcher | LiteLLM | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    b, lt = _runs(bench, "W1", "batcher"), _runs(bench, "W1", "litellm")
    if b:
        br, lr = stat(b, lambda r: r.rate), stat(lt, lambda r: r.rate)
        ok = br.median >= 2 * lr.median if lt else None
        rows.append(
            f"| W1: {s.w1_prompts:,} prompts, 1 model, {cfg.W1_LATENCY_MS} ms | completions/s | {br.fmt()} | "
            f"{lr.fmt()} | {_ratio(br, lr)} | ≥ 2{X} LiteLLM | {_met(ok)} |"
        )
        bc = stat(b, lambda r: _total_cpu(r))
        lc = stat(lt, lambda r: _total_cpu(r))
        rows.append(
            f"| | CPU ms per completion, all processes but the fake provider | {bc.fmt('.2f')} | {lc.fmt('.2f')} | "
            f"{_ratio(bc, lc)} | reported | |"
        )
    b, lt = _runs(bench, "W2", "batcher"), _runs(bench, "W2", "litellm")
    if b:
        ideal = s.w2_prompts * cfg.W2_LATENCY_MS / 1000 / s.w2_slots
        bw, lw = stat(b, lambda r: r.wall_s), stat(lt, lambda r: r.wall_s)
        peak = max([r.extra.get("in_flight", 0) for r in lt] or [0])
        rows.append(
            f"| W2: {s.w2_prompts:,} prompts, {cfg.W2_LATENCY_MS / 1000:g} s latency, {s.w2_slots} slots | "
            f"wall s (ideal {ideal:.1f} s) | {bw.fmt('.1f')} = {bw.median / ideal:.2f}{X} ideal | {lw.fmt('.1f')} "
            f"({s.litellm_w2_workers} threads; ≤ {peak} in flight) | {_ratio(bw, lw)} | ≤ 1.1{X} ideal | "
            f"{_met(bw.median <= 1.1 * ideal)} |"
        )
        c = _runs(bench, "W2", "ceiling")
        if c:
            cw = stat(c, lambda r: r.wall_s)
            rows.append(
                f"| | bare-Celery ceiling, same processes and threads (its task sleeps {cfg.W2_LATENCY_MS / 1000:g} s, "
                f"then bumps the counter) | {cw.fmt('.1f')} = {cw.median / ideal:.2f}{X} ideal | | "
                f"batcher {_ratio(bw, cw)} | reported | |"
            )
    b, lt = _runs(bench, "W3", "batcher"), _runs(bench, "W3", "litellm")
    if b:
        bm, lm = stat(b, lambda r: r.extra["median_ms"]), stat(lt, lambda r: r.extra["median_ms"])
        rows.append(
            f"| W3: fastest of 3 models ({'/'.join(str(x) for x in cfg.RACE_LATENCIES_MS)} ms), {s.w3_calls} calls | "
            f"median ms to return | {bm.fmt()} | {lm.fmt()} | {_ratio(bm, lm)} | ≤ 65 ms | {_met(bm.median <= 65)} |"
        )
    b = _runs(bench, "W4", "batcher")
    if b:
        br = stat(b, lambda r: r.rate)
        rss = stat(b, lambda r: r.result["peak_rss"] / MB)
        mem = stat(b, lambda r: r.extra["queue_bytes"] / MB)
        rows.append(
            f"| W4: submit {s.w4_prompts:,} prompts | prompts/s accepted (stored + enqueued) | {br.fmt()} | | | "
            f"≥ 10,000/s | {_met(br.median >= 10_000)} |"
        )
        rows.append(f"| | submitter peak RSS MB | {rss.fmt()} | | | ≤ 200 MB | {_met(rss.median <= 200)} |")
        rows.append(f"| | Redis memory of the queued messages, MB | {mem.fmt('.1f')} | | | reported | |")
    b = _runs(bench, "W5", "batcher")
    if b:
        br = stat(b, lambda r: r.rate)
        rss = stat(b, lambda r: r.result["peak_rss"] / MB)
        rows.append(
            f"| W5: read back {s.w5_rows:,} results as JSONL | rows/s | {br.fmt()} | | | ≥ 20,000/s | "
            f"{_met(br.median >= 20_000)} |"
        )
        rows.append(f"| | reader peak RSS MB | {rss.fmt()} | | | ≤ 200 MB | {_met(rss.median <= 200)} |")
    b, lt = _runs(bench, "RL", "batcher"), _runs(bench, "RL", "litellm")
    if b:
        ideal = bench.rl_ideal_s(s.rl_prompts)
        bw, lw = stat(b, lambda r: r.wall_s), stat(lt, lambda r: r.wall_s)
        b429, l429 = stat(b, lambda r: r.extra["429s"]), stat(lt, lambda r: r.extra["429s"])
        ok = bw.median <= 1.1 * ideal and max(b429.values) == 0
        rows.append(
            f"| RL: {s.rl_prompts:,} prompts, provider limit {cfg.RL_LIMIT} per {cfg.RL_WINDOW_S:g} s | wall s "
            f"(ideal {ideal:.1f} s) | {bw.fmt('.1f')} | {lw.fmt('.1f')} | {_ratio(bw, lw)} | ≤ 1.1{X} ideal | "
            f"{_met(ok)} |"
        )
        rows.append(
            f"| | 429s received | {b429.fmt()} | {l429.fmt()} | | 0 | {_met(max(b429.values) == 0)}"
            f"{'' if limiter_wired else ' (limiter not wired into the workers yet)'} |"
        )
    return rows


_ROLES = ("client", "workers", "redis", "postgres", "postgres_shared")


def _total_cpu(run: Run) -> float:
    cpu = run.cpu_ms()
    return sum(cpu.get(role, 0.0) for role in _ROLES)


def _cpu_table(bench: Bench) -> list[str]:
    rows = [
        "",
        "## CPU per completion by process (W1)",
        "",
        "CPU time (user + system) of each process over the measured interval, read with psutil, ÷ completions. "
        "Postgres = the backends of the benchmark database; Postgres shared = postmaster, WAL writer, "
        "checkpointer (shared with anything else running). Redis is this machine's shared redis-server.",
        "",
        "| system | client | workers | Redis | Postgres | Postgres shared | **total** | fake provider |",
        "|---|---|---|---|---|---|---|---|",
    ]
    any_rows = False
    for system in ("batcher", "litellm"):
        runs = _runs(bench, "W1", system)
        if not runs:
            continue
        any_rows = True
        cells = [stat(runs, lambda r, role=role: r.cpu_ms().get(role, 0.0)).fmt(".2f") for role in _ROLES]
        total = stat(runs, _total_cpu).fmt(".2f")
        fake = stat(runs, lambda r: r.cpu_ms().get("fake", 0.0)).fmt(".2f")
        rows.append(f"| {system} | {' | '.join(cells)} | **{total}** | {fake} |")
    return rows if any_rows else []


def _timelines(bench: Bench) -> list[str]:
    rows = [
        "",
        "## Where a batch's wall time goes (W1, W2)",
        "",
        "From the timestamps batcher keeps (seconds from the job's creation): when requests were first claimed "
        "by a worker, when the last one was, when the last answer was stored and the job finished; per request, "
        "the provider's latency as the worker measured it and the worker's own time around it (claim, store).",
        "",
        "| workload | first start s | median start s | last start s | last finish s | job finished s "
        "| provider ms per request | worker ms per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ("first_start_s", "median_start_s", "last_start_s", "last_finish_s", "job_finished_s")
    any_rows = False
    for workload in ("W1", "W2"):
        runs = [r for r in _runs(bench, workload, "batcher") if r.result.get("timeline")]
        if not runs:
            continue
        any_rows = True
        cells = [stat(runs, lambda r, k=k: r.result["timeline"][k]).fmt(".2f") for k in keys]
        cells += [
            stat(runs, lambda r, k=k: r.result["timeline"][k]).fmt(".1f")
            for k in ("provider_latency_ms", "worker_overhead_ms")
        ]
        rows.append(f"| {workload} | {' | '.join(cells)} |")
    return rows if any_rows else []


def _w4(bench: Bench) -> list[str]:
    runs = _runs(bench, "W4", "batcher")
    if not runs:
        return []
    n = bench.sizes.w4_prompts
    copy = stat(runs, lambda r: r.result.get("copy_s", 0.0))
    pub = stat(runs, lambda r: r.result.get("publish_s", 0.0))
    validate = stat(runs, lambda r: r.result.get("validate_s", 0.0))
    other = stat(runs, lambda r: r.wall_s - r.result.get("copy_s", 0.0) - r.result.get("publish_s", 0.0))
    per_msg = stat(runs, lambda r: r.extra["queue_bytes"] / n)
    delta = stat(runs, lambda r: r.extra["redis_delta"] / MB)
    cpu = {role: stat(runs, lambda r, role=role: r.cpu_ms().get(role, 0.0) * 1000) for role in _ROLES}
    return [
        "",
        f"## W4: where submission time goes ({n:,} prompts from a JSONL file, `batcher submit`)",
        "",
        "| phase | seconds | prompts/s of the phase |",
        "|---|---|---|",
        f"| read JSONL + validate + COPY into Postgres (one transaction) | {copy.fmt('.2f')} | "
        f"{n / copy.median:,.0f} |",
        f"| ... of which validation (`_Validator.check`) | {validate.fmt('.2f')} | |",
        f"| mark enqueued, wake the dispatcher (`batcher._submit.enqueue`; nothing is published at submission) "
        f"| {pub.fmt('.2f')} | |",
        f"| everything else (job row, commit, client) | {other.fmt('.2f')} | |",
        "",
        f"Redis: {per_msg.fmt(',.0f')} bytes per prompt queued at submission (the backlog stays in Postgres); "
        f"`used_memory` grew by {delta.fmt('.1f')} MB. CPU µs per prompt: "
        + ", ".join(f"{role} {cpu[role].fmt(',.0f')}" for role in ("client", "redis", "postgres")),
    ]


def _w5(bench: Bench) -> list[str]:
    if not _runs(bench, "W5", "batcher"):
        return []
    rows = [
        "",
        f"## W5: reading back {bench.sizes.w5_rows:,} results as JSONL",
        "",
        "Responses seeded with SQL. `batcher results JOB -o out.jsonl` as it is, and as a reference the "
        "lower bound of Postgres writing each line itself (`COPY (SELECT json_build_object(...) ...) TO STDOUT`, "
        "`read_results_copy` in `bench/_batcher_child.py`), both checked the same way (every index, in order, "
        "with its response).",
        "",
        "| reader | rows/s | RSS at start MB | peak RSS MB | output MB | client CPU µs/row | Postgres CPU µs/row |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, label in (
        ("W5", "`batcher results` (as it is)"),
        ("W5:copy", "reference: a bare COPY of JSON lines"),
    ):
        rs = _runs(bench, workload, "batcher")
        if not rs:
            continue
        rows.append(
            f"| {label} | {stat(rs, lambda r: r.rate).fmt()} | "
            f"{stat(rs, lambda r: r.result['rss_before'] / MB).fmt()} | "
            f"{stat(rs, lambda r: r.result['peak_rss'] / MB).fmt()} | "
            f"{stat(rs, lambda r: r.extra['bytes'] / MB).fmt('.1f')} | "
            f"{stat(rs, lambda r: r.cpu_ms().get('client', 0.0) * 1000).fmt(',.0f')} | "
            f"{stat(rs, lambda r: r.cpu_ms().get('postgres', 0.0) * 1000).fmt(',.0f')} |"
        )
    return rows


def _scale(bench: Bench) -> list[str]:
    runs = _runs(bench, "scale", "batcher")
    if not runs:
        return []
    rows = [
        "",
        f"## Scale: W1 at {' / '.join(f'{n:,}' for n in bench.sizes.scale_prompts)} prompts",
        "",
        "Linear time means a constant µs per prompt; flat memory means peak RSS that does not grow with N.",
        "",
        "| prompts | wall s | µs per prompt | completions/s | worker peak RSS MB | client peak RSS MB | "
        "CPU ms per completion |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r.n for r in runs}):
        rs = [r for r in runs if r.n == n]
        rows.append(
            f"| {n:,} | {stat(rs, lambda r: r.wall_s).fmt('.1f')} | "
            f"{stat(rs, lambda r: 1e6 * r.wall_s / r.n).fmt(',.0f')} | {stat(rs, lambda r: r.rate).fmt()} | "
            f"{stat(rs, lambda r: r.usage.peak_rss.get('workers', 0) / MB).fmt()} | "
            f"{stat(rs, lambda r: r.result['peak_rss'] / MB).fmt()} | {stat(rs, _total_cpu).fmt('.2f')} |"
        )
    return rows


def _rate_limit(bench: Bench, limiter_wired: bool) -> list[str]:
    b, lt = _runs(bench, "RL", "batcher"), _runs(bench, "RL", "litellm")
    if not b:
        return []
    n = bench.sizes.rl_prompts
    rows = [
        "",
        "## Rate limit (issue #3): the provider enforces its own limit",
        "",
        f"The fake provider allows {cfg.RL_LIMIT} requests per {cfg.RL_WINDOW_S:g} s moving window for this model "
        f"and answers 429 beyond; batcher's workers get the same limit through `BATCHER_RATE_LIMITS` "
        f"(`{cfg.rate_limits_setting()}`, defined once in `bench/_config.py`). Ideal = prompts ÷ limit = "
        f"{bench.rl_ideal_s(n):.1f} s; a client that sends a full window at once and then waits can finish in "
        f"{bench.rl_floor_s(n):.1f} s (the moving-window floor).",
    ]
    if not limiter_wired:
        rows += [
            "",
            "**The shared limiter is not wired into the workers yet** (`batcher/_ratelimit.py` exists; "
            "`workers/` does not call it): batcher's numbers below show retries of 429s, not the limiter.",
        ]
    rows += ["", "| system | wall s | 429s received | failed prompts |", "|---|---|---|---|"]
    rows.append(
        f"| batcher | {stat(b, lambda r: r.wall_s).fmt('.1f')} | {stat(b, lambda r: r.extra['429s']).fmt()} | "
        f"{stat(b, lambda r: r.n - r.result['ok']).fmt()} |"
    )
    if lt:
        rows.append(
            f"| LiteLLM batch_completion | {stat(lt, lambda r: r.wall_s).fmt('.1f')} | "
            f"{stat(lt, lambda r: r.extra['429s']).fmt()} | {stat(lt, lambda r: r.n - r.result['ok']).fmt()} |"
        )
    return rows


def _experiments(bench: Bench) -> list[str]:
    from bench._worker import EXPERIMENTS

    names = sorted({r.workload for r in bench.runs if r.workload.startswith("X:")})
    if not names:
        return []
    rows = [
        "",
        "## What-ifs: proposed changes measured on W1",
        "",
        "The workers run the code as it is (baseline) or with one change applied at start-up by "
        "`bench/_worker.py` (variant), alternately, on the same W1 batch.",
        "",
        "| change | variant | completions/s | CPU ms per completion (all but fake) | workers CPU ms | Redis CPU ms |",
        "|---|---|---|---|---|---|",
    ]
    for workload in names:
        name = workload[2:]
        for label in ("baseline", name):
            rs = [r for r in bench.runs if r.workload == workload and r.extra.get("variant") == label]
            rows.append(
                f"| {EXPERIMENTS.get(name, name) if label == 'baseline' else ''} | {label} | "
                f"{stat(rs, lambda r: r.rate).fmt()} | {stat(rs, _total_cpu).fmt('.2f')} | "
                f"{stat(rs, lambda r: r.cpu_ms().get('workers', 0.0)).fmt('.2f')} | "
                f"{stat(rs, lambda r: r.cpu_ms().get('redis', 0.0)).fmt('.2f')} |"
            )
    return rows


def _profile(profile: Profile, completions: int, sizes: cfg.Sizes) -> list[str]:
    rows = [
        "",
        f"## Profile: where a worker's CPU goes (W1, {completions:,} prompts, py-spy on every worker)",
        "",
        f"On-CPU samples at {profile.rate_hz} Hz of all {sizes.workers} worker processes, in µs of worker CPU "
        f"per completion ({profile.us_per(profile.samples, completions):,.0f} µs in all).",
        "",
        "| by library (leaf frame) | µs per completion | share |",
        "|---|---|---|",
    ]
    for name, count in profile.groups.most_common(12):
        rows.append(f"| {name} | {profile.us_per(count, completions):,.0f} | {100 * count / profile.samples:.0f} % |")
    rows += ["", "| top functions by self time | µs per completion |", "|---|---|"]
    for name, count in profile.self_samples.most_common(15):
        rows.append(f"| `{name}` | {profile.us_per(count, completions):,.0f} |")
    rows += ["", "| batcher's steps, inclusive | µs per completion |", "|---|---|"]
    wanted = [
        n
        for n, _ in profile.inclusive.most_common()
        if ("batcher/" in n or "workers/" in n) and "batcher/testing/" not in n
    ][:15]
    for name in wanted:
        rows.append(f"| `{name}` | {profile.us_per(profile.inclusive[name], completions):,.0f} |")
    return rows


def summary_lines(bench: Bench) -> list[str]:
    """A short text summary for the terminal."""
    lines: list[str] = []
    for workload in ("W1", "W2", "W3", "W4", "W5", "scale", "RL"):
        for system in ("batcher", "ceiling", "litellm"):
            runs = _runs(bench, workload, system)
            if runs:
                med = statistics.median(r.wall_s for r in runs)
                lines.append(f"{workload:6} {system:8} median wall {med:8.2f} s over {len(runs)} run(s)")
    return lines


# --- raw runs, kept next to the report so a later session can re-run some workloads and merge ---


def save_runs(
    path: Path, bench: Bench, sessions: list[dict[str, Any]], profile: Profile | None, completions: int
) -> None:
    data = {
        "sessions": sessions,
        "runs": [
            {
                "workload": r.workload,
                "system": r.system,
                "n": r.n,
                "wall_s": r.wall_s,
                "result": r.result,
                "cpu_s": r.usage.cpu_s,
                "peak_rss": r.usage.peak_rss,
                "extra": r.extra,
            }
            for r in bench.runs
        ],
        "profile": None
        if profile is None
        else {
            "samples": profile.samples,
            "rate_hz": profile.rate_hz,
            "completions": completions,
            "self": dict(profile.self_samples),
            "inclusive": dict(profile.inclusive),
            "groups": dict(profile.groups),
        },
    }
    path.write_text(json.dumps(data, indent=1))


def load_runs(path: Path) -> tuple[list[Run], list[dict[str, Any]], Profile | None, int]:
    from collections import Counter

    from bench._cpu import Usage

    data = json.loads(path.read_text())
    runs = [
        Run(r["workload"], r["system"], r["n"], r["wall_s"], r["result"], Usage(r["cpu_s"], r["peak_rss"]), r["extra"])
        for r in data["runs"]
    ]
    profile = None
    completions = 0
    if data.get("profile"):
        p = data["profile"]
        profile = Profile(
            samples=p["samples"],
            self_samples=Counter(p["self"]),
            inclusive=Counter(p["inclusive"]),
            groups=Counter(p["groups"]),
            rate_hz=p["rate_hz"],
        )
        completions = p["completions"]
    return runs, data["sessions"], profile, completions


# --- python -m bench --deployment default (issue #16) -------------------------------------------------------

DEPLOY_SECTION = "## Fast out of the box (issue #16)"
DEPLOY_SUBSECTION = "### Default deployment vs ceiling"
DEPLOY_TARGETS = {"ceiling": 0.85, "litellm": 5.0, "cpu_ms": 1.5, "w3_over_fastest_ms": 10.0}


def deployment_lines(bench: Bench, session: dict[str, Any]) -> list[str]:
    """The subsection ``--deployment default`` writes: W1 on ``batcher worker`` vs the ceiling and LiteLLM, W3."""
    s = bench.sizes
    lb, la = session["load_before"], session["load_after"]
    d = _runs(bench, "D:W1", "batcher")
    c = _runs(bench, "D:W1", "ceiling")
    lite = _runs(bench, "D:W1", "litellm")
    processes = d[0].extra.get("processes", "?") if d else "?"
    threads = d[0].extra.get("threads", "?") if d else "?"
    rate = {name: stat(runs, lambda r: r.rate) for name, runs in (("d", d), ("c", c), ("l", lite))}
    cpu = {name: stat(runs, _total_cpu) for name, runs in (("d", d), ("c", c), ("l", lite))}
    rss = {name: stat(runs, lambda r: r.usage.peak_rss.get("workers", 0) / MB) for name, runs in (("d", d), ("c", c))}
    out = [
        DEPLOY_SUBSECTION,
        "",
        f"`{session['command']}` on {session['started']}; 1-minute load average {lb[0]:.2f} before, {la[0]:.2f} after "
        f"(1, 5, 15 min: {', '.join(f'{v:.2f}' for v in lb)} before; {', '.join(f'{v:.2f}' for v in la)} after)"
        + (
            f"; **the machine was busy** ({os.cpu_count()} cores shared with other suites): compare the ratios, "
            "measured side by side, not the absolute figures"
            if lb[0] > BUSY_LOAD_BEFORE
            else ""
        )
        + ".",
        "",
        f"W1: {s.w1_prompts:,} prompts, one model at {cfg.W1_LATENCY_MS} ms, the three systems alternating in each "
        f"repetition. **batcher**: `batcher worker` started with no flags, as the README does ({processes} worker "
        f"processes {X} {threads} threads, one per core, plus the race process), submitted and read back by "
        "`Client`. **Ceiling**: the same Celery settings, processes and threads, kombu's stock Redis transport, "
        "a task that only runs the job-counter statement (`UPDATE jobs SET succeeded = succeeded + 1`, "
        "autocommit; `bench/_ceiling.py`), all its messages published at once by batcher's own `Publisher`, "
        "timed until the counter reads N. **LiteLLM**: `batch_completion`, 100 threads. CPU: every process but "
        "the fake provider (client, workers, Redis, Postgres backends and shared processes), ÷ completions. "
        "Peak RSS: the largest worker process.",
        "",
        "| system | completions/s | CPU-ms per completion | worker peak RSS MB | batcher ÷ it |",
        "|---|---|---|---|---|",
        f"| batcher (`batcher worker`) | {rate['d'].fmt()} | {cpu['d'].fmt('.2f')} | {rss['d'].fmt()} | |",
        f"| bare-Celery ceiling | {rate['c'].fmt()} | {cpu['c'].fmt('.2f')} | {rss['c'].fmt()} | "
        f"{_ratio(rate['d'], rate['c'])} throughput, {_ratio(cpu['d'], cpu['c'])} CPU |",
        f"| LiteLLM `batch_completion` | {rate['l'].fmt()} | {cpu['l'].fmt('.2f')} | | "
        f"{_ratio(rate['d'], rate['l'])} throughput, {_ratio(cpu['d'], cpu['l'])} CPU |",
        "",
        "| target (issue #16) | measured | |",
        "|---|---|---|",
    ]
    vs_c = rate["d"].median / rate["c"].median if d and c and rate["c"].median else None
    vs_l = rate["d"].median / rate["l"].median if d and lite and rate["l"].median else None
    out += [
        f"| throughput ≥ {DEPLOY_TARGETS['ceiling']:.0%} of the ceiling | "
        + (f"{vs_c:.0%}" if vs_c is not None else "-")
        + f" | {_met(None if vs_c is None else vs_c >= DEPLOY_TARGETS['ceiling'])} |",
        f"| throughput ≥ {DEPLOY_TARGETS['litellm']:.0f}{X} LiteLLM | "
        + (f"{vs_l:.2f}{X}" if vs_l is not None else "-")
        + f" | {_met(None if vs_l is None else vs_l >= DEPLOY_TARGETS['litellm'])} |",
        f"| CPU ≤ {DEPLOY_TARGETS['cpu_ms']} ms per completion | {cpu['d'].fmt('.2f')} | "
        f"{_met(cpu['d'].median <= DEPLOY_TARGETS['cpu_ms'] if d else None)} |",
    ]
    idle = _runs(bench, "D:W3", "batcher")
    busy = _runs(bench, "D:W3busy", "batcher")
    fastest = cfg.RACE_LATENCIES_MS[0]
    limit = fastest + DEPLOY_TARGETS["w3_over_fastest_ms"]
    for label, runs in (("idle", idle), (f"during a {s.deploy_busy_prompts:,}-prompt batch", busy)):
        med = stat(runs, lambda r: r.extra["median_ms"])
        out.append(
            f"| W3 fastest of 3 ({'/'.join(str(x) for x in cfg.RACE_LATENCIES_MS)} ms), {label}: median ≤ "
            f"{limit:.0f} ms | {med.fmt('.0f', ' ms')} | {_met(med.median <= limit if runs else None)} |"
        )
    fast_name = cfg.model_name(cfg.RACE_MODELS[0])
    slow_wins = [
        f"{label}: {sum(1 for r in runs for w in r.result.get('all_winners', []) if w != fast_name)} of "
        f"{sum(len(r.result.get('all_winners', [])) for r in runs)}"
        for label, runs in (("idle", idle), ("during the batch", busy))
        if runs
    ]
    if slow_wins:
        out += ["", f"Races won by a slower model than {fast_name} (its answer came first): {'; '.join(slow_wins)}."]
    if busy:
        brss = stat(busy, lambda r: r.usage.peak_rss.get("workers", 0) / MB)
        done = ", ".join(f"{r.result['batch_done_before']:,} → {r.result['batch_done_after']:,}" for r in busy)
        out += [
            "",
            f"W3 during a batch: {s.w3_calls} races one after another, started once the "
            f"{s.deploy_busy_prompts:,}-prompt batch had its first answers (batch answers before → after the "
            f"races: {done}); the batch then completed and was checked. Worker peak RSS over that run (largest "
            f"process): {brss.fmt()} MB, against {rss['d'].fmt()} MB for W1's {s.w1_prompts:,}.",
        ]
    roles = [
        "",
        "CPU-ms per completion by process (W1):",
        "",
        "| system | client | workers | Redis | Postgres | Postgres shared | fake provider |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in (("batcher", d), ("ceiling", c), ("LiteLLM", lite)):
        if runs:
            cells = [stat(runs, lambda r, role=role: r.cpu_ms().get(role, 0.0)).fmt(".2f") for role in _ROLES]
            fake = stat(runs, lambda r: r.cpu_ms().get("fake", 0.0)).fmt(".2f")
            roles.append(f"| {name} | {' | '.join(cells)} | {fake} |")
    return out + roles


def write_deployment(path: Path, lines: list[str]) -> None:
    """Put the subsection in ``path`` (below the notes marker, which ``python -m bench`` keeps), replacing the
    one written before and leaving every other section as it is."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{NOTES_MARKER}\n"
    if NOTES_MARKER not in text:
        text += f"\n{NOTES_MARKER}\n"
    block = "\n".join(lines).rstrip() + "\n"
    if DEPLOY_SECTION not in text:
        path.write_text(text.rstrip() + f"\n\n{DEPLOY_SECTION}\n\n{block}")
        return
    head, rest = text.split(DEPLOY_SECTION, 1)
    section_end = rest.find("\n## ")
    section, tail = (rest, "") if section_end < 0 else (rest[:section_end], rest[section_end:])
    if DEPLOY_SUBSECTION in section:
        before, after = section.split(DEPLOY_SUBSECTION, 1)
        nxt = after.find("\n### ")
        after = "" if nxt < 0 else after[nxt:]
        section = before + block + after
    else:
        section = section.rstrip() + "\n\n" + block
    path.write_text(head + DEPLOY_SECTION + section.rstrip() + "\n" + tail)
