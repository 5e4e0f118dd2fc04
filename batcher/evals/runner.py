"""Running a suite: items x models as one batcher job, then judges, scores and a comparison.

A run is a small state machine in Postgres (``pending`` -> ``answering`` -> [``judging``] ->
``completed``), moved on by ``advance``: by ``batcher eval run`` in the foreground, and by the
beat-driven ``batcher.eval_tick`` for scheduled runs (and for any run whose CLI went away).
``advance`` is idempotent and serialised per run by a Postgres advisory lock, so any number of
processes may call it.

Each step asks Postgres what is already known about every request key (the requests'
``custom_id``): answered by one of the run's jobs, failed for good, still in flight, or (with
``cache``) answered by any earlier run. Only keys with no answer and nothing in flight are
submitted, so an interrupted run resumes without paying twice for what was answered, and an
unchanged suite with the cache on costs nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Connection, Engine

from batcher._client import Client
from batcher._exceptions import BatcherError, WaitTimeoutError
from batcher._scheduling import DEFAULT_PRIORITY
from batcher._states import JobState
from batcher._submit import RequestSpec
from batcher.evals import store
from batcher.evals.errors import EvalError, RunNotFoundError, ScorerError
from batcher.evals.judge import judge_key, judge_messages, parse_verdict
from batcher.evals.scorers import Score, build_scorers, score_answer
from batcher.evals.settings import EvalSettings
from batcher.evals.states import RunState, Stage, Trigger
from batcher.evals.store import Outcome
from batcher.evals.suite import Item, LlmJudgeSpec, Suite, SuiteSpec, spec_from_config

log = logging.getLogger("batcher.evals")

MAX_JOBS_PER_STAGE = 3
"""Keys still unanswered after this many jobs (each cancelled or expired) end as errors."""
WAIT_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class _Request:
    """A request to make for a run: an answer, or a judge verdict."""

    key: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    where: str


def create_run(
    conn: Connection,
    suite: Suite,
    *,
    trigger: Trigger,
    schedule_id: uuid.UUID | None = None,
    scheduled_for: datetime | None = None,
) -> uuid.UUID | None:
    """Store a run with its items and planned requests, in the caller's transaction.

    ``None`` when the schedule tick was claimed already (another beat got there first).
    """
    run_id = uuid.uuid4()
    inserted = store.insert_run(
        conn,
        run_id=run_id,
        suite_name=suite.name,
        suite_path=str(suite.path) if suite.path else None,
        fingerprint=suite.fingerprint(),
        config=suite.config(),
        trigger=trigger.value,
        item_count=len(suite.items),
        schedule_id=schedule_id,
        scheduled_for=scheduled_for,
    )
    if not inserted:
        return None
    store.insert_items(conn, run_id, suite.items)
    store.insert_planned(conn, run_id, suite.plan())
    return run_id


class EvalRunner:
    """Starts runs and moves them on. One per process is enough; it holds no state of its own."""

    def __init__(self, client: Client, settings: EvalSettings | None = None) -> None:
        engine = getattr(client, "engine", None)  # an HTTP client (BATCHER_API_URL) has none
        if engine is None or engine.dialect.name != "postgresql":
            raise EvalError(
                "evaluation runs keep their history in Postgres and read it directly: point BATCHER_DATABASE_URL "
                "at the cluster's PostgreSQL (not embedded mode, not only BATCHER_API_URL)"
            )
        self.client = client
        self.settings = settings or EvalSettings()

    @property
    def engine(self) -> Engine:
        return self.client.engine

    # --- starting ------------------------------------------------------------------------------

    def start(self, suite: Suite, *, resume: bool = True) -> tuple[uuid.UUID, bool]:
        """A new run of ``suite`` (or, with ``resume``, its unfinished run): ``(run_id, resumed)``.

        Checks what submission would refuse (unknown model, missing API key, too many prompts)
        before storing anything.
        """
        self.check_submittable(suite)
        with self.engine.begin() as conn:
            if resume:
                existing = store.resumable_run(conn, suite.name, suite.fingerprint())
                if existing is not None:
                    return existing, True
            run_id = create_run(conn, suite, trigger=Trigger.MANUAL)
        assert run_id is not None
        return run_id, False

    def check_submittable(self, suite: Suite) -> None:
        from batcher._submit import _Validator
        from batcher._validation import split_call_kwargs

        total = len(suite.items) * len(suite.spec.models)
        limit = self.client.settings.max_prompts_per_job
        if total > limit:
            raise EvalError(
                f"suite {suite.name!r} has {total:,} requests (items x models), over BATCHER_MAX_PROMPTS_PER_JOB "
                f"({limit:,}); split the dataset or raise the limit"
            )
        validator = _Validator(self.client.settings, split_call_kwargs({}))
        sample = suite.items[0].messages
        for i, model in enumerate(suite.spec.models):
            spec = RequestSpec(model.model, sample, suite.spec.params_for(model) or None, where=f"models[{i}]")
            validator.check(0, spec)
        for judge in suite.spec.judges:
            validator.check(0, RequestSpec(judge.model, sample, judge.params or None, where=f"scorer {judge.label}"))

    # --- moving on -----------------------------------------------------------------------------

    def advance(self, run_id: uuid.UUID) -> RunState | None:
        """Take the run as far as it can go now. ``None`` if another process is moving it on."""
        with self._locked(run_id) as locked:
            if not locked:
                return None
            return self._advance(run_id)

    @contextmanager
    def _locked(self, run_id: uuid.UUID) -> Iterator[bool]:
        conn = self.engine.connect()
        locked = False
        try:
            locked = store.try_lock_run(conn, run_id)
            conn.commit()
            yield locked
        finally:
            if locked:
                try:
                    store.unlock_run(conn, run_id)
                    conn.commit()
                except Exception:  # a broken connection: drop it, and the lock with it
                    conn.invalidate()
            conn.close()

    def _advance(self, run_id: uuid.UUID) -> RunState:
        with self.engine.connect() as conn:
            run = store.get_run(conn, run_id)
        if run is None:
            raise RunNotFoundError(f"no evaluation run {run_id}")
        state = RunState(run["state"])
        if state.is_final:
            return state
        try:
            spec = spec_from_config(run["config"])
            if run["submitting_at"] is not None:
                with self.engine.begin() as conn:
                    store.adopt_orphan_jobs(conn, run_id, run["submitting_at"])
            with self.engine.connect() as conn:
                items = store.items_of(conn, run_id)
            if state in (RunState.PENDING, RunState.ANSWERING) and not self._answers(run_id, spec, items):
                return RunState.ANSWERING
            verdicts: dict[str, Outcome] = {}
            if spec.judges:
                with self.engine.begin() as conn:
                    store.set_state(conn, run_id, RunState.JUDGING)
                done, verdicts = self._judgements(run_id, spec, items)
                if not done:
                    return RunState.JUDGING
            self._finish(run, spec, items, verdicts)
            return RunState.COMPLETED
        except BatcherError as exc:
            # Permanent: the suite no longer scores here, a model lost its key, ... Say so on the run.
            log.warning("evaluation run %s failed: %s", run_id, exc)
            with self.engine.begin() as conn:
                store.fail_run(conn, run_id, str(exc))
            return RunState.FAILED

    def _answers(self, run_id: uuid.UUID, spec: SuiteSpec, items: Sequence[Item]) -> bool:
        """Collect the models' answers; submit what nobody answered. True when every one is settled."""
        with self.engine.connect() as conn:
            rows = [r for r in store.results_of(conn, run_id) if r["output"] is None and r["error"] is None]
        by_idx = {item.idx: item for item in items}
        needs: dict[str, _Request] = {}
        for row in rows:
            model = spec.models[row["model_idx"]]
            item = by_idx[row["item_idx"]]
            needs.setdefault(
                row["key"],
                _Request(
                    row["key"], model.model, item.messages, spec.params_for(model), f"{model.label} item {item.item_id}"
                ),
            )
        done, outcomes = self._settle(run_id, Stage.ANSWERS, needs, cache=spec.cache, priority=spec.priority)
        answered = [(r["model_idx"], r["item_idx"], outcomes[r["key"]]) for r in rows if r["key"] in outcomes]
        with self.engine.begin() as conn:
            store.record_answers(conn, run_id, answered)
            store.remember(conn, [(needs[o.key].model, o) for _, _, o in answered])
        return done

    def _judgements(self, run_id: uuid.UUID, spec: SuiteSpec, items: Sequence[Item]) -> tuple[bool, dict[str, Outcome]]:
        with self.engine.connect() as conn:
            rows = [r for r in store.results_of(conn, run_id) if r["output"] is not None]
        by_idx = {item.idx: item for item in items}
        needs: dict[str, _Request] = {}
        for row in rows:
            item = by_idx[row["item_idx"]]
            for judge in spec.judges:
                messages = judge_messages(judge, item, row["output"])
                key = judge_key(judge, messages)
                where = f"judge {judge.label} of {row['model']} item {item.item_id}"
                needs.setdefault(key, _Request(key, judge.model, messages, judge.params, where))
        done, outcomes = self._settle(run_id, Stage.JUDGE, needs, cache=spec.cache, priority=spec.priority)
        if done:
            with self.engine.begin() as conn:
                store.remember(conn, [(needs[k].model, o) for k, o in outcomes.items()])
        return done, outcomes

    def _settle(
        self,
        run_id: uuid.UUID,
        stage: Stage,
        needs: dict[str, _Request],
        *,
        cache: bool,
        priority: int = DEFAULT_PRIORITY,
    ) -> tuple[bool, dict[str, Outcome]]:
        """What is known of each needed key, and whether all are settled. Submits the unknown ones
        once no job of the stage is still running."""
        if not needs:
            return True, {}
        with self.engine.connect() as conn:
            known = store.request_outcomes(conn, run_id, stage.value)
            jobs = store.run_jobs(conn, run_id, stage.value)
            settled = {k: o for k, o in known.items() if k in needs and o.settled}
            unknown = [k for k in needs if k not in settled]
            if cache and unknown:
                settled.update(store.cached_outcomes(conn, unknown))
        remaining = [k for k in needs if k not in settled]
        if not remaining:
            return True, settled
        if any(not JobState(state).is_final for _, state in jobs):
            return False, settled
        if len(jobs) >= MAX_JOBS_PER_STAGE:
            for key in remaining:
                settled[key] = Outcome(
                    key,
                    error_type="RequestCancelledError",
                    error=f"not answered after {len(jobs)} submissions (each cancelled or expired)",
                )
            return True, settled
        self._submit(run_id, stage, [needs[k] for k in remaining], priority)
        return False, settled

    def _submit(
        self, run_id: uuid.UUID, stage: Stage, requests: Sequence[_Request], priority: int = DEFAULT_PRIORITY
    ) -> None:
        specs = [RequestSpec(r.model, r.messages, r.params or None, custom_id=r.key, where=r.where) for r in requests]
        with self.engine.begin() as conn:
            store.set_submitting(conn, run_id, True)
        job = self.client.submit_requests(
            specs, metadata={"eval_run": str(run_id), "eval_stage": stage.value}, priority=priority
        )
        with self.engine.begin() as conn:
            store.link_job(conn, run_id, job.id, stage.value)
            store.set_submitting(conn, run_id, False)
            if stage is Stage.ANSWERS:
                store.set_state(conn, run_id, RunState.ANSWERING)
        log.info("evaluation run %s: submitted %d %s requests as job %s", run_id, len(specs), stage.value, job.id)

    # --- finishing -----------------------------------------------------------------------------

    def _finish(
        self, run: dict[str, Any], spec: SuiteSpec, items: Sequence[Item], verdicts: dict[str, Outcome]
    ) -> None:
        from batcher.evals.compare import compare_runs
        from batcher.evals.summary import summarise

        run_id = run["id"]
        try:
            scorers = build_scorers(spec)
        except ValueError as exc:
            raise ScorerError(f"a scorer cannot be built where this run is scored: {exc}") from None
        by_idx = {item.idx: item for item in items}
        with self.engine.connect() as conn:
            rows = store.results_of(conn, run_id)
        scored = []
        judge_usage: dict[str, dict[str, Outcome]] = {judge.label: {} for judge in spec.judges}
        for row in rows:
            item = by_idx[row["item_idx"]]
            judged: dict[str, Score] = {}
            if row["output"] is not None:
                for judge in spec.judges:
                    key = judge_key(judge, judge_messages(judge, item, row["output"]))
                    outcome = verdicts.get(key)
                    judged[judge.label] = _verdict(judge, outcome)
                    if outcome is not None:
                        judge_usage[judge.label][key] = outcome
            result = score_answer(spec, scorers, item, row["output"], row["error"], judged)
            row.update(scores=result.scores_json(), score=result.score, passed=result.passed)
            scored.append((row["model_idx"], row["item_idx"], row["scores"], result.score, result.passed))
        summary = summarise(spec, rows, judge_usage, self.settings.prices)
        with self.engine.connect() as conn:
            previous = store.previous_completed_run(conn, run["suite_name"], run_id)
            previous_rows = store.results_of(conn, previous["id"]) if previous else []
        comparison = compare_runs(previous, previous_rows, run, rows, spec.regression.threshold) if previous else None
        regressed = bool(comparison and comparison["regressed"])
        with self.engine.begin() as conn:
            store.record_scores(conn, run_id, scored)
            completed = store.complete_run(conn, run_id, summary=summary, comparison=comparison, regressed=regressed)
        if completed and regressed and comparison is not None:
            url = spec.regression.webhook or self.settings.webhook_url
            if url:
                comparison["webhook"] = self._notify(url, run, comparison)
                with self.engine.begin() as conn:
                    store.set_comparison(conn, run_id, comparison)

    def _notify(self, url: str, run: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
        """POST the regression as JSON. At most once per run; a failure is recorded, never raised."""
        from batcher.evals.compare import webhook_payload

        payload = webhook_payload(run, comparison)
        try:
            response = httpx.post(url, json=payload, timeout=self.settings.webhook_timeout_s)
        except httpx.HTTPError as exc:
            log.warning("regression webhook failed: %s", type(exc).__name__)
            return {"error": type(exc).__name__}
        if response.is_error:
            log.warning("regression webhook answered %s", response.status_code)
        return {"status_code": response.status_code}

    # --- the foreground loop -------------------------------------------------------------------

    def run(self, run_id: uuid.UUID, *, progress: bool = False, timeout: float | None = None) -> RunState:
        """Move the run on until it is final, waiting for its jobs in between."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.advance(run_id)
            if state is not None and state.is_final:
                return state
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(f"evaluation run {run_id} is still {state or 'running'} after {timeout} s")
            stage = Stage.JUDGE if state is RunState.JUDGING else Stage.ANSWERS
            with self.engine.connect() as conn:
                active = [j for j, s in store.run_jobs(conn, run_id, stage.value) if not JobState(s).is_final]
            if not active:
                time.sleep(WAIT_POLL_S if state is None else 0.05)
                continue
            for job_id in active:
                self.client.job(job_id).wait(timeout=remaining, progress=progress)


def _verdict(judge: LlmJudgeSpec, outcome: Outcome | None) -> Score:
    if outcome is None:
        return Score(0.0, False, "no verdict from the judge")
    if outcome.output is None:
        return Score(0.0, False, f"judge request failed: {outcome.error_type}: {outcome.error}")
    return parse_verdict(judge, outcome.output)
