"""Cityscapes semantic segmentation under the DAAL paper's protocol: mIoU over 19 classes.

The pool is the official train split (2,975 images), the test set the official val split
(500 images; the official test split has no public labels). 10% of the pool labeled at
random, +5% per cycle up to 40% (or ``--budget`` images per cycle: the paper's budget
study uses 30, 75 and 150), 3 seeds; the task model is a dilated residual network
(DRN-A-18) trained from scratch each cycle with Adam, lr 5e-4, 50 epochs, no data
augmentation; DAAL trains 100 epochs. Images are resized to ``--image-size`` pixels high
and twice as wide (default 256 x 512; ``--image-size 1024`` is the native resolution).
Any registered strategy runs through ``--strategy`` (``daal-ray strategies`` lists them).
Needs the official layout under ``--data-root``: ``leftImg8bit/{train,val}/<city>/`` and
``gtFine/{train,val}/<city>/`` (the ``*_gtFine_labelIds.png`` masks).

    python jobs/cityscapes.py --smoke-test                                  # quick check, tiny generated data
    python jobs/cityscapes.py --data-root DIR --strategy daal --use-gpu
    python jobs/cityscapes.py --data-root DIR --strategy random,entropy,mc_dropout,suggestive,daal --use-gpu
    python jobs/cityscapes.py --data-root DIR --strategy learning_loss,learning_loss_rss --budget 30,75,150 --use-gpu
    ray job submit --working-dir . -- python jobs/cityscapes.py --data-root DIR --run-dir SHARED/runs --strategy daal

``--smoke-test`` writes a tiny synthetic Cityscapes (``RUN_DIR/fixture``) unless
``--data-root`` is given, and runs DAAL (or ``--strategy``) for 1 seed, 2 cycles and 1
epoch with the tiny ``seg_small`` model at 32 x 64 pixels (pool inference in Ray tasks,
one worker group for the run); results go to
``RUN_DIR/results.parquet`` (default ``runs/cityscapes``). The run directory must be
visible to every node of a cluster (the checkpoints and the fixture live there).
"""

from __future__ import annotations

import sys
from pathlib import Path

from daal_ray.cli.paper_job import PaperJob
from daal_ray.data.cityscapes import write_fixture


def smoke_fixture(folder: Path) -> Path:
    """The smoke test's dataset: 2 cities x 10 train and 3 val images of 32 x 64 pixels (a pool
    of 20: 2 labeled, +1 per cycle, so 10% -> 15% is two cycles)."""
    return write_fixture(folder, per_city=10, val_per_city=3, height=32, width=64)


JOB = PaperJob(
    "cityscapes", __doc__,
    default_strategies=("random", "entropy", "margin", "coreset", "vaal", "learning_loss", "mc_dropout", "suggestive",
                        "daal", "daal_paper"),
    daal_epochs=100,
    metric="mIoU",
    # 256 x 512 pixels; pool inference and evaluation 16 images at a time.
    defaults={"image_size": 256, "inference_batch_size": 16},
    # The image VAE works on squares; 128 x 128 keeps its first linear layer small.
    strategy_defaults={"vaal": {"image_size": 128}, "vaal_rss": {"image_size": 128}},
    # The smoke test runs the pool predictor in Ray tasks: no actor pool to start on 20 images.
    smoke={"strategies": "daal", "model": "seg_small", "image_size": 32, "batch_size": 4, "concurrency": 1,
           "inference_compute": "tasks"},
    smoke_fixture=smoke_fixture,
)
build_parser, parse_args, strategy_params, main = JOB.build_parser, JOB.parse_args, JOB.strategy_params, JOB.main

if __name__ == "__main__":
    sys.exit(main())
