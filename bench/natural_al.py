"""The paper's protocol on a natural-image pool, in one process per run: a fast bench for
comparing acquisition settings side by side before a full ``daal-ray run``.

Each run is one (variant, seed): the initial 10% of the pool labeled at random (the same
ids for every variant of a seed, :func:`daal_ray.cycle.initial_pool`), then per cycle the
task model trained from scratch on the labeled ids (seeded per seed and cycle exactly as
the cycle loop seeds it, so the first cycle's model is the same for every variant), its
accuracy on the test split, its features and probabilities over the pool, the strategy's
``fit`` and ``select`` on them (the same code the cycle loop runs, on an in-memory pool),
and the batch's diagnostics. No Ray: what is compared is the selection, not the
orchestration, and runs go two at a time on a 2-core machine.

Results are appended to a JSON-lines file, one line per finished run, and a run already
there is skipped, so variants can be added later and compared with the earlier ones
(``--summary`` prints the paired table: every variant against the references, per seed).

    python bench/natural_al.py --data-root data/cifar10-5k --variants random,entropy,margin,daal --seeds 5 \\
        --out bench/results/natural_a.jsonl
    python bench/natural_al.py --data-root data/cifar10-5k --set 'daal-b:daal:confidence_weight=3' --seeds 5 \\
        --out bench/results/natural_a.jsonl
    python bench/natural_al.py --summary --out bench/results/natural_a.jsonl --reference random,entropy,margin
    python bench/natural_al.py --summary --out bench/results/natural_a.jsonl --pool bench/results/natural_b.jsonl \
        --reference random,entropy,margin     # paired over the seeds of both files (two disjoint splits)
    python bench/natural_al.py --data-root data/cifar10-5k --variants random,margin,daal --probe 0,4 --seeds 5 \
        --out bench/results/natural_probe.jsonl        # one selection step from random's labeled set

``--probe C,...`` measures one step instead of the whole protocol, far cheaper: at cycle C of
random sampling's labeled set (the same for every variant of a seed) the task model is
trained once, each variant selects one batch from its output, and a model is trained on the
labeled set plus that batch. The accuracy it reaches, paired with random's batch, is the
gain of the selection at that point of the curve.

A variant is ``NAME`` (a registered strategy at its defaults) or, with ``--set``,
``NAME:STRATEGY:KEY=JSON;KEY=JSON`` (the strategy's params). The task model's recipe is
``--recipe`` (a JSON object of TrainConfig fields over the digits recipe with ``small_cnn``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy import stats

from daal_ray.acquisition import FitContext, get_strategy_class
from daal_ray.cycle import initial_pool
from daal_ray.data import open_dataset
from daal_ray.diagnostics import class_entropy, informativeness
from daal_ray.runtime import derive_seed
from daal_ray.selection import min_sq_distances
from daal_ray.settings import DataConfig, TrainConfig
from daal_ray.training import accuracy, evaluate, fit_task_model

BASE_RECIPE = {"model": "small_cnn", "epochs": 20, "batch_size": 32, "optimizer": "adam", "lr": 0.002,
               "weight_decay": 0.0005, "schedule": "cosine", "augment": "none"}


def parse_variant(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME`` or ``NAME:STRATEGY:K=JSON;K=JSON`` -> (name, strategy, params)."""
    parts = spec.split(":", 2)
    if len(parts) == 1:
        return spec, spec, {}
    name, strategy = parts[0], parts[1]
    params = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(";"):
            k, v = item.split("=", 1)
            params[k] = json.loads(v)
    return name, strategy, params


def predict(model: torch.nn.Module, ds: Any, ids: np.ndarray, step: int = 500) -> tuple[np.ndarray, np.ndarray]:
    feats, probs = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(0, ids.size, step):
            f, logits = model.forward_features(ds.images("train", ids[i:i + step]))
            feats.append(f.float().numpy())
            probs.append(torch.softmax(logits.float(), 1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def train_and_predict(ds: Any, pool: np.ndarray, labeled: np.ndarray, recipe: TrainConfig, seed: int,
                      cycle: int) -> dict[str, Any]:
    labeled = np.sort(labeled)
    model, _ = fit_task_model(ds, labeled, ds.targets("train", labeled), recipe, seed=derive_seed(seed, cycle, 7),
                              device=torch.device("cpu"))
    acc = accuracy(evaluate(model, ds, device=torch.device("cpu")))
    feats, probs = predict(model, ds, pool)
    return {"acc": acc, "features": feats, "probs": probs}


def cached_first_cycle(cache: Path, ds: Any, pool: np.ndarray, labeled: np.ndarray, recipe: TrainConfig,
                       seed: int) -> dict[str, Any]:
    """The first cycle's model output, shared by every variant of a seed (trained once;
    a lock keeps two processes from training it twice)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(str(cache) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            z = np.load(cache)
            return {"acc": float(z["acc"]), "features": z["features"], "probs": z["probs"]}
        out = train_and_predict(ds, pool, labeled, recipe, seed, 0)
        np.savez(cache, **out)
        return out


def batch_diagnostics(feats: np.ndarray, lab: np.ndarray, chosen: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> dict[str, float]:
    u = feats[chosen] / np.maximum(np.linalg.norm(feats[chosen], axis=1, keepdims=True), 1e-12)
    k = len(chosen)
    s = u.sum(0)
    cos = float((s @ s - (u * u).sum()) / (k * (k - 1)))
    dist = min_sq_distances(torch.as_tensor(feats[chosen], dtype=torch.float64),
                            torch.as_tensor(feats[lab], dtype=torch.float64)).sqrt().mean()
    return {"batch_cosine": cos, "batch_class_entropy": class_entropy(labels[chosen], num_classes),
            "batch_labeled_distance": float(dist)}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    name, strategy_name, params, seed = job["name"], job["strategy"], job["params"], job["seed"]
    ds = open_dataset(DataConfig(name=job["dataset"], root=job["data_root"]))
    recipe = TrainConfig.from_dict(job["recipe"])
    pool = np.sort(ds.sample_ids("train"))
    labels = ds.targets("train", pool)
    n = pool.size
    n_init = max(1, round(job["initial"] * n))
    k = max(1, round(job["step"] * n))
    cycles = int(round((job["final"] - job["initial"]) / job["step"]))
    labeled = np.sort(initial_pool(pool, n_init, seed))
    cls = get_strategy_class(strategy_name)
    p = cls.Params.from_dict(params, where=name)
    t_start = time.perf_counter()
    curve, diags = [], []
    out = cached_first_cycle(Path(job["cache"]), ds, pool, labeled, recipe, seed)
    for cycle in range(cycles + 1):
        if cycle > 0:
            out = train_and_predict(ds, pool, labeled, recipe, seed, cycle)
        curve.append({"cycle": cycle, "labeled": int(labeled.size), "fraction": labeled.size / n, "acc": out["acc"]})
        if cycle == cycles:
            break
        lab = np.isin(pool, labeled)
        feats, probs = out["features"], out["probs"]
        pool_out = {"sample_id": pool, "labeled": lab, "features": feats, "probs": probs}
        strat = cls(p, seed=seed, cycle=cycle)
        ctx = FitContext(features=pool_out, num_labeled=int(labeled.size), cycle=cycle, device=torch.device("cpu"),
                         labeled_ids=labeled, pool_ids=pool, labeled_labels=ds.targets("train", labeled))
        t0 = time.perf_counter()
        if strat.trains:
            strat.fit(ctx)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, _, _ = strat.select(ctx, min(k, int((~lab).sum())))
        sel_s = time.perf_counter() - t0
        chosen = np.searchsorted(pool, ids)
        assert not lab[chosen].any() and np.unique(ids).size == ids.size
        row = {"cycle": cycle, "fit_s": fit_s, "select_s": sel_s}
        unl = {key: v[~lab] for key, v in pool_out.items()}
        if strategy_name != "random" and strat.needs:
            try:
                row.update(informativeness(strat.diagnostic_score(unl), probs[~lab], labels[~lab]))
            except NotImplementedError:  # a strategy without per-sample scores (core-set)
                pass
        row.update(batch_diagnostics(feats, lab, chosen, labels, ds.num_classes))
        row["acc_pool_unlabeled"] = float((probs[~lab].argmax(1) == labels[~lab]).mean())
        diags.append(row)
        labeled = np.sort(np.concatenate([labeled, ids]))
    f = np.array([c["fraction"] for c in curve])
    a = np.array([c["acc"] for c in curve])
    aulc = float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(f)) / (f[-1] - f[0]))
    return {**{key: job[key] for key in ("key", "name", "strategy", "params", "seed", "data_root", "recipe")},
            "aulc": aulc, "final": float(a[-1]), "curve": curve, "diagnostics": diags,
            "wall_s": time.perf_counter() - t_start}


def random_trajectory(pool: np.ndarray, n_init: int, k: int, cycles: int, seed: int) -> list[np.ndarray]:
    """Random sampling's labeled set at each cycle (it needs no model: ids alone)."""
    cls = get_strategy_class("random")
    labeled = np.sort(initial_pool(pool, n_init, seed))
    out = [labeled]
    for cycle in range(cycles):
        lab = np.isin(pool, labeled)
        ids, _, _ = _random_select(cls, pool, lab, k, seed, cycle)
        labeled = np.sort(np.concatenate([labeled, ids]))
        out.append(labeled)
    return out


def _random_select(cls: Any, pool: np.ndarray, lab: np.ndarray, k: int, seed: int, cycle: int):
    strat = cls(cls.Params(), seed=seed, cycle=cycle)
    return strat.select(FitContext(features={"sample_id": pool, "labeled": lab}, num_labeled=int(lab.sum()),
                                   cycle=cycle, pool_ids=pool, labeled_ids=pool[lab]), k)


def run_probe(job: dict[str, Any]) -> dict[str, Any]:
    """One selection step of one variant from random's labeled set at cycle ``job['cycle']``."""
    torch.set_num_threads(1)
    name, strategy_name, params, seed, cycle = job["name"], job["strategy"], job["params"], job["seed"], job["cycle"]
    ds = open_dataset(DataConfig(name=job["dataset"], root=job["data_root"]))
    recipe = TrainConfig.from_dict(job["recipe"])
    pool = np.sort(ds.sample_ids("train"))
    labels = ds.targets("train", pool)
    n = pool.size
    n_init, k = max(1, round(job["initial"] * n)), max(1, round(job["step"] * n))
    labeled = random_trajectory(pool, n_init, k, cycle, seed)[cycle]
    t_start = time.perf_counter()
    cache = Path(job["cache"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(str(cache) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            z = np.load(cache)
            out = {"acc": float(z["acc"]), "features": z["features"], "probs": z["probs"]}
        else:
            out = train_and_predict(ds, pool, labeled, recipe, seed, cycle)
            np.savez(cache, **out)
    lab = np.isin(pool, labeled)
    feats, probs = out["features"], out["probs"]
    pool_out = {"sample_id": pool, "labeled": lab, "features": feats, "probs": probs}
    cls = get_strategy_class(strategy_name)
    strat = cls(cls.Params.from_dict(params, where=name), seed=seed, cycle=cycle)
    ctx = FitContext(features=pool_out, num_labeled=int(labeled.size), cycle=cycle, device=torch.device("cpu"),
                     labeled_ids=labeled, pool_ids=pool, labeled_labels=ds.targets("train", labeled))
    t0 = time.perf_counter()
    if strat.trains:
        strat.fit(ctx)
    ids, _, _ = strat.select(ctx, k)
    sel_s = time.perf_counter() - t0
    chosen = np.searchsorted(pool, ids)
    assert not lab[chosen].any() and np.unique(ids).size == ids.size
    row: dict[str, Any] = {"select_s": sel_s}
    unl = {key: v[~lab] for key, v in pool_out.items()}
    if strategy_name != "random" and strat.needs:
        try:
            row.update(informativeness(strat.diagnostic_score(unl), probs[~lab], labels[~lab]))
        except NotImplementedError:
            pass
    row.update(batch_diagnostics(feats, lab, chosen, labels, ds.num_classes))
    row["batch_model_wrong"] = float((probs[chosen].argmax(1) != labels[chosen]).mean())
    after = train_and_predict(ds, pool, np.concatenate([labeled, ids]), recipe, seed, cycle + 1)
    return {**{key: job[key] for key in ("key", "name", "strategy", "params", "seed", "data_root", "recipe", "cycle")},
            "acc_before": out["acc"], "acc_after": after["acc"], "diagnostics": [row],
            "wall_s": time.perf_counter() - t_start}


def probe_summary(rows: list[dict[str, Any]], data_root: Optional[str] = None) -> str:
    """Per probe cycle and recipe: each variant's accuracy after its step, paired with random's."""
    rows = [r for r in rows if "cycle" in r and (not data_root or r["data_root"] == data_root)]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["data_root"], recipe_key(r["recipe"]), r["cycle"], r["name"]), {})[r["seed"]] = r
    lines = []
    cols = ["auroc_wrong", "spearman_loss", "batch_cosine", "batch_class_entropy", "batch_labeled_distance",
            "batch_model_wrong", "select_s"]
    for data, rk, cycle in sorted({g[:3] for g in groups}):
        names = sorted(nm for d, k, c, nm in groups if (d, k, c) == (data, rk, cycle))
        rec = next(iter(groups[(data, rk, cycle, names[0])].values()))["recipe"]
        lines.append(f"\n## {data} recipe {rk} ({json.dumps(rec, sort_keys=True)}), probe at cycle {cycle}")
        lines.append("| variant | seeds | acc before | acc after | vs random | " + " | ".join(cols) + " |")
        lines.append("|---|---|---|---|---|" + "---|" * len(cols))
        ref = groups.get((data, rk, cycle, "random"), {})
        for nm in (["random"] if ref else []) + [x for x in names if x != "random"]:
            runs = groups[(data, rk, cycle, nm)]
            a = np.array([runs[s]["acc_after"] for s in sorted(runs)]) * 100
            b = np.array([runs[s]["acc_before"] for s in sorted(runs)]) * 100
            common = sorted(set(runs) & set(ref))
            cell = ""
            if nm != "random" and len(common) >= 2:
                d = np.array([runs[s]["acc_after"] - ref[s]["acc_after"] for s in common]) * 100
                cell = (f"{d.mean():+.2f} +- {d.std(ddof=1):.2f} ({int((d > 0).sum())}/{d.size}, "
                        f"p={stats.ttest_1samp(d, 0.0).pvalue:.3f})")
            diag = []
            for c in cols:
                v = [r["diagnostics"][0].get(c, np.nan) for r in runs.values()]
                diag.append(f"{np.nanmean(v):.3f}" if np.isfinite(v).any() else "")
            lines.append(f"| {nm} | {a.size} | {b.mean():.2f} | {a.mean():.2f} | {cell} | " + " | ".join(diag) + " |")
    return "\n".join(lines)


def recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def load(out: Path) -> list[dict[str, Any]]:
    if not out.is_file():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def summary(rows: list[dict[str, Any]], references: list[str], data_root: Optional[str] = None,
            recipe: Optional[str] = None) -> str:
    """Paired table: mean AULC (accuracy points) per variant, and per reference the paired
    mean difference +- std over the seeds both have, wins, and the two-sided paired t-test p.
    Then the diagnostics' means over every cycle's batch."""
    rows = [r for r in rows if "aulc" in r]
    if data_root:
        rows = [r for r in rows if r["data_root"] == data_root]
    if recipe:
        rows = [r for r in rows if recipe_key(r["recipe"]) == recipe]
    groups: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["data_root"], recipe_key(r["recipe"]), r["name"]), {})[r["seed"]] = r
    lines = []
    for data, rk in sorted({(d, k) for d, k, _ in groups}):
        names = [nm for d, k, nm in groups if (d, k) == (data, rk)]
        rec = next(iter(groups[(data, rk, names[0])].values()))["recipe"]
        lines.append(f"\n## {data}  recipe {rk}: {json.dumps(rec, sort_keys=True)}")
        refs = [x for x in references if x in names]
        lines.append("| variant | seeds | AULC | " + " | ".join(f"vs {x}" for x in refs) + " |")
        lines.append("|---|---|---|" + "---|" * len(refs))
        order = refs + sorted(set(names) - set(refs))
        for nm in order:
            runs = groups[(data, rk, nm)]
            a = np.array([runs[s]["aulc"] for s in sorted(runs)]) * 100
            cells = []
            for ref in refs:
                other = groups[(data, rk, ref)]
                common = sorted(set(runs) & set(other))
                if nm == ref or len(common) < 2:
                    cells.append("")
                    continue
                d = np.array([runs[s]["aulc"] - other[s]["aulc"] for s in common]) * 100
                p = stats.ttest_1samp(d, 0.0).pvalue
                cells.append(f"{d.mean():+.2f} +- {d.std(ddof=1):.2f} ({int((d > 0).sum())}/{d.size}, p={p:.3f})")
            lines.append(f"| {nm} | {a.size} | {a.mean():.2f} +- {a.std(ddof=1) if a.size > 1 else 0:.2f} | "
                         + " | ".join(cells) + " |")
        cols = ["auroc_wrong", "spearman_loss", "batch_cosine", "batch_class_entropy", "batch_labeled_distance",
                "fit_s"]
        lines.append("\n| variant | " + " | ".join(cols) + " | first-cycle auroc | wall s |")
        lines.append("|---|" + "---|" * (len(cols) + 2))
        for nm in order:
            runs = list(groups[(data, rk, nm)].values())
            cells = []
            for c in cols:
                v = [d.get(c, np.nan) for r in runs for d in r["diagnostics"]]
                cells.append(f"{np.nanmean(v):.3f}" if np.isfinite(v).any() else "")
            first = [r["diagnostics"][0].get("auroc_wrong", np.nan) for r in runs]
            cells.append(f"{np.nanmean(first):.3f}" if np.isfinite(first).any() else "")
            cells.append(f"{np.mean([r['wall_s'] for r in runs]):.0f}")
            lines.append(f"| {nm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_summary(rows: list[dict[str, Any]], references: list[str], aliases: dict[str, str],
                   recipe: Optional[str] = None) -> str:
    """Paired differences pooled over every (data root, seed) two variants both have, over
    all the files read (two disjoint splits of one dataset, say): mean +- std, wins, and the
    two-sided paired t-test and Wilcoxon p. ``aliases`` renames variants (``OLD: NEW``) that
    are the same strategy and params under another name in an earlier file."""
    rows = [r for r in rows if "aulc" in r and (recipe is None or recipe_key(r["recipe"]) == recipe)]
    recipes = {recipe_key(r["recipe"]) for r in rows}
    if len(recipes) > 1:
        raise SystemExit(f"the runs have {len(recipes)} recipes ({', '.join(sorted(recipes))}): pick one with "
                         f"--only-recipe, one recipe for every variant compared")
    runs: dict[str, dict[tuple[str, int], float]] = {}
    for r in rows:
        runs.setdefault(aliases.get(r["name"], r["name"]), {})[(r["data_root"], r["seed"])] = 100 * r["aulc"]
    roots = sorted({root for per in runs.values() for root, _ in per})
    lines = [f"\npooled over {', '.join(roots)}: paired (data root, seed) units",
             "| variant | vs | units | mean +- std | wins | p (t) | p (W) |", "|---|---|---|---|---|---|---|"]
    for ref in [x for x in references if x in runs]:
        for nm in sorted(runs):
            common = sorted(set(runs[nm]) & set(runs[ref]))
            if nm == ref or len(common) < 2:
                continue
            d = np.array([runs[nm][u] - runs[ref][u] for u in common])
            p_w = stats.wilcoxon(d).pvalue if np.any(d != 0) else 1.0
            lines.append(f"| {nm} | {ref} | {d.size} | {d.mean():+.2f} +- {d.std(ddof=1):.2f} | {int((d > 0).sum())}/"
                         f"{d.size} | {stats.ttest_1samp(d, 0.0).pvalue:.3f} | {p_w:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--variants", default="")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:STRATEGY:KEY=JSON;...")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--recipe", default="{}", help="TrainConfig fields over the digits recipe with small_cnn (JSON)")
    ap.add_argument("--initial", type=float, default=0.10)
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("--final", type=float, default=0.40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/natural_al_cache", help="first-cycle outputs, shared across variants")
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--reference", default="random,entropy,margin")
    ap.add_argument("--only-recipe", default=None, help="summary: only runs of this recipe key")
    ap.add_argument("--pool", action="append", default=[], metavar="FILE",
                    help="summary: also read FILE, and pool the paired differences over every (data root, seed)")
    ap.add_argument("--alias", action="append", default=[], metavar="OLD=NEW",
                    help="pooled summary: the variant OLD is NEW (the same strategy and params, named otherwise)")
    ap.add_argument("--probe", default="", help="cycles of random's labeled set to probe one step from (e.g. 0,4)")
    args = ap.parse_args()
    out = Path(args.out)
    root = args.data_root  # as given: a relative root keeps the run keys the same on any checkout
    if args.summary:
        if args.probe:
            print(probe_summary(load(out), root))
        elif args.pool:
            rows = load(out) + [r for f in args.pool for r in load(Path(f))]
            aliases = dict(a.split("=", 1) for a in args.alias)
            print(pooled_summary(rows, args.reference.split(","), aliases, args.only_recipe))
        else:
            print(summary(load(out), args.reference.split(","), root, args.only_recipe))
        return
    recipe = {**BASE_RECIPE, **json.loads(args.recipe)}
    variants = [parse_variant(v) for v in args.variants.split(",") if v] + [parse_variant(s) for s in args.set]
    done = {r["key"] for r in load(out)}
    jobs = []
    probe_cycles = [int(c) for c in args.probe.split(",") if c] or [None]
    data_key = hashlib.sha1(f"{root}|{recipe_key(recipe)}".encode()).hexdigest()[:10]
    for cycle in probe_cycles:
        for seed in range(args.seed_offset, args.seed_offset + args.seeds):
            for name, strategy, params in variants:
                key = f"{root}|{recipe_key(recipe)}|{name}|{json.dumps(params, sort_keys=True)}|{seed}"
                if cycle is not None:
                    key += f"|probe{cycle}"
                if key in done:
                    continue
                cache = Path(args.cache) / (f"{data_key}-{seed}.npz" if cycle is None
                                            else f"{data_key}-{seed}-random{cycle}.npz")
                jobs.append({"key": key, "name": name, "strategy": strategy, "params": params, "seed": seed,
                             "dataset": args.dataset, "data_root": root, "recipe": recipe, "initial": args.initial,
                             "step": args.step, "final": args.final, "cache": str(cache), "cycle": cycle})
    print(f"{len(jobs)} run(s) to do, {len(done)} already in {out}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for res in pool.imap_unordered(run_probe if args.probe else run_one, jobs):
            with open(out, "a") as fh:
                fh.write(json.dumps(res) + "\n")
            d = res["diagnostics"]
            if args.probe:
                print(f"{res['name']} seed {res['seed']} cycle {res['cycle']}: acc {100 * res['acc_before']:.2f} -> "
                      f"{100 * res['acc_after']:.2f} auroc {d[0].get('auroc_wrong', np.nan):.3f} "
                      f"cos {d[0]['batch_cosine']:.3f} ent {d[0]['batch_class_entropy']:.3f} ({res['wall_s']:.0f} s)",
                      flush=True)
                continue
            print(f"{res['name']} seed {res['seed']}: AULC {100 * res['aulc']:.2f} final {100 * res['final']:.2f} "
                  f"auroc {np.nanmean([x.get('auroc_wrong', np.nan) for x in d]):.3f} "
                  f"cos {np.mean([x['batch_cosine'] for x in d]):.3f} "
                  f"ent {np.mean([x['batch_class_entropy'] for x in d]):.3f} ({res['wall_s']:.0f} s)", flush=True)
    if args.probe:
        print(probe_summary(load(out), root))
    else:
        print(summary(load(out), args.reference.split(","), root, recipe_key(recipe)))


if __name__ == "__main__":
    main()
