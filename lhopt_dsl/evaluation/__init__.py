"""Judging policies against baselines: Table 1 metrics, paired comparisons and intervals
(:mod:`.metrics`), and the Table 1 row of a task (:mod:`.rows`).

Nothing is imported here, so ``import lhopt_dsl`` (which exports the rows) does not load the metrics.
"""
