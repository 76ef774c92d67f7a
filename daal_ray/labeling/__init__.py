"""Labeling with people: the active-learning cycle with a person as the oracle.

    daal-ray init runs/pets --images photos/ --classes cat,dog,bird   # class subfolders = labeled seeds
    daal-ray select runs/pets            # train on the labels, export batches/batch_001.{csv,parquet,json}
    daal-ray import runs/pets labels.csv # sample_id,label (class names) or a Label Studio JSON export
    daal-ray status runs/pets            # cycles, labels, budget, pending batch, held-out accuracy

The pieces are the experiment loop's: the PoolState (propose before labels are asked
for, commit idempotently, atomic saves), the run-directory lock, the cycle's training
and selection steps (:func:`daal_ray.cycle.train_cycle_model`,
:func:`daal_ray.cycle.select_batch`) on a Ray Train worker group, and every registered
strategy. What differs is that a person answers between ``propose`` and ``commit``,
possibly over several imports (``--partial``).
"""

from daal_ray.labeling.batches import BatchExport, select_next_batch
from daal_ray.labeling.labels import ImportSummary, import_labels
from daal_ray.labeling.project import LabelingError, ProblemsError, ProjectConfig, init_project, open_project
from daal_ray.labeling.status import ProjectStatus, project_status

__all__ = ["BatchExport", "ImportSummary", "LabelingError", "ProblemsError", "ProjectConfig", "ProjectStatus",
           "import_labels", "init_project", "open_project", "project_status", "select_next_batch"]
