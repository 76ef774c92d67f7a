"""Helpers shared by the report tests and the ``report`` verb's: a results table made by
hand (two strategies, two seeds, three labeled fractions) whose answers are computed by
hand in tests/test_report.py."""

from __future__ import annotations

import json

FRACTIONS = (0.1, 0.2, 0.4)
# strategy -> seed -> values at FRACTIONS
VALUES = {
    "random": {0: (0.50, 0.70, 0.90), 1: (0.60, 0.70, 0.80)},
    "entropy": {0: (0.50, 0.80, 0.95), 1: (0.60, 0.75, 0.85)},
}
COSINE = {"random": (0.2, 0.4), "entropy": (0.8, 0.6)}  # per selecting cycle, same for both seeds
CLASS_ENTROPY = {"random": (0.9, 0.9), "entropy": (0.5, 0.5)}


def results_rows(budget=50, dataset="digits", values=VALUES, params=None, fractions=FRACTIONS, protocol=None,
                 pool=1000):
    """One results row per (strategy, seed, cycle) of ``values``, at ``fractions`` of a pool
    of ``pool`` samples. A run with a value at every fraction ends with the loop's final
    row (it selects nothing); a shorter one stops mid-protocol, as a run still going does.
    ``protocol`` (initial/step/final fraction, budget) goes into each row's config."""
    rows = []
    for strategy, seeds in values.items():
        for seed, vals in seeds.items():
            for cycle, (f, v) in enumerate(zip(fractions, vals)):
                last = cycle == len(fractions) - 1
                config = {"acquisition": {"strategy": strategy, "params": (params or {}).get(strategy, {})},
                          **(protocol or {})}
                rows.append({
                    "experiment": f"{dataset}-{strategy}-seed{seed}-budget{budget}", "strategy": strategy,
                    "dataset": dataset, "seed": seed, "budget": budget, "cycle": cycle,
                    "num_labeled": int(round(f * pool)), "labeled_fraction": f, "metric": "accuracy", "value": v,
                    "num_selected": 0 if last else budget,
                    "batch_cosine": None if last else COSINE.get(strategy, (0.5,) * len(fractions))[cycle],
                    "batch_class_entropy": None if last else CLASS_ENTROPY.get(strategy,
                                                                                (0.7,) * len(fractions))[cycle],
                    "config": json.dumps(config),
                })
    return rows
