"""Labeling with people: the active-learning cycle with a person as the oracle.

    daal-ray init runs/pets --images photos/ --classes cat,dog,bird   # class subfolders = labeled seeds
    daal-ray select runs/pets            # train on the labels, export batches/batch_001.{csv,parquet,json}
    daal-ray import runs/pets labels.csv # sample_id,label (class names) or a Label Studio JSON export
    daal-ray status runs/pets            # cycles, labels, budget, pending batch, held-out accuracy

The pieces are the experiment loop's: the PoolState (propose before labels are asked
for, commit idempotently, atomic saves), the run-directory lock, the cycle's training
and selection steps (:func:`daal_ray.driver.train_cycle_model`,
:func:`daal_ray.driver.select_batch`) on a Ray Train worker group, and every registered
strategy. What differs is that a person answers between ``propose`` and ``commit``,
possibly over several imports (``--partial``).
"""

import importlib
from typing import Any

# Public names and their modules; imported on first use, so `daal-ray --help` stays light.
_EXPORTS = {
    "BatchExport": "batches",
    "select_next_batch": "batches",
    "ImportSummary": "labels",
    "import_labels": "labels",
    "LabelingError": "project",
    "ProblemsError": "project",
    "ProjectConfig": "project",
    "init_project": "project",
    "open_project": "project",
    "ProjectStatus": "status",
    "project_status": "status",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
