"""``daal-ray status``: where a labeling project stands (reads files only, takes no lock).

The metric is the accuracy of the last trained task model on the **held-out test set**:
``floor(test_fraction * n)`` of each class's ``n`` images labeled at init, never trained
on and never selected. A project without one (no labels at init, or ``test_fraction`` 0)
reports no accuracy, and says so, rather than a training accuracy that would flatter the
model; the last training loss is shown instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from daal_ray.labeling.batches import budget_used
from daal_ray.labeling.project import ProjectConfig, open_project
from daal_ray.pool import load_last_good
from daal_ray.rundir import STATE_FILE
from daal_ray.training import load_checkpoint_meta


@dataclass
class ProjectStatus:
    """A snapshot of a project; :meth:`lines` formats it for the terminal."""

    project_dir: Path
    config: ProjectConfig
    num_pool: int
    num_labeled: int
    num_test: int
    cycles: list[dict[str, Any]]
    budget_used: int
    pending_cycle: Optional[int] = None
    pending_size: int = 0
    pending_labeled: int = 0
    model: Optional[dict[str, Any]] = None
    per_class: dict[str, int] = field(default_factory=dict)

    @property
    def budget_left(self) -> Optional[int]:
        return None if not self.config.total_budget else max(0, self.config.total_budget - self.budget_used)

    def lines(self) -> list[str]:
        c = self.config
        out = [f"project:  {c.name} ({self.project_dir})",
               f"classes:  {', '.join(f'{k} ({v})' for k, v in self.per_class.items())}  [labeled per class]",
               f"pool:     {self.num_pool} images, {self.num_labeled} labeled "
               f"({100 * self.num_labeled / max(self.num_pool, 1):.1f}%), {self.num_pool - self.num_labeled} unlabeled; "
               f"held-out test set: {self.num_test} images"]
        hist = ", ".join(f"{r['cycle']}: +{r['num_added']} ({r['strategy'] or '?'})" for r in self.cycles)
        out.append(f"cycles:   {len(self.cycles)} committed" + (f" [{hist}]" if hist else ""))
        total = f"{c.total_budget} total, {self.budget_left} left" if c.total_budget else "no total budget set"
        out.append(f"budget:   {self.budget_used} labels asked of people ({total}); {c.budget} per cycle")
        if self.pending_cycle is None:
            out.append("pending:  none (run `daal-ray select` for the next batch)")
        else:
            out.append(f"pending:  batch {self.pending_cycle}: {self.pending_size} ids, {self.pending_labeled} labeled "
                       f"so far, {self.pending_size - self.pending_labeled} to go")
        m = self.model
        if m is None:
            out.append("model:    none trained yet")
        else:
            head = f"model:    cycle {m['cycle']}, trained on {m['num_labeled']} labels"
            value = m.get("value")
            if self.num_test and value is not None and math.isfinite(value):
                out.append(f"{head}: held-out test accuracy {value:.4f} ({self.num_test} images)")
            else:
                out.append(f"{head}: no held-out test set, so no accuracy (test_fraction {c.test_fraction} of each "
                           f"class's labeled images at init, rounded down, was none); last training loss "
                           f"{m.get('last_loss', float('nan')):.4f}")
        return out


def project_status(project_dir: str | Path) -> ProjectStatus:
    """Read a project's state and its newest checkpoint."""
    project = open_project(project_dir)
    state = load_last_good(project.dir / STATE_FILE, run_id=project.config.project_id)
    labeled = state.labeled_cycle >= 0
    counts = np.bincount(state.label[labeled], minlength=len(project.classes)) if labeled.any() \
        else np.zeros(len(project.classes), dtype=np.int64)
    model = None
    for cycle in range(state.next_cycle - 1, -1, -1):
        meta = load_checkpoint_meta(project.checkpoint_dir(cycle))
        if meta is not None:
            model = meta
            break
    pending_labeled = int((state.labeled_cycle == state.pending_cycle).sum()) if state.pending_cycle is not None else 0
    return ProjectStatus(
        project_dir=project.dir, config=project.config, num_pool=len(state), num_labeled=int(labeled.sum()),
        num_test=int(project.dataset.sample_ids("test").size), cycles=[r.to_dict() for r in state.history],
        budget_used=budget_used(state), pending_cycle=state.pending_cycle,
        pending_size=int(state.pending.sum()) + pending_labeled, pending_labeled=pending_labeled, model=model,
        per_class={name: int(n) for name, n in zip(project.classes, counts)},
    )
