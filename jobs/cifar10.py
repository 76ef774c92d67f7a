"""CIFAR-10 under the DAAL paper's protocol: WRN-28-2, no augmentation, 3 seeds.

10% of the 50,000 training images labeled at random, +5% (2,500) per cycle up to 40%;
the task model is WRN-28-2 trained from scratch each cycle (SGD lr 0.1, x0.1 at epochs 80
and 120, 150 epochs, no data augmentation); DAAL also trains 150 epochs. Any registered
strategy runs through ``--strategy`` (``daal-ray strategies`` lists them); the RSS
baselines (``*_rss``) rank a random 10,000 unlabeled images as in the paper. Needs the
official python layout under ``--data-root`` (``cifar-10-batches-py/``), or
``--download`` on a machine with internet.

    python jobs/cifar10.py --data-root data --download --smoke-test     # quick check
    python jobs/cifar10.py --data-root data --strategy random,entropy,coreset,daal --use-gpu
    python jobs/cifar10.py --data-root data --strategy vaal_rss,learning_loss_rss --budget 1000 --use-gpu
    ray job submit --working-dir . -- python jobs/cifar10.py --data-root /data --run-dir /data/runs/cifar10 --use-gpu
"""

from __future__ import annotations

import sys

from daal_ray.cli.paper_job import PaperJob

JOB = PaperJob("cifar10", __doc__)
build_parser, strategy_params, main = JOB.build_parser, JOB.strategy_params, JOB.main

if __name__ == "__main__":
    sys.exit(main())
