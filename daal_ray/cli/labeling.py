"""The labeling verbs of the ``daal-ray`` command line: init, select, import, status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from daal_ray.errors import DaalRayError
from daal_ray.labeling import studio
from daal_ray.labeling.batches import select_next_batch
from daal_ray.labeling.labels import CONSENSUS_RULES, import_labels
from daal_ray.labeling.project import init_project, read_classes
from daal_ray.labeling.status import project_status
from daal_ray.runtime import init_ray

VERBS = ("init", "select", "import", "status")


def add_labeling_parsers(sub: Any) -> None:
    """Add ``init``, ``select``, ``import`` and ``status`` to the ``daal-ray`` subparsers."""
    init = sub.add_parser(
        "init", help="create a labeling project from an image folder or a manifest",
        description="Create PROJECT_DIR for labeling with people. --images DIR: class subfolders hold labeled images, "
                    "files at the top level (or in unlabeled/) are unlabeled. --manifest FILE: a .parquet or .csv "
                    "with a path column (relative to the manifest, or absolute) and an optional label column (class "
                    "names). Given labels are committed as cycle 0, minus a held-out test set (--test-fraction).")
    init.add_argument("project_dir", metavar="PROJECT_DIR")
    src = init.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of images (class subfolders = labeled seeds)")
    src.add_argument("--manifest", metavar="FILE", help="parquet or CSV with path and optional label columns")
    init.add_argument("--classes", default=None, help="class names separated by commas, in label-index order")
    init.add_argument("--classes-file", default=None, metavar="FILE", help="class names, one per line")
    init.add_argument("--config", default=None, metavar="FILE.json",
                      help="ProjectConfig fields as JSON (train, acquisition params, scale, ...); flags override it")
    init.add_argument("--strategy", default=None, help="acquisition strategy (default: entropy); see `daal-ray strategies`")
    init.add_argument("--budget", type=int, default=None, help="images per batch (default: 20)")
    init.add_argument("--total-budget", type=int, default=None, help="images people label over all batches (0 = no limit)")
    init.add_argument("--test-fraction", type=float, default=None,
                      help="share of each class's labeled images held out to measure accuracy (default: 0.2)")
    init.add_argument("--image-size", type=int, default=None, help="side length images are resized to (default: 32)")
    init.add_argument("--model", default=None, help="task model (default: small_cnn); see `daal-ray models`")
    init.add_argument("--epochs", type=int, default=None, help="training epochs per cycle (default: 30)")
    init.add_argument("--batch-size", type=int, default=None, help="training batch size (default: 64)")
    init.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.001)")
    init.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (default: 1)")
    init.add_argument("--use-gpu", action="store_true", default=None, help="train and infer on GPUs")
    init.add_argument("--seed", type=int, default=None, help="seed of the test split, cold start and training")
    init.add_argument("--image-root-url", default=None, metavar="URL",
                      help="prefix of image URLs in Label Studio task files, e.g. '/data/local-files/?d=photos/'")

    select = sub.add_parser(
        "select", help="train on the labels so far and export the next batch to label",
        description="Train the task model on every label (Ray Train), score the unlabeled pool with the strategy, "
                    "record the top batch as pending and write batches/batch_NNN.csv, .parquet and "
                    "_label_studio.json. Refuses while a batch is pending (--reexport writes its files again).")
    select.add_argument("project_dir", metavar="PROJECT_DIR")
    select.add_argument("--strategy", default=None, help="strategy for this batch (default: the project's)")
    select.add_argument("--budget", type=int, default=None, help="images in this batch (default: the project's)")
    select.add_argument("--reexport", action="store_true",
                        help="write the files of the pending batch again (its ids still unlabeled)")
    select.add_argument("--num-workers", type=int, default=None, help="Ray Train workers for this run")
    select.add_argument("--image-root-url", default=None, metavar="URL",
                        help="prefix of image URLs in the Label Studio file (default: the project's)")
    select.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a locally started Ray")
    _add_label_studio(select, "push the batch's tasks to this Label Studio server (needs the labelstudio extra "
                              "and LABEL_STUDIO_API_KEY)")

    imp = sub.add_parser(
        "import", help="commit labels from a CSV, a Label Studio export or a Label Studio server",
        description="Check every label against the pending batch and the class list and commit the new ones. CSV: "
                    "a sample_id column and a label column (label, or Label Studio's CSV export, whose column is "
                    "named after the Choices tag: class). JSON: Label Studio's JSON or JSON-MIN export. Or pull "
                    "the annotations from a server with --label-studio. Every problem is listed by sample id and "
                    "nothing is committed while one remains. Importing the same labels twice changes nothing.")
    imp.add_argument("project_dir", metavar="PROJECT_DIR")
    imp.add_argument("file", metavar="FILE", nargs="?", default=None,
                     help="labels: .csv or .json (Label Studio's JSON or JSON-MIN export); not with --label-studio")
    imp.add_argument("--partial", action="store_true",
                     help="commit the labeled part of the batch; the rest stays pending")
    imp.add_argument("--consensus", choices=CONSENSUS_RULES, default="refuse",
                     help="several annotations of one image: refuse a disagreement (default), take the majority "
                          "(a tie is refused) or the latest annotation; each decision is recorded in "
                          "batches/batch_NNN_labels.csv")
    imp.add_argument("--label-column", default=None, metavar="NAME",
                     help="the column (CSV, JSON-MIN) or Choices tag (JSON) holding the class name (default: label, "
                          "or the Choices name in the project's label_config.xml)")
    _add_label_studio(imp, "pull the annotations from this Label Studio server instead of a file")

    status = sub.add_parser("status", help="cycles, labels, budget, the pending batch and the last accuracy")
    status.add_argument("project_dir", metavar="PROJECT_DIR")


def _add_label_studio(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--label-studio", default=None, metavar="URL", help=f"{what}, e.g. http://127.0.0.1:8080")
    parser.add_argument("--ls-project", type=int, default=None, metavar="N",
                        help="the Label Studio project's id (with --label-studio)")


def _label_studio(args: argparse.Namespace) -> bool:
    """Whether the verb talks to a Label Studio server; both flags or neither."""
    if (args.label_studio is None) != (args.ls_project is None):
        raise DaalRayError("give --label-studio URL and --ls-project N together")
    return args.label_studio is not None


def _init_settings(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise DaalRayError(f"--config {args.config} is not a readable JSON file ({exc})") from None
        if not isinstance(base, dict):
            raise DaalRayError(f"--config {args.config} must hold a JSON object of ProjectConfig fields")
    flat = {"budget": args.budget, "total_budget": args.total_budget, "test_fraction": args.test_fraction,
            "image_size": args.image_size, "seed": args.seed, "image_root_url": args.image_root_url}
    base.update({k: v for k, v in flat.items() if v is not None})
    train = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    train = {k: v for k, v in train.items() if v is not None}
    if train or "train" not in base:
        base["train"] = {"model": "small_cnn", **base.get("train", {}), **train}
    if args.strategy:
        base["acquisition"] = {"strategy": args.strategy}
    scale = {k: v for k, v in (("num_workers", args.num_workers), ("use_gpu", args.use_gpu)) if v is not None}
    base["scale"] = {"num_workers": 1, **base.get("scale", {}), **scale}
    return base


def run_labeling(args: argparse.Namespace) -> int:
    """Run one labeling verb; prints what it did."""
    if args.verb == "init":
        done = init_project(args.project_dir, classes=read_classes(args.classes, args.classes_file),
                            images=args.images, manifest=args.manifest, settings=_init_settings(args))
        print(f"project {done.project_dir}: {done.num_pool} pool images, {done.num_labeled} labeled (cycle 0), "
              f"{done.num_test} held out for testing; classes: {', '.join(done.config.classes)}")
        print(f"next: daal-ray select {done.project_dir}")
        return 0
    if args.verb == "select":
        if args.num_cpus:
            init_ray(num_cpus=args.num_cpus)
        push = _label_studio(args)
        if push:  # a bad URL, token or project number is told before a batch is recorded as pending
            studio.check_project(args.label_studio, args.ls_project)
        out = select_next_batch(args.project_dir, strategy=args.strategy, budget=args.budget, reexport=args.reexport,
                                num_workers=args.num_workers, image_root_url=args.image_root_url)
        verb = "re-exported" if out.reexported else f"selected by {out.strategy}"
        print(f"batch {out.cycle}: {out.sample_ids.size} images {verb}, pending until imported")
        for kind, path in out.files.items():
            print(f"  {kind:<12} {path}")
        if push:
            created = studio.push_batch(args.project_dir, args.label_studio, args.ls_project)
            print(f"label studio: {created} task(s) added to project {args.ls_project} at {args.label_studio}")
            print(f"next: label them, then daal-ray import {args.project_dir} --label-studio {args.label_studio} "
                  f"--ls-project {args.ls_project}")
        else:
            print(f"next: label them, then daal-ray import {args.project_dir} FILE")
        return 0
    if args.verb == "import":
        if _label_studio(args):
            if args.file is not None:
                raise DaalRayError("give a label FILE or --label-studio, not both")
            tasks = studio.pull_tasks(args.label_studio, args.ls_project)
            res = import_labels(args.project_dir, tasks=tasks, partial=args.partial, consensus=args.consensus,
                                label_column=args.label_column,
                                source=f"Label Studio project {args.ls_project} at {args.label_studio}")
        elif args.file is None:
            raise DaalRayError("give the label FILE to import, or --label-studio URL --ls-project N")
        else:
            res = import_labels(args.project_dir, args.file, partial=args.partial, consensus=args.consensus,
                                label_column=args.label_column)
        if res.resolved:
            print(f"{res.resolved} disagreement(s) resolved by --consensus {args.consensus}; decisions in "
                  f"{res.decisions_file}")
        if not res.changed:
            print(f"nothing new: {res.already} label(s) were imported already; "
                  f"{res.still_pending} id(s) pending" + (f" in batch {res.cycle}" if res.cycle is not None else ""))
        elif res.cycle_complete:
            print(f"batch {res.cycle} complete: {res.committed} new label(s) committed"
                  + (f" ({res.already} imported already)" if res.already else ""))
        else:
            print(f"batch {res.cycle}: {res.committed} new label(s) committed, {res.still_pending} still pending")
        return 0
    if args.verb == "status":
        for line in project_status(args.project_dir).lines():
            print(line)
        return 0
    raise DaalRayError(f"unknown labeling verb {args.verb!r}")
