"""``python -m bench``: run every workload 3 times, batcher and LiteLLM side by side, and write
``docs/benchmarks.md``. ``--quick`` runs tiny sizes once (a smoke test of the harness).

Needs this machine's Postgres and Redis (``--pg-admin-url``, ``--redis-url``) and the bench
extra (``pip install -e '.[bench]'``: LiteLLM, psutil, py-spy). LiteLLM is skipped with a
note when it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import _config as cfg
from bench._profile import Profile, Recorder
from bench._report import load_runs, save_runs, summary_lines, write
from bench._worker import EXPERIMENTS
from bench._workloads import Bench, BenchCheckError

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "scale", "rl")
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (seconds, not minutes)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    p.add_argument("--reps", type=int, help="repetitions of each workload (default 3; 1 with --quick)")
    p.add_argument("--no-litellm", action="store_true", help="batcher only")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of W1")
    p.add_argument(
        "--experiments",
        default="",
        help="comma-separated what-ifs measured on W1 against the code as it is (see bench/_worker.py)",
    )
    p.add_argument(
        "--deployment",
        choices=["default"],
        help="instead of the workloads: W1 on `batcher worker` started as the README does (no flags) against the "
        "bare-Celery ceiling and LiteLLM in one run, and W3 idle and during a large batch; writes the section "
        "'Fast out of the box (issue #16)' of the output, keeping the rest",
    )
    p.add_argument("--output", type=Path, help="default docs/benchmarks.md (a temporary file with --quick)")
    p.add_argument(
        "--merge",
        type=Path,
        help="a previous run's JSON (docs/benchmarks.json): keep its results for the workloads not run now",
    )
    p.add_argument("--pg-admin-url", default=os.environ.get("BATCHER_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    p.add_argument("--redis-url", default=os.environ.get("BATCHER_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    return p


def _limiter_wired() -> bool:
    """Whether the workers consult the shared rate limiter (issue #3) yet."""
    return any("_ratelimit" in path.read_text() for path in (REPO_ROOT / "workers").glob("*.py"))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # Stopped with Ctrl-C or SIGTERM (also when started in the background, where SIGINT is ignored):
    # unwind, so what was measured is written and every process and the database are cleaned up.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    sizes = cfg.QUICK if args.quick else cfg.FULL
    if args.reps:
        from dataclasses import replace

        sizes = replace(sizes, reps=args.reps, scale_reps_large=min(sizes.scale_reps_large, args.reps))
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        print(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}", file=sys.stderr)
        return 2
    litellm = not args.no_litellm and importlib.util.find_spec("litellm") is not None
    if not args.no_litellm and not litellm:
        print("LiteLLM is not installed (pip install -e '.[bench]'): running batcher only", file=sys.stderr)
    output: Path = args.output or (
        Path(tempfile.gettempdir()) / "benchmarks-quick.md" if args.quick else REPO_ROOT / "docs" / "benchmarks.md"
    )
    command = "python -m bench" + (
        "" if argv is None and len(sys.argv) == 1 else " " + shlex.join(argv or sys.argv[1:])
    )

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    say(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; output {output}")
    failures: list[str] = []
    profile: Profile | None = None
    with tempfile.TemporaryDirectory(prefix="batcher-bench-") as tmp:
        bench = Bench(
            sizes=sizes,
            workdir=Path(tmp),
            admin_url=args.pg_admin_url,
            redis_url=args.redis_url,
            litellm=litellm,
            say=say,
        )
        if args.deployment:
            return _deployment(bench, output, command, started, load_before, say)
        try:
            bench.start()
            steps = {
                "w1": bench.w1,
                "w3": bench.w3,
                "w2": bench.w2,
                "scale": bench.scale,
                "rl": bench.rate_limited,
                "w4": bench.w4,
                "w5": bench.w5,
            }
            for experiment in [e for e in args.experiments.split(",") if e]:
                if experiment not in EXPERIMENTS:
                    raise SystemExit(f"unknown experiment {experiment!r}; choose from {sorted(EXPERIMENTS)}")
                steps[f"x:{experiment}"] = lambda e=experiment: bench.experiment(e)
                chosen.append(f"x:{experiment}")
            for name, step in steps.items():
                if name not in chosen:
                    continue
                try:
                    step()
                except BenchCheckError as exc:
                    failures.append(f"{name}: {exc}")
                    say(f"FAILED {name}: {exc}")
                except Exception as exc:  # an infrastructure fault: keep what the other workloads measured
                    traceback.print_exc()
                    failures.append(f"{name}: the harness failed: {type(exc).__name__}: {str(exc)[:300]}")
                    say(f"FAILED {name}: {type(exc).__name__}")
                if name == "w1" and not args.no_profile and Recorder.available():
                    try:
                        profile = _profile(bench, say)
                    except Exception as exc:
                        traceback.print_exc()
                        failures.append(f"profile: {type(exc).__name__}: {str(exc)[:300]}")
        except Exception:
            traceback.print_exc()
            failures.append("the harness itself failed (see above)")
        finally:
            load_after = os.getloadavg()
            session = {
                "command": command,
                "started": started,
                "load_before": list(load_before),
                "load_after": list(load_after),
                "workloads": chosen,
                "failures": failures,
            }
            try:
                if bench.runs:
                    _report(bench, session, args.merge, output, profile, sizes.profile_prompts, say)
            finally:
                bench.close()
            say(f"stopped every process; dropped {bench.db.name}")
    if failures:
        print("BENCHMARK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _deployment(
    bench: Bench, output: Path, command: str, started: str, load_before: tuple[float, float, float], say: Any
) -> int:
    """``--deployment default``: one run of ``Bench.deployment``, its subsection written into ``output``."""
    from bench._report import deployment_lines, write_deployment

    failure = ""
    try:
        bench.start()
        bench.deployment()
    except BenchCheckError as exc:
        failure = f"deployment: {exc}"
    except Exception as exc:
        traceback.print_exc()
        failure = f"deployment: the harness failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        load_after = os.getloadavg()
        try:
            if bench.runs:
                session = {"command": command, "started": started, "load_before": list(load_before)}
                session["load_after"] = list(load_after)
                lines = deployment_lines(bench, session)
                if failure:
                    lines += ["", f"**Failed:** {failure}"]
                output.parent.mkdir(parents=True, exist_ok=True)
                write_deployment(output, lines)
                for line in lines:
                    say(line)
                say(f"wrote {output}")
        finally:
            bench.close()
            say(f"stopped every process; dropped {bench.db.name}")
    if failure:
        print(f"BENCHMARK FAILED:\n  {failure}", file=sys.stderr)
        return 1
    return 0


STEP_WORKLOADS = {
    "w1": ("W1",),
    "w2": ("W2",),
    "w3": ("W3",),
    "w4": ("W4",),
    "w5": ("W5", "W5:copy"),
    "scale": ("scale",),
    "rl": ("RL",),
}


def _report(
    bench: Bench,
    session: dict[str, Any],
    merge: Path | None,
    output: Path,
    profile: Profile | None,
    completions: int,
    say: Callable[[str], None],
) -> None:
    """Write the report (and its raw runs as JSON); with ``--merge``, keep an earlier session's other workloads."""
    sessions = [session]
    if merge is not None and merge.exists():
        old_runs, old_sessions, old_profile, old_completions = load_runs(merge)
        redone = {w for step in session["workloads"] for w in STEP_WORKLOADS.get(step, (step.replace("x:", "X:"),))}
        kept = [r for r in old_runs if r.workload not in redone]
        bench.runs = kept + bench.runs
        for old in old_sessions:
            old["failures"] = [f for f in old.get("failures", []) if f.split(":", 1)[0] not in session["workloads"]]
            old["workloads"] = [w for w in old["workloads"] if w not in session["workloads"]]
        sessions = [old for old in old_sessions if old["workloads"]] + sessions
        if profile is None:
            profile, completions = old_profile, old_completions
    output.parent.mkdir(parents=True, exist_ok=True)
    write(
        output,
        bench,
        sessions=sessions,
        profile=profile,
        profile_completions=completions,
        failures=[f for x in sessions for f in x.get("failures", [])],
        limiter_wired=_limiter_wired(),
    )
    save_runs(output.with_suffix(".json"), bench, sessions, profile, completions)
    for line in summary_lines(bench):
        say(line)
    say(f"wrote {output} and {output.with_suffix('.json').name}")


def _profile(bench: Bench, say: object) -> Profile:
    """A separate, untimed W1 batch with py-spy attached to every worker."""
    s = bench.sizes
    workers = bench.ensure_workers(s.w1_slots_per_worker)
    recorder = Recorder(workers.pids, bench.workdir).start()
    time.sleep(1.0)  # py-spy attaches
    try:
        bench.batch("profile", cfg.W1_MODEL, s.profile_prompts, s.w1_slots_per_worker)
    finally:
        profile = recorder.stop()
    bench.runs = [r for r in bench.runs if r.workload != "profile"]
    if callable(say):
        say(f"profile: {profile.samples} samples")
    return profile


if __name__ == "__main__":
    sys.exit(main())
