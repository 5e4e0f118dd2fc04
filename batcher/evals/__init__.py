"""Evaluation runs: suites of prompts scored across models, on the same queue as every job.

``batcher eval run SUITE.yaml`` runs a suite (items x models) as one batcher job, scores the
answers and stores everything in Postgres; schedules fire runs from Celery beat; reports and
comparisons show scores, latency, cost and regressions against the previous run.

This package is imported by the schema (``batcher._db.models``) and by the Celery app, so this
module stays free of heavy imports: use the submodules (``batcher.evals.suite``, ``.runner``,
``.scorers``, ``.schedules``, ``.report``, ``.compare``).
"""
