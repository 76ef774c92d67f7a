"""``daal-ray score``: select from a pool of precomputed-feature parquet shards, any size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from daal_ray.acquisition import build_strategy
from daal_ray.atomic_io import atomic_write
from daal_ray.config import AcquisitionConfig, ScaleConfig
from daal_ray.errors import ConfigError, DataError
from daal_ray.runtime import fit_concurrency, init_ray, quiet_ray_data
from daal_ray.scoring import select_from_features

__all__ = ["add_score_arguments", "read_id_file", "score_from_args"]


def read_id_file(path: str) -> np.ndarray:
    """Sample ids from ``.npy``, ``.parquet`` (a ``sample_id`` column) or text (one per line).

    Raises:
        DataError: the file is missing or holds something else than integer ids.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"labeled-ids file {p} does not exist")
    try:
        if p.suffix == ".npy":
            ids = np.load(p, allow_pickle=False)
        elif p.suffix == ".parquet":
            table = pq.read_table(p)
            if "sample_id" not in table.column_names:
                raise DataError(f"{p} needs a sample_id column; it has {', '.join(table.column_names)}")
            ids = table.column("sample_id").to_numpy()
        else:
            ids = np.loadtxt(p, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as exc:
        raise DataError(f"{p} does not hold integer sample ids ({exc})") from exc
    if not np.issubdtype(np.asarray(ids).dtype, np.integer):
        raise DataError(f"{p} holds {np.asarray(ids).dtype} values; sample ids are integers")
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def add_score_arguments(p: Any) -> None:
    """Arguments of ``daal-ray score``."""
    p.add_argument("--features", required=True, metavar="DIR",
                   help="parquet shards (a folder or file): sample_id, features, optional label and probs")
    p.add_argument("--strategy", default="daal", help="registered strategy (default: daal); see `daal-ray strategies`")
    p.add_argument("--params", default="{}", metavar="JSON", help="the strategy's settings as JSON, e.g. '{\"epochs\": 5}'")
    p.add_argument("--k", type=int, required=True, help="how many samples to select")
    p.add_argument("--labeled-ids", default=None, metavar="FILE",
                   help="labeled sample ids (.npy, .parquet with sample_id, or one per line); "
                        "default: the rows whose label is not null")
    p.add_argument("--out", required=True, metavar="FILE", help="selection output: .parquet or .csv (rank, sample_id, score)")
    p.add_argument("--seed", type=int, default=0, help="seeds the strategy's fit and its sample (default: 0)")
    p.add_argument("--cycle", type=int, default=0, help="cycle number mixed into the seeds (default: 0)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per Ray Data batch (default: 512)")
    p.add_argument("--inference-actors", type=int, default=None, help="scoring actors (default: 1)")
    p.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs (torch threads) per scoring actor")
    p.add_argument("--use-gpu", action="store_true", help="fit on a GPU and reserve GPUs for the scoring actors")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per scoring actor with --use-gpu")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a locally started Ray")


def score_from_args(args: Any) -> int:
    """``daal-ray score``: select from precomputed-feature shards and write the selection."""
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise ConfigError(f"--params must be a JSON object, got {args.params!r} ({exc})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object, got {args.params!r}")
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"--out must end in .parquet or .csv, got {out}")
    given = {"inference_batch_size": args.batch_size, "inference_actors": args.inference_actors,
             "cpus_per_inference_actor": args.cpus_per_actor, "gpus_per_inference_actor": args.gpus_per_actor}
    scale = ScaleConfig.from_dict({"use_gpu": bool(args.use_gpu), **{k: v for k, v in given.items() if v is not None}})
    strategy = build_strategy(AcquisitionConfig(strategy=args.strategy, params=params), seed=args.seed, cycle=args.cycle)
    labeled = read_id_file(args.labeled_ids) if args.labeled_ids else None
    init_ray(num_cpus=args.num_cpus, return_memory=True)
    fit_concurrency(scale.replace(num_workers=0), 1, what="daal-ray score")  # no Train workers, only Ray Data
    quiet_ray_data()
    device = torch.device("cuda" if args.use_gpu and torch.cuda.is_available() else "cpu")
    result = select_from_features(args.features, strategy, args.k, labeled, scale, device=device)
    table = pa.table({"rank": np.arange(result.ids.size, dtype=np.int64), "sample_id": result.ids,
                      "score": result.scores})
    with atomic_write(out) as fh:
        if out.suffix == ".parquet":
            pq.write_table(table, fh)
        else:
            pacsv.write_csv(table, fh)
    print(f"selected {result.ids.size} samples with {args.strategy}: {out}")
    return 0
