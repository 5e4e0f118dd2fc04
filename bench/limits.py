"""``python -m bench.limits``: a provider whose real limit is lower than configured (issue #15).

The fake provider enforces ``--real-rpm`` requests per sliding minute for one model, and says so in
OpenAI's rate-limit headers on every answer; batcher's workers are configured with ``--configured-rpm``
(``BATCHER_RATE_LIMITS``), higher, as an operator who copied a tier's nominal figure would be. A batch of
``--prompts`` goes through ``--workers`` worker processes (``batcher worker``'s defaults otherwise:
adaptive concurrency on), then the same batch through LiteLLM's ``batch_completion`` on the same fake.

Reported for each: requests per minute achieved, as a share of the real limit, and the share of the
provider's answers that were 429s (the fake's own count). Under a sliding window the fastest any client
can finish ``n`` requests is ``(ceil(n / limit) - 1)`` windows plus one call (a full window's worth is
sent at once, then one per freed place); "of the limit" is that time divided by the wall time.

Runs on a private ``redis-server`` and a database of its own (both removed at the end); needs this
machine's Postgres (``--pg-admin-url``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import _config as cfg
from bench._services import FakeProviderProcess
from bench._workloads import Bench, Run

MODEL = "openai/bench-limits"
DEFAULT_PROMPTS = 3_000
DEFAULT_REAL_RPM = 1_200
DEFAULT_CONFIGURED_RPM = 6_000
DEFAULT_LATENCY_MS = 100
WINDOW_S = 60.0
"""The providers' limits are per minute; the fake enforces this window, the headers say "per minute"."""
GOAL_OF_LIMIT = 0.90
GOAL_429_SHARE = 0.01
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS)
    p.add_argument("--real-rpm", type=int, default=DEFAULT_REAL_RPM, help="what the fake provider enforces")
    p.add_argument("--configured-rpm", type=int, default=DEFAULT_CONFIGURED_RPM, help="BATCHER_RATE_LIMITS' rpm")
    p.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=cfg.FULL.w1_slots_per_worker, help="threads per worker")
    p.add_argument("--litellm-workers", type=int, default=100, help="batch_completion's max_workers")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--pg-admin-url", default=os.environ.get("BATCHER_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    return p


def fake_config(real_rpm: int, latency_ms: float) -> dict[str, Any]:
    return {
        "models": {cfg.model_name(MODEL): {"latency_ms": latency_ms, "rpm_limit": real_rpm}},
        "rpm_window_s": WINDOW_S,
        "record_bodies": False,
        "record_headers": False,
    }


def floor_s(n: int, limit: int, latency_s: float) -> float:
    """The fastest any client obeying a sliding window of ``limit`` per ``WINDOW_S`` finishes ``n`` calls."""
    return (math.ceil(n / limit) - 1) * WINDOW_S + latency_s


def figures(run: Run, real_rpm: int, latency_s: float) -> dict[str, Any]:
    answered_ok = int(run.extra.get("provider_200s", run.n))
    limited = int(run.extra["429s"])
    calls = answered_ok + limited
    best = floor_s(answered_ok, real_rpm, latency_s) if answered_ok else 0.0
    return {
        "system": run.system,
        "prompts": run.n,
        "succeeded": answered_ok,
        "wall_s": round(run.wall_s, 2),
        "requests_per_min": round(answered_ok / run.wall_s * 60, 1) if run.wall_s else 0.0,
        "of_limit_pct": round(100 * best / run.wall_s, 1) if run.wall_s else 0.0,
        "provider_calls": calls,
        "429s": limited,
        "429_pct": round(100 * limited / calls, 2) if calls else 0.0,
        "max_in_flight": run.extra.get("in_flight"),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from batcher.testing.servers import RedisServer

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    latency_s = args.latency_ms / 1000
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batcher-bench-limits-") as tmp, RedisServer(Path(tmp)) as private:
        sizes = replace(cfg.FULL, workers=args.workers, reps=1)
        bench = Bench(
            sizes=sizes,
            workdir=Path(tmp),
            admin_url=args.pg_admin_url,
            redis_url=private.url,
            litellm=not args.no_litellm,
            say=say,
        )
        bench.fake = FakeProviderProcess(fake_config(args.real_rpm, args.latency_ms), Path(tmp))
        try:
            bench.start()
            env = {"BATCHER_RATE_LIMITS": json.dumps({MODEL: {"rpm": args.configured_rpm}})}
            say(
                f"{args.prompts} prompts; the provider enforces {args.real_rpm} rpm, batcher is configured with "
                f"{args.configured_rpm} rpm; {args.workers} workers x {args.concurrency} threads"
            )
            run = bench.batch("limits", MODEL, args.prompts, args.concurrency, env)
            run.extra["provider_200s"] = args.prompts
            rows.append(figures(run, args.real_rpm, latency_s))
            say(f"batcher: {rows[-1]}")
            if not args.no_litellm:
                bench.stop_workers()
                lrun = bench.litellm_batch("limits", MODEL, args.prompts, args.litellm_workers)
                rows.append(figures(lrun, args.real_rpm, latency_s))
                say(f"litellm: {rows[-1]}")
        finally:
            bench.close()
    print(json.dumps({"real_rpm": args.real_rpm, "configured_rpm": args.configured_rpm, "runs": rows}, indent=2))
    ours = rows[0]
    met = ours["of_limit_pct"] >= 100 * GOAL_OF_LIMIT and ours["429_pct"] <= 100 * GOAL_429_SHARE
    print(
        f"goal (>= {GOAL_OF_LIMIT:.0%} of the limit, <= {GOAL_429_SHARE:.0%} 429s): {'met' if met else 'NOT met'} "
        f"({ours['of_limit_pct']}% of the limit, {ours['429_pct']}% 429s)"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
