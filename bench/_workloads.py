"""The workloads, each checked for correctness, and the services they run on.

Each repetition gives one :class:`Run`. A run whose results are wrong (a prompt unanswered,
a response stored twice, a provider call made twice) raises :class:`BenchCheckError`: the
benchmark fails loudly instead of reporting a number for work that was not done.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import _config as cfg
from bench._cpu import CpuMeter, Usage, find_redis_server
from bench._protocol import Child, ChildError, ChildSetupError
from bench._services import BenchDatabase, BenchRedis, CeilingWorkers, DefaultDeployment, FakeProviderProcess, Workers

SETUP_ATTEMPTS = 3


class BenchCheckError(AssertionError):
    """The benchmark's own correctness check failed."""


@dataclass
class Run:
    """One repetition of one workload by one system."""

    workload: str
    system: str  # "batcher" | "litellm"
    n: int
    wall_s: float
    result: dict[str, Any]
    usage: Usage
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.wall_s if self.wall_s else 0.0

    def cpu_ms(self) -> dict[str, float]:
        return self.usage.per_item_ms(self.n)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchCheckError(message)


class Bench:
    """The services of one benchmark run and the workloads that use them."""

    def __init__(
        self,
        *,
        sizes: cfg.Sizes,
        workdir: Path,
        admin_url: str,
        redis_url: str,
        litellm: bool,
        say: Callable[[str], None],
    ) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.litellm = litellm
        self.say = say
        self.tag = uuid.uuid4().hex[:8]
        self.db = BenchDatabase(admin_url, self.tag)
        self.redis = BenchRedis(redis_url, self.tag)
        self.fake = FakeProviderProcess(cfg.fake_provider_config(), workdir)
        self.queue = f"bench-{self.tag}"
        self.workers: Workers | None = None
        self.fleets: list[DefaultDeployment | Workers] = []  # --deployment: started and stopped by ``deployment``
        self._workers_key: tuple[Any, ...] | None = None
        self.job_ids: list[str] = []
        self.redis_pids = find_redis_server()
        self.runs: list[Run] = []
        self.last_max_in_flight = 0

    # --- services ------------------------------------------------------------------------

    def start(self) -> None:
        self.say(f"database {self.db.name}: create + migrate")
        self.db.create()
        self.fake.start()
        self.say(f"fake provider (pid {self.fake.pid}) on {self.fake.url}")

    def close(self) -> None:
        self.stop_workers()
        for fleet in self.fleets:
            fleet.stop()
        self.fake.stop()
        try:
            self.redis.cleanup(self.job_ids)
        finally:
            self.db.drop()

    @property
    def env(self) -> dict[str, str]:
        """The environment of workers and batcher children."""
        # Every BATCHER_* setting is the bench's own: a stray one in the caller's shell must not change the run.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("BATCHER_") or k.startswith("BATCHER_BENCH")
        }
        return {
            **inherited,
            "BATCHER_DATABASE_URL": self.db.url,
            "BATCHER_REDIS_URL": self.redis.url,
            "BATCHER_QUEUE": self.queue,
            "BATCHER_RACE_QUEUE": f"{self.queue}.race",
            "BATCHER_MAX_PROMPTS_PER_JOB": str(max(200_000, self.sizes.w4_prompts, self.sizes.w5_rows)),
            "BATCHER_LOG_LEVEL": "WARNING",
            "OPENAI_BASE_URL": self.fake.openai_base,
            "OPENAI_API_KEY": cfg.API_KEY,
            "PYTHONUNBUFFERED": "1",
        }

    def ensure_workers(self, concurrency: int, extra_env: dict[str, str] | None = None) -> Workers:
        key = (self.sizes.workers, concurrency, tuple(sorted((extra_env or {}).items())))
        if self.workers is not None and self._workers_key == key:
            return self.workers
        self.stop_workers()
        self.say(f"starting {self.sizes.workers} workers x {concurrency} threads")
        self.workers = Workers(
            {**self.env, **(extra_env or {})},
            self.workdir,
            count=self.sizes.workers,
            concurrency=concurrency,
        ).start()
        self._workers_key = key
        # Warm the fleet (connection pools, HTTP keep-alive, lazy imports) as a running deployment is.
        if not self.sizes.warm_up:
            return self.workers
        slots = self.sizes.workers * concurrency
        try:
            result, _ = self.run_child("batcher", "batch", {"prompts": 2 * slots, "model": cfg.W1_MODEL}, timeout=300)
        except ChildError as exc:
            raise ChildError(f"warm-up: {exc}\nrequests by state: {self.request_states()}") from None
        self.check_job(result, 2 * slots, "warm-up")
        return self.workers

    def stop_workers(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
            self._workers_key = None

    # --- running one child ----------------------------------------------------------------

    def run_child(
        self,
        system: str,
        workload: str,
        params: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        timeout: float,
        worker_pids: list[int] | None = None,
    ) -> tuple[dict[str, Any], Usage]:
        # A child that cannot connect while it sets up (Postgres' max_connections is shared with
        # whatever else runs on this machine) is started again; nothing was measured yet.
        for attempt in range(1, SETUP_ATTEMPTS + 1):
            try:
                return self._run_child(system, workload, params, env=env, timeout=timeout, worker_pids=worker_pids)
            except ChildSetupError as exc:
                if attempt == SETUP_ATTEMPTS:
                    raise
                self.say(f"{system} {workload}: set-up failed ({str(exc)[:120]}); retrying in 10 s")
                time.sleep(10)
        raise AssertionError("unreachable")

    def _run_child(
        self,
        system: str,
        workload: str,
        params: dict[str, Any],
        *,
        env: dict[str, str] | None,
        timeout: float,
        worker_pids: list[int] | None = None,
    ) -> tuple[dict[str, Any], Usage]:
        module = "bench._batcher_child" if system == "batcher" else "bench._litellm_child"
        child = Child(module, workload, params, env or self.env, self.workdir / f"{system}-{workload}.log")
        try:
            child.wait_ready()
            self.fake.reset()
            roles: dict[str, list[int]] = {"client": [child.pid], "fake": [self.fake.pid]}
            database: str | None = None
            if system == "batcher":  # LiteLLM uses neither workers, Redis nor Postgres
                if worker_pids is not None:
                    roles["workers"] = worker_pids
                else:
                    roles["workers"] = self.workers.pids if self.workers else []
                roles["redis"] = self.redis_pids
                database = self.db.name
            meter = CpuMeter(roles, database).start()
            try:
                child.go()
                result = child.result(timeout)
            finally:
                usage = meter.stop()
            child.finish()
        finally:
            child.kill()
        if "job_id" in result:
            self.job_ids.append(result["job_id"])
        self.job_ids.extend(result.get("job_ids", []))
        return result, usage

    def _litellm_params(self, **params: Any) -> dict[str, Any]:
        return {"api_base": self.fake.openai_base, "api_key": cfg.API_KEY, **params}

    # --- correctness ------------------------------------------------------------------------

    def check_job(self, result: dict[str, Any], n: int, what: str) -> None:
        """All answered, none duplicated: in the job's status, in Postgres and at the provider."""
        job = result["job_id"]
        check(result["state"] == "completed", f"{what}: job {job} ended {result['state']}, not completed")
        check(result["ok"] == n, f"{what}: {result['ok']} of {n} results are responses")
        rows = self.db.scalar("SELECT count(*) FROM responses WHERE job_id = :j", j=job)
        distinct = self.db.scalar("SELECT count(DISTINCT idx) FROM responses WHERE job_id = :j", j=job)
        check(rows == n and distinct == n, f"{what}: {rows} stored responses ({distinct} distinct) for {n} prompts")
        succeeded = self.db.scalar("SELECT count(*) FROM requests WHERE job_id = :j AND state = 'succeeded'", j=job)
        check(succeeded == n, f"{what}: {succeeded} of {n} requests succeeded")

    def request_states(self) -> dict[str, int]:
        """Requests of the run's newest job by state (to tell a stuck job from a slow one)."""
        engine = create_engine(self.db.url)
        try:
            with engine.connect() as conn:
                job = conn.execute(text("SELECT id FROM jobs ORDER BY created_at DESC LIMIT 1")).scalar()
                rows = conn.execute(
                    text("SELECT state, count(*) FROM requests WHERE job_id = :j GROUP BY state"), {"j": job}
                ).all()
        finally:
            engine.dispose()
        return {str(state): int(count) for state, count in rows}

    def provider_calls(self, model: str) -> tuple[int, int]:
        """(200s, 429s) the fake provider answered since its last reset (one child per reset)."""
        stats = self.fake.stats()
        self.last_max_in_flight = int(stats.get("max_in_flight", 0))
        by_status = stats["by_status"]
        return int(by_status.get("200", 0)), int(by_status.get("429", 0))

    def check_provider(self, n: int, what: str) -> int:
        """Exactly ``n`` successful provider calls: no prompt was paid for twice. Returns the 429s."""
        ok, limited = self.provider_calls("")
        check(ok == n, f"{what}: the provider answered {ok} successful calls for {n} prompts")
        return limited

    # --- W1 / W2 / scale / rate limit: a batch of N prompts ---------------------------------

    def batch(
        self, workload: str, model: str, n: int, concurrency: int, extra_env: dict[str, str] | None = None
    ) -> Run:
        self.ensure_workers(concurrency, extra_env)
        return self.batch_run(workload, model, n)

    def batch_run(
        self,
        workload: str,
        model: str,
        n: int,
        *,
        env: dict[str, str] | None = None,
        worker_pids: list[int] | None = None,
    ) -> Run:
        """One batch of ``n`` prompts on the workers running now, checked."""
        try:
            result, usage = self.run_child(
                "batcher",
                "batch",
                {"prompts": n, "model": model},
                env=env,
                timeout=max(600.0, n * 0.2),
                worker_pids=worker_pids,
            )
        except ChildError as exc:
            raise ChildError(f"{exc}\nrequests by state: {self.request_states()}") from None
        self.check_job(result, n, f"{workload} (batcher, {n} prompts)")
        limited = self.check_provider(n, f"{workload} (batcher, {n} prompts)")
        run = Run(
            workload,
            "batcher",
            n,
            result["wall_s"],
            result,
            usage,
            {"429s": limited, "in_flight": self.last_max_in_flight},
        )
        self.runs.append(run)
        return run

    def litellm_batch(self, workload: str, model: str, n: int, max_workers: int) -> Run:
        result, usage = self.run_child(
            "litellm",
            "batch",
            self._litellm_params(prompts=n, model=model, max_workers=max_workers),
            timeout=max(900.0, n * 0.5),
        )
        ok, limited = self.provider_calls(model)
        run = Run(
            workload,
            "litellm",
            n,
            result["wall_s"],
            result,
            usage,
            {"429s": limited, "provider_200s": ok, "in_flight": self.last_max_in_flight},
        )
        self.runs.append(run)
        return run

    def w1(self) -> None:
        s = self.sizes
        for rep in range(s.reps):
            run = self.batch("W1", cfg.W1_MODEL, s.w1_prompts, s.w1_slots_per_worker)
            self.say(f"W1 batcher #{rep + 1}: {run.rate:.0f} completions/s ({run.wall_s:.1f} s) {_timeline(run)}")
            if self.litellm:
                lrun = self.litellm_batch("W1", cfg.W1_MODEL, s.w1_prompts, 100)
                self.say(f"W1 litellm #{rep + 1}: {lrun.rate:.0f} completions/s ({lrun.wall_s:.1f} s)")

    def w2(self) -> None:
        """W2 on batcher, then (each repetition) on the bare-Celery ceiling with the same processes and
        threads, its task holding its thread for the provider's latency (a sleep: no CPU), then LiteLLM."""
        s = self.sizes
        threads = s.w2_slots // s.workers
        ceiling: CeilingWorkers | None = None
        ceiling_queue = f"{self.queue}.ceiling"
        ceiling_env = {
            **self.env,
            "BATCHER_QUEUE": ceiling_queue,
            "BATCHER_BENCH_CEILING_SLEEP_MS": str(cfg.W2_LATENCY_MS),
        }
        for rep in range(s.reps):
            run = self.batch("W2", cfg.W2_MODEL, s.w2_prompts, threads)
            self.say(f"W2 batcher #{rep + 1}: {run.wall_s:.1f} s {_timeline(run)}")
            if ceiling is None:
                self.say(f"starting the W2 ceiling: {s.workers} x {threads} threads of bench/_ceiling.py")
                ceiling = CeilingWorkers(ceiling_env, self.workdir, count=s.workers, concurrency=threads)
                self.fleets.append(ceiling)
                ceiling.start()
                if s.warm_up:  # its threads and pools, as batcher's workers were warmed
                    self._ceiling_run(s.w2_slots, ceiling_env, ceiling, ceiling_queue, workload="W2:warm-up")
                    self.runs = [r for r in self.runs if r.workload != "W2:warm-up"]
            crun = self._ceiling_run(s.w2_prompts, ceiling_env, ceiling, ceiling_queue, workload="W2")
            self.say(f"W2 ceiling #{rep + 1}: {crun.wall_s:.1f} s")
            if self.litellm:
                lrun = self.litellm_batch("W2", cfg.W2_MODEL, s.w2_prompts, s.litellm_w2_workers)
                self.say(f"W2 litellm #{rep + 1}: {lrun.wall_s:.1f} s")
        if ceiling is not None:
            ceiling.stop()

    def scale(self) -> None:
        s = self.sizes
        largest = max(s.scale_prompts)
        for n in s.scale_prompts:
            if n == s.w1_prompts and any(r.workload == "W1" and r.system == "batcher" for r in self.runs):
                for r in [r for r in self.runs if r.workload == "W1" and r.system == "batcher"]:
                    self.runs.append(Run("scale", "batcher", r.n, r.wall_s, r.result, r.usage, r.extra))
                continue
            for rep in range(s.scale_reps_large if n == largest and n > s.w1_prompts else s.reps):
                run = self.batch("scale", cfg.W1_MODEL, n, s.w1_slots_per_worker)
                self.say(f"scale {n} #{rep + 1}: {run.wall_s:.1f} s, {run.rate:.0f}/s")

    def rate_limited(self) -> None:
        s = self.sizes
        env = {"BATCHER_RATE_LIMITS": json.dumps(cfg.rate_limits_setting())}
        for rep in range(s.reps):
            self._forget_rate_windows()
            run = self.batch("RL", cfg.RL_MODEL, s.rl_prompts, s.w1_slots_per_worker, env)
            self.say(f"RL batcher #{rep + 1}: {run.wall_s:.1f} s, {run.extra['429s']} 429s")
            if self.litellm:
                lrun = self.litellm_batch("RL", cfg.RL_MODEL, s.rl_prompts, 100)
                self.say(f"RL litellm #{rep + 1}: {lrun.wall_s:.1f} s, {lrun.extra['429s']} 429s")

    def _forget_rate_windows(self) -> None:
        # The fake's windows restart with each reset; batcher's windows in Redis must too.
        keys = list(self.redis.client.scan_iter(match="batcher:ratelimit:*", count=1_000))
        if keys:
            self.redis.client.delete(*keys)

    # --- what-ifs: a proposed change, measured on W1 against the code as it is ----------------

    def experiment(self, name: str) -> None:
        s = self.sizes
        variant = {"BATCHER_BENCH_EXPERIMENTS": name}
        for rep in range(min(s.reps, 2)):  # alternating pairs; two are enough to see the direction
            for label, env in (("baseline", None), (name, variant)):
                run = self.batch(f"X:{name}", cfg.W1_MODEL, s.w1_prompts, s.w1_slots_per_worker, env)
                run.extra["variant"] = label
                self.say(f"what-if {name} #{rep + 1} {label}: {run.rate:.0f}/s, {sum(run.cpu_ms().values()):.2f} ms")

    # --- --deployment default: batcher worker as the README starts it vs the bare-Celery ceiling (issue #16)

    def deployment(self) -> None:
        """In one run, alternating each repetition: W1 on ``batcher worker`` started with no flags, the
        bare-Celery ceiling (same processes and threads, same broker, published by the same ``Publisher``)
        and LiteLLM; then W3 on the deployment, idle and during a large batch."""
        from batcher._config import DEFAULT_WORKER_CONCURRENCY
        from batcher._supervisor import processes_for

        s = self.sizes
        self.stop_workers()
        processes = processes_for(0)
        # The README's environment: the run's services, nothing tuned (not even the bench's log level).
        env = {k: v for k, v in self.env.items() if k != "BATCHER_LOG_LEVEL"}
        self.say(f"starting `batcher worker` (no flags): {processes} processes + 1 for races")
        deployed = DefaultDeployment(env, self.workdir, expected=processes + 1)
        self.fleets.append(deployed)
        deployed.start()
        ceiling_queue = f"{self.queue}.ceiling"
        ceiling_env = {**self.env, "BATCHER_QUEUE": ceiling_queue}
        self.say(f"starting the ceiling: {processes} x {DEFAULT_WORKER_CONCURRENCY} threads of bench/_ceiling.py")
        ceiling = CeilingWorkers(ceiling_env, self.workdir, count=processes, concurrency=DEFAULT_WORKER_CONCURRENCY)
        self.fleets.append(ceiling)
        ceiling.start()
        if s.warm_up:  # pools, keep-alive and lazy imports, as a running deployment has them
            slots = processes * DEFAULT_WORKER_CONCURRENCY
            self.batch_run("D:warm-up", cfg.W1_MODEL, 2 * slots, env=env, worker_pids=deployed.pids)
            self._ceiling_run(2 * slots, ceiling_env, ceiling, ceiling_queue, workload="D:warm-up")
            self.runs = [r for r in self.runs if not r.workload.startswith("D:warm-up")]
        for rep in range(s.reps):
            run = self.batch_run("D:W1", cfg.W1_MODEL, s.w1_prompts, env=env, worker_pids=deployed.pids)
            run.extra.update(processes=processes, threads=DEFAULT_WORKER_CONCURRENCY)
            self.say(f"D:W1 batcher worker #{rep + 1}: {run.rate:.0f}/s, {_total_ms(run):.2f} CPU-ms {_timeline(run)}")
            crun = self._ceiling_run(s.w1_prompts, ceiling_env, ceiling, ceiling_queue)
            self.say(f"D:W1 ceiling #{rep + 1}: {crun.rate:.0f}/s, {_total_ms(crun):.2f} CPU-ms")
            if self.litellm:
                lrun = self.litellm_batch("D:W1", cfg.W1_MODEL, s.w1_prompts, 100)
                self.say(f"D:W1 litellm #{rep + 1}: {lrun.rate:.0f}/s, {_total_ms(lrun):.2f} CPU-ms")
        ceiling.stop()
        names = {cfg.model_name(m) for m in cfg.RACE_MODELS}
        for rep in range(s.reps):
            result, usage = self.run_child(
                "batcher",
                "race",
                {"models": list(cfg.RACE_MODELS), "calls": s.w3_calls},
                env=env,
                timeout=600,
                worker_pids=deployed.pids,
            )
            # A slower model winning is not wrong (the first answer wins), only slow: counted and reported.
            check(set(result["winners"]) <= names, f"D:W3: the winners were {result['winners']}")
            run = Run("D:W3", "batcher", s.w3_calls, sum(result["times_s"]), result, usage)
            run.extra["median_ms"] = 1000 * result["median_s"]
            self.runs.append(run)
            self.say(f"D:W3 idle #{rep + 1}: median {run.extra['median_ms']:.0f} ms")
        for rep in range(s.deploy_busy_reps):
            n = s.deploy_busy_prompts
            result, usage = self.run_child(
                "batcher",
                "race_during_batch",
                {"models": list(cfg.RACE_MODELS), "calls": s.w3_calls, "prompts": n, "model": cfg.W1_MODEL},
                env=env,
                timeout=max(900.0, n * 0.2),
                worker_pids=deployed.pids,
            )
            check(set(result["winners"]) <= names, f"D:W3 busy: the winners were {result['winners']}")
            check(
                result["batch_done_after"] < n,
                f"D:W3 busy: the {n}-prompt batch was over before the races were ({result['batch_done_after']} done)",
            )
            self.check_job(result, n, f"D:W3 busy (its {n}-prompt batch)")
            run = Run("D:W3busy", "batcher", s.w3_calls, sum(result["times_s"]), result, usage)
            run.extra.update(median_ms=1000 * result["median_s"], batch_prompts=n)
            self.runs.append(run)
            self.say(
                f"D:W3 during a {n}-prompt batch #{rep + 1}: median {run.extra['median_ms']:.0f} ms "
                f"(batch {result['batch_done_before']} -> {result['batch_done_after']} done meanwhile)"
            )
        deployed.stop()

    def _ceiling_run(
        self, n: int, env: dict[str, str], ceiling: CeilingWorkers, queue: str, *, workload: str = "D:W1"
    ) -> Run:
        result, usage = self.run_child(
            "batcher",
            "ceiling",
            {"prompts": n, "queue": queue},
            env=env,
            timeout=max(600.0, n * 0.2),
            worker_pids=ceiling.pids,
        )
        check(result["ok"] == n, f"{workload} ceiling: the counter reached {result['ok']} of {n}")
        run = Run(workload, "ceiling", n, result["wall_s"], result, usage)
        self.runs.append(run)
        return run

    # --- W3: fastest of three models ---------------------------------------------------------

    def w3(self) -> None:
        s = self.sizes
        self.ensure_workers(s.w1_slots_per_worker)
        fastest = cfg.model_name(cfg.RACE_MODELS[0])
        for rep in range(s.reps):
            result, usage = self.run_child(
                "batcher", "race", {"models": list(cfg.RACE_MODELS), "calls": s.w3_calls}, timeout=600
            )
            check(
                result["winners"] == [fastest],
                f"W3 (batcher): the winners were {result['winners']}, not only {fastest}",
            )
            won = self.fake.stats()["by_model"].get(fastest, 0)
            check(won == s.w3_calls, f"W3 (batcher): {won} calls reached {fastest} for {s.w3_calls} races")
            run = Run("W3", "batcher", s.w3_calls, sum(result["times_s"]), result, usage)
            run.extra["median_ms"] = 1000 * result["median_s"]
            self.runs.append(run)
            self.say(f"W3 batcher #{rep + 1}: median {run.extra['median_ms']:.0f} ms")
            if self.litellm:
                lres, lusage = self.run_child(
                    "litellm", "race", self._litellm_params(models=list(cfg.RACE_MODELS), calls=s.w3_calls), timeout=900
                )
                lrun = Run("W3", "litellm", s.w3_calls, sum(lres["times_s"]), lres, lusage)
                lrun.extra["median_ms"] = 1000 * lres["median_s"]
                self.runs.append(lrun)
                self.say(f"W3 litellm #{rep + 1}: median {lrun.extra['median_ms']:.0f} ms")

    # --- W4: submit 100,000 prompts -----------------------------------------------------------

    def w4(self) -> None:
        s = self.sizes
        n = s.w4_prompts
        self.stop_workers()  # no dispatcher, nothing consumes: W4 measures what submission alone leaves behind
        path = self.workdir / "w4_prompts.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for i in range(n):
                out.write(json.dumps(f"Question {i}: what is {i} + {i}?") + "\n")
        queue = f"{self.queue}.w4"
        env = {**self.env, "BATCHER_QUEUE": queue}
        for rep in range(s.reps):
            before = self.redis.used_memory()
            result, usage = self.run_child(
                "batcher", "submit_file", {"path": str(path), "model": cfg.W1_MODEL}, env=env, timeout=900
            )
            queued = self.redis.queue_length(queue)
            queue_bytes = self.redis.queue_memory(queue)
            after = self.redis.used_memory()
            stored = self.db.scalar("SELECT count(*) FROM requests WHERE job_id = :j", j=result["job_id"])
            backlog = self.db.scalar(
                "SELECT count(*) FROM requests WHERE job_id = :j AND dispatched_at IS NULL", j=result["job_id"]
            )
            enqueued = self.db.scalar("SELECT enqueued_at IS NOT NULL FROM jobs WHERE id = :j", j=result["job_id"])
            self.redis.purge(queue)
            check(stored == n, f"W4: {stored} requests stored for {n} prompts")
            # Issue #15: submission publishes nothing; the job waits in Postgres for the dispatcher.
            check(backlog == n, f"W4: {backlog} of {n} prompts in the backlog")
            check(queued == 0, f"W4: {queued} messages queued at submission (the backlog stays in Postgres)")
            check(bool(enqueued), "W4: the job was not marked enqueued")
            run = Run("W4", "batcher", n, result["wall_s"], result, usage)
            run.extra.update(queue_bytes=queue_bytes, redis_delta=after - before)
            self.runs.append(run)
            self.say(
                f"W4 #{rep + 1}: {run.rate:,.0f} prompts/s (COPY {result.get('copy_s', 0):.1f} s, "
                f"publish {result.get('publish_s', 0):.1f} s), peak RSS {result['peak_rss'] / 2**20:.0f} MB"
            )
        path.unlink()

    # --- W5: read back 100,000 results --------------------------------------------------------

    def seed_results(self, n: int) -> str:
        """A completed job of ``n`` stored responses, written with SQL (no provider calls)."""
        template = self.db.scalar("SELECT body::text FROM responses LIMIT 1")
        if template is None:
            from batcher._response import mock_model_response

            template = json.dumps(mock_model_response("echo: seed", model="bench-w1").model_dump(mode="json"))
        job = str(uuid.uuid4())
        self.db.execute(
            """
            INSERT INTO jobs (id, kind, state, total, succeeded, failed, cancelled, expired, params,
                              created_at, enqueued_at, started_at, finished_at)
            VALUES (:job, 'batch', 'completed', :n, :n, 0, 0, 0, '{"params": {}}', now(), now(), now(), now())
            """,
            job=job,
            n=n,
        )
        self.db.execute(
            """
            INSERT INTO requests (job_id, idx, model, provider, messages, state, attempts, status_code,
                                  latency_ms, started_at, finished_at)
            SELECT :job, i, :model, 'openai',
                   jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Question ' || i)),
                   'succeeded', 1, 200, 100.0, now(), now()
              FROM generate_series(0, :n - 1) AS i
            """,
            job=job,
            n=n,
            model=cfg.W1_MODEL,
        )
        self.db.execute(
            """
            INSERT INTO responses (request_id, job_id, idx, provider, model, body, prompt_tokens,
                                   completion_tokens, total_tokens, latency_ms)
            SELECT r.id, r.job_id, r.idx, 'openai', 'bench-w1',
                   jsonb_set(CAST(:template AS jsonb), '{choices,0,message,content}',
                             to_jsonb('echo: Question ' || r.idx)),
                   8, 10, 18, 100.0
              FROM requests AS r WHERE r.job_id = :job
            """,
            job=job,
            template=template,
        )
        self.db.execute("ANALYZE requests; ANALYZE responses")
        self.job_ids.append(job)
        return job

    def w5(self) -> None:
        s = self.sizes
        n = s.w5_rows
        self.stop_workers()
        job = self.seed_results(n)
        out = self.workdir / "w5_results.jsonl"
        for rep in range(s.reps):
            # The CLI as it is, then the what-if of Postgres writing the lines itself (bench/_batcher_child.py).
            for workload, child in (("W5", "read_results"), ("W5:copy", "read_results_copy")):
                result, usage = self.run_child("batcher", child, {"job_id": job, "path": str(out)}, timeout=900)
                self._check_export(out, n, workload)
                run = Run(workload, "batcher", n, result["wall_s"], result, usage)
                run.extra["bytes"] = out.stat().st_size
                self.runs.append(run)
                self.say(f"{workload} #{rep + 1}: {run.rate:,.0f} rows/s, peak RSS {result['peak_rss'] / 2**20:.0f} MB")
                out.unlink()

    @staticmethod
    def _check_export(out: Path, n: int, what: str) -> None:
        rows = 0
        with out.open(encoding="utf-8") as lines:
            for expected, line in enumerate(lines):
                item = json.loads(line)
                check(item["index"] == expected, f"{what}: line {expected + 1} holds index {item['index']}")
                check(item["response"] is not None, f"{what}: line {expected + 1} has no response")
                rows += 1
        check(rows == n, f"{what}: {rows} lines written for {n} stored results")

    # --- limits known up front ----------------------------------------------------------------

    @staticmethod
    def rl_ideal_s(n: int) -> float:
        return n / (cfg.RL_LIMIT / cfg.RL_WINDOW_S)

    @staticmethod
    def rl_floor_s(n: int) -> float:
        """The fastest any client can finish under a moving window: full windows, then the latency."""
        return (math.ceil(n / cfg.RL_LIMIT) - 1) * cfg.RL_WINDOW_S + cfg.RL_LATENCY_MS / 1000


def _total_ms(run: Run) -> float:
    """CPU-ms per completion over every process but the fake provider."""
    return sum(v for k, v in run.cpu_ms().items() if k != "fake")


def _timeline(run: Run) -> str:
    """Where a batch's wall time went (seconds from the job's creation), for the log."""
    t = run.result.get("timeline") or {}
    return (
        f"[first start {t.get('first_start_s', 0):.2f} s, median start {t.get('median_start_s', 0):.2f} s, "
        f"last start {t.get('last_start_s', 0):.2f} s, last finish {t.get('last_finish_s', 0):.2f} s, "
        f"job finished {t.get('job_finished_s', 0):.2f} s; "
        f"per request: provider {t.get('provider_latency_ms', 0):.0f} ms"
        f" + worker {t.get('worker_overhead_ms', 0):.1f} ms]"
    )
