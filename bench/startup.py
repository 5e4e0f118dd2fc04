"""``python -m bench.startup``: how long the command line takes to start (issue #14), timed over N runs.

Each measured command runs in a fresh interpreter (this one, ``sys.executable``) with the checkout under
test first on its path, exactly as the ``batcher`` script runs (``from batcher.cli import main``):

- ``batcher --help``;
- ``python -c 'import batcher'``;
- ``batcher status JOB`` in embedded mode (no services: ``BATCHER_MODE=embedded``, a ``batcher.db`` in a
  temporary directory holding one finished job): a read-only command's whole life.

Wall time (median, min-max) is what a user waits; CPU time (user + system of the child, median) is
what it costs, and it moves less than wall time on a shared box. ``--baseline REV`` times a ``git
archive`` of that revision the same way, side by side; ``--write`` replaces the section
"CLI start-up (issue #14)" of ``docs/benchmarks.md`` (appended when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SECTION = "## CLI start-up (issue #14)"
CLI = "import sys; sys.argv[0] = 'batcher'; from batcher.cli import main; sys.exit(main())"
COMMANDS = {
    "batcher --help": [CLI, "--help"],
    "python -c 'import batcher'": ["import batcher"],
    "batcher status JOB (embedded)": [CLI, "status", "{job}"],
}


@dataclass
class Timing:
    wall_s: list[float]
    cpu_s: list[float]


def _env(src: Path, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_", "PYTHON"))}
    env.update(
        PYTHONPATH=str(src),
        BATCHER_MODE="embedded",
        BATCHER_EMBEDDED_PATH=str(workdir / "batcher.db"),
        OPENAI_API_KEY="sk-bench-startup-0123456789",
    )
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def _prepare_job(src: Path, workdir: Path) -> str:
    """One finished job in the embedded file (mocked answers: nothing leaves the machine)."""
    prompts = workdir / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"p{i}"}]}) + "\n" for i in range(20))
    )
    env = _env(src, workdir)
    argv = _python(CLI, "submit", str(prompts), "--model", "gpt-4o-mini", "-p", "mock_response=ok", "--wait")
    _, _, done = _run(argv, env, workdir)
    if done.returncode != 0:
        raise RuntimeError(f"could not prepare a job with {src}:\n{done.stderr[-2000:]}")
    return done.stdout.split()[0]


def measure(src: Path, runs: int) -> dict[str, Timing]:
    """Every command ``runs`` times, interleaved (a burst of load hits every command alike)."""
    with tempfile.TemporaryDirectory(prefix="batcher-startup-") as tmp:
        workdir = Path(tmp)
        job = _prepare_job(src, workdir)
        env = _env(src, workdir)
        timings = {name: Timing([], []) for name in COMMANDS}
        for _ in range(runs):
            for name, template in COMMANDS.items():
                code, *args = (part.format(job=job) for part in template)
                wall, cpu, done = _run(_python(code, *args), env, workdir)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} failed with {src}:\n{done.stderr[-2000:]}")
                timings[name].wall_s.append(wall)
                timings[name].cpu_s.append(cpu)
        return timings


def checkout(rev: str, into: Path) -> Path:
    """``git archive REV`` unpacked into ``into`` (the working tree is not touched)."""
    archive = into / "src.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev], cwd=REPO_ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def _git_rev(rev: str = "HEAD") -> str:
    out = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True, text=True)
    return out.stdout.strip() or rev


def _cell(t: Timing) -> tuple[str, str]:
    wall = sorted(t.wall_s)
    return f"{statistics.median(wall):.2f} s ({wall[0]:.2f}-{wall[-1]:.2f})", f"{statistics.median(t.cpu_s):.2f} s"


def report(results: dict[str, dict[str, Timing]], runs: int, command: str) -> str:
    load = os.getloadavg()[0]
    labels = list(results)
    lines = [
        SECTION,
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {runs} runs of each command, interleaved; "
        f"1-minute load average {load:.1f} at the end ({os.cpu_count()} cores, shared). Wall: median "
        "(min-max); CPU: user + system of the child, median. Target: `batcher --help` ≤ 0.5 s.",
        "",
        "| command | " + " | ".join(f"{label}: wall | {label}: CPU" for label in labels) + " |",
        "|---|" + "---|---|" * len(labels),
    ]
    for name in COMMANDS:
        cells = [c for label in labels for c in _cell(results[label][name])]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "Raw wall times (s):", ""]
    for label in labels:
        for name in COMMANDS:
            raw = ", ".join(f"{w:.2f}" for w in results[label][name].wall_s)
            lines.append(f"- {label}, `{name}`: {raw}")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        tail = rest.split("\n## ", 1)
        text = head + section + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    p.add_argument("--baseline", help="a git revision to time too, side by side (e.g. the commit before a change)")
    p.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=REPO_ROOT / "docs" / "benchmarks.md",
        help="replace the section in this file (default docs/benchmarks.md)",
    )
    args = p.parse_args(argv)
    command = "python -m bench.startup " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, dict[str, Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="batcher-baseline-") as tmp:
        if args.baseline:
            src = checkout(args.baseline, Path(tmp))
            print(f"timing {args.baseline} ({_git_rev(args.baseline)}) ...", file=sys.stderr)
            results[f"before ({_git_rev(args.baseline)})"] = measure(src, args.runs)
        print("timing this checkout ...", file=sys.stderr)
        label = f"after ({_git_rev()})" if args.baseline else f"this checkout ({_git_rev()})"
        results[label] = measure(REPO_ROOT, args.runs)
    section = report(results, args.runs, command.strip())
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"wrote {SECTION!r} into {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
