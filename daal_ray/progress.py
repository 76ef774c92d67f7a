"""What a person watching a job sees: one line per finished cycle and a bar with the time left.

The job process watches the experiments' results files (every cycle's row is written
there, durably, before its batch is proposed), so the same watcher serves one worker group
running experiments one after another, Tune trials running them in parallel, and a resumed
job (cycles already recorded count as done and are not printed again). It never talks to
the workers: a slow or failed cycle cannot stall it, and it cannot stall a cycle.

    with CycleProgress(configs, run_root):
        run_experiments(configs, run_root)
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from tqdm import tqdm

from daal_ray.atomic_io import file_generation
from daal_ray.config import ExperimentConfig
from daal_ray.data import open_dataset
from daal_ray.results import RESULTS_FILE, read_results

POLL_S = 1.0


def format_cycle(row: dict[str, Any], rounds: int) -> str:
    """One finished cycle in one line: experiment, cycle, labeled count and fraction, the
    metric, and where the cycle's time went."""
    fit = row.get("acq_fit_s") or 0.0
    select = sum(row.get(c) or 0.0 for c in ("features_s", "scoring_s", "selection_s"))
    steps = f"train {row.get('train_s') or 0.0:.1f}s"
    if fit:
        steps += f", strategy fit {fit:.1f}s"
    if row.get("num_selected"):
        steps += f", select {select:.1f}s"
    return (f"{row['experiment']}  cycle {row['cycle']}/{rounds}  {row['num_labeled']} labeled "
            f"({100 * row['labeled_fraction']:.1f}%)  {row['metric']} {row['value']:.4f}  "
            f"[{row.get('cycle_s') or 0.0:.1f}s: {steps}]")


@dataclass
class _Watched:
    name: str
    path: Path
    rounds: int
    seen: set
    generation: Optional[tuple[int, int, int]] = None


class CycleProgress:
    """Watches ``run_root/<experiment>/results.parquet`` of each config from a thread.

    Args:
        configs: the job's experiments (their schedules give the number of cycles).
        run_root: the job's run directory.
        stream: where lines and the bar go (default: stderr, next to the logs).
        bar: draw the progress bar (default: when ``stream`` is a terminal; the lines are
            printed either way, so a log collector reads them without the bar's redraws).
        poll_s: seconds between looks at the results files.
    """

    def __init__(self, configs: Sequence[ExperimentConfig], run_root: str | Path, *, stream: Optional[TextIO] = None,
                 bar: Optional[bool] = None, poll_s: float = POLL_S) -> None:
        root = Path(run_root)
        self.stream = stream or sys.stderr
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self.poll_s = poll_s
        self.watched = []
        for cfg in configs:
            rounds = cfg.schedule(len(open_dataset(cfg.data).sample_ids("train")))[2]
            self.watched.append(_Watched(cfg.name, root / cfg.name / RESULTS_FILE, rounds, set()))
        self.total = sum(w.rounds + 1 for w in self.watched)
        self.done_before = 0
        for w in self.watched:  # a resumed job: what is recorded is done, and not printed again
            w.seen = set(read_results(w.path)["cycle"].to_pylist()) if w.path.exists() else set()
            w.generation = file_generation(w.path)
            self.done_before += len(w.seen)
        self.bar = tqdm(total=self.total, initial=self.done_before, desc="cycles", unit="cycle", file=self.stream,
                        dynamic_ncols=True, disable=not bar, leave=False,
                        bar_format="{desc}: {n}/{total} |{bar}| {elapsed} elapsed, {remaining} left")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def done(self) -> int:
        """Cycles recorded so far, over all the experiments."""
        return sum(len(w.seen) for w in self.watched)

    def poll(self) -> list[str]:
        """Look once at every results file; print and return the lines of new cycles."""
        lines = []
        with self._lock:
            for w in self.watched:
                generation = file_generation(w.path)
                if generation is None or generation == w.generation:
                    continue
                w.generation = generation
                try:
                    rows = read_results(w.path).to_pylist()
                except (OSError, ValueError):  # replaced while being read: the next look reads it again
                    w.generation = None
                    continue
                for row in sorted(rows, key=lambda r: r["cycle"]):
                    if row["cycle"] in w.seen:
                        continue
                    w.seen.add(row["cycle"])
                    lines.append(format_cycle(row, w.rounds))
                    self.bar.update(1)
            for line in lines:
                if self.bar.disable:
                    print(line, file=self.stream, flush=True)
                else:
                    self.bar.write(line, file=self.stream)
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self) -> "CycleProgress":
        self._thread = threading.Thread(target=self._run, name="cycle-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        self.bar.close()
