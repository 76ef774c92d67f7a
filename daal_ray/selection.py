"""Exact top-K selection over a stream of scored batches, in O(K + batch) memory.

The order is total and independent of how the pool is split into blocks: a higher score
wins, and among equal scores the smaller ``sample_id`` wins. Each Ray Data block can be
reduced to its own top-K (:func:`score_batch`) and the reduced blocks merged here; the
result equals a full sort of the pool, which no process ever performs.

Selection that is not a top-K lives here too: :func:`k_center_greedy` (core-set), chunked
so that no N x N distance matrix is ever formed; k-means++ D^2 seeding (:func:`d2_seeding`,
batched or exact, and :func:`sharded_d2_seeding` in spatial cells for large candidate
sets); Lloyd's :func:`kmeans`; and the helpers that stream a pool's features into
preallocated arrays (:func:`gather_features`, :func:`gather_rows`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from daal_ray.errors import DataError
from daal_ray.shards import keep_ids, labeled_flags


def _check_scores(ids: np.ndarray, scores: np.ndarray) -> None:
    if ids.shape != scores.shape or ids.ndim != 1:
        raise DataError(f"sample ids {ids.shape} and scores {scores.shape} must be 1-d and of one length")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise DataError(f"{int(bad.sum())} score(s) are NaN or infinite, e.g. sample ids {ids[bad][:5].tolist()}; "
                        f"check the features and the strategy's networks")


def topk_arrays(ids: np.ndarray, scores: np.ndarray, k: int, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of one in-memory batch by (score desc, sample_id asc), in that order
    (``ordered=False``: the same rows, unordered, without the O(k log k) sort)."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    _check_scores(ids, scores)
    if k <= 0:
        return ids[:0], scores[:0]
    if ids.size > k:
        # Partition to the k-th largest score, keep everything strictly above it and the
        # smallest ids among the ties at it: exact, and O(n) rather than a sort.
        kth = -np.partition(-scores, k - 1)[k - 1]
        above = scores > kth
        need = k - int(above.sum())
        tie_ids = ids[scores == kth]
        if tie_ids.size > need:
            tie_ids = np.partition(tie_ids, need - 1)[:need] if need > 0 else tie_ids[:0]
        keep = above | (np.isin(ids, tie_ids) & (scores == kth))
        ids, scores = ids[keep], scores[keep]
    if not ordered:
        return ids, scores
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]


class StreamingTopK:
    """Merge scored batches into the exact top ``k``; memory O(k + largest batch).

    This is the one merge of the system: the cycle loop, the shard streaming and the
    in-memory path all reduce their batches through it. Batches are buffered until they
    hold ``max(k, 65,536)`` rows and then reduced with the kept top ``k`` by one linear
    partition; only :meth:`result` sorts. So a large ``k`` (2,000,000 candidates of a
    10,000,000-row pool, reached in 8,192-row batches) costs O(N) merge work rather than a
    sort of ``k`` rows per batch.

    Args:
        k: how many to keep.
        unique: refuse a ``sample_id`` that reaches the merge twice (a pool with two rows
            of one sample); the check covers the rows that reach the top ``k``.

    Attributes:
        seen: rows pushed so far.
        seconds: time spent merging (the selection proper, apart from producing the batches).
    """

    def __init__(self, k: int, unique: bool = False) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.unique = unique
        self.ids = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0, dtype=np.float64)
        self.seen = 0
        self.seconds = 0.0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._flush_rows = max(k, 1 << 16)

    def push(self, ids: np.ndarray, scores: np.ndarray) -> None:
        t0 = time.perf_counter()
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        _check_scores(ids, scores)
        self.seen += ids.size
        self._pending.append((ids, scores))
        self._pending_rows += ids.size
        if self._pending_rows >= self._flush_rows:
            self._reduce()
        self.seconds += time.perf_counter() - t0

    def _reduce(self) -> None:
        if not self._pending:
            return
        both = np.concatenate([self.ids, *(i for i, _ in self._pending)])
        both_scores = np.concatenate([self.scores, *(s for _, s in self._pending)])
        self._pending, self._pending_rows = [], 0
        if self.unique:
            srt = np.sort(both)
            dup = srt[1:][srt[1:] == srt[:-1]]
            if dup.size:
                raise DataError(f"sample ids {np.unique(dup)[:5].tolist()} appear in more than one row of the pool; "
                                f"every sample needs one row")
        self.ids, self.scores = topk_arrays(both, both_scores, self.k, ordered=False)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores of the top ``k`` so far, best first."""
        t0 = time.perf_counter()
        self._reduce()
        order = np.lexsort((self.ids, -self.scores))
        self.ids, self.scores = self.ids[order], self.scores[order]
        self.seconds += time.perf_counter() - t0
        return self.ids.copy(), self.scores.copy()


def merge_topk(batches: Iterable[Mapping[str, np.ndarray]], k: int, id_key: str = "sample_id",
               score_key: str = "score", unique: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top ``k`` of a stream of ``{sample_id, score}`` batches (:class:`StreamingTopK`).

    Returns ``(ids, scores, merge_seconds)``, best first; ``merge_seconds`` is the time
    spent merging, not producing the batches.
    """
    merger = StreamingTopK(k, unique=unique)
    for batch in batches:
        merger.push(batch[id_key], batch[score_key])
    ids, scores = merger.result()
    return ids, scores, merger.seconds


def topk_batch(batch: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Reduce one scored block ``{sample_id, score}`` to its own top ``k``."""
    ids, scores = topk_arrays(batch["sample_id"], batch["score"], k)
    return {"sample_id": ids, "score": scores}


def score_batch(batch: Mapping[str, np.ndarray], score: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                k: int) -> dict[str, np.ndarray]:
    """Score the unlabeled rows of one batch (``score``: a strategy's scoring method) and
    keep their top ``k`` as ``{sample_id, score}``. Labeled rows (a ``labeled`` column)
    are never scored; a batch without the column is all unlabeled."""
    rows = {key: np.asarray(v) for key, v in batch.items()}
    if "labeled" in rows:
        keep = ~rows["labeled"].astype(bool)
        rows = {key: v[keep] for key, v in rows.items()}
    if rows["sample_id"].size == 0:
        return {"sample_id": np.zeros(0, np.int64), "score": np.zeros(0, np.float64)}
    scores = np.asarray(score(rows), dtype=np.float64).reshape(-1)
    return topk_batch({"sample_id": rows["sample_id"], "score": scores}, k)


def topk_local(features: Any, score: Callable[[Mapping[str, np.ndarray]], np.ndarray], k: int,
               batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top ``k`` of ``score`` over a pool's inference output, scored in this process
    batch by batch, through the same per-batch reduction and merge as the Ray Data pass.

    ``features`` is a mapping of arrays, a sequence of them (unit tests, benches) or a Ray
    Dataset (its batches are streamed here; the cycle loop scores on Ray Data workers
    instead, :func:`daal_ray.scoring.select_topk`). Returns ``(ids, scores, merge_seconds)``,
    best first.
    """
    if isinstance(features, Mapping):
        batches: Iterable[Mapping[str, np.ndarray]] = [features]
    elif isinstance(features, (list, tuple)):
        batches = features
    else:
        batches = features.iter_batches(batch_size=batch_size, batch_format="numpy")
    return merge_topk((score_batch(dict(batch), score, k) for batch in batches), k, unique=True)


# ====================================================================== feature streams
def iter_feature_batches(features: Any, columns: Sequence[str],
                         batch_size: int = 8192) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``columns`` from a pool's inference output, whatever holds it.

    ``features`` is a Ray Dataset (streamed with ``iter_batches``), a mapping of arrays
    (one batch) or a sequence of such mappings (unit tests and benches). No copy of the
    whole pool is made here.
    """
    if isinstance(features, Mapping):
        yield {c: np.asarray(features[c]) for c in columns}
    elif isinstance(features, (list, tuple)):
        for batch in features:
            yield {c: np.asarray(batch[c]) for c in columns}
    else:
        for batch in features.select_columns(list(columns)).iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield {c: np.asarray(batch[c]) for c in columns}


def gather_features(features: Any, num_labeled: int, num_unlabeled: int,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stream the pool once into preallocated arrays, sorted by ``sample_id``.

    Returns ``(labeled_ids, labeled_features, unlabeled_ids, unlabeled_features)``;
    memory is the features themselves (``N x d`` float32) plus O(batch).

    Raises:
        DataError: the stream's labeled/unlabeled counts differ from the expected ones, or
            a feature is NaN or infinite.
    """
    out: dict[bool, tuple[np.ndarray, Optional[np.ndarray]]] = {}
    fill = {True: 0, False: 0}
    sizes = {True: num_labeled, False: num_unlabeled}
    for batch in iter_feature_batches(features, ("sample_id", "labeled", "features")):
        lab = np.asarray(batch["labeled"], dtype=bool)
        x = np.asarray(batch["features"], dtype=np.float32)
        x = x.reshape(x.shape[0], -1)
        for flag in (True, False):
            rows = lab == flag
            n = int(rows.sum())
            if n == 0:
                continue
            if flag not in out:
                out[flag] = (np.empty(sizes[flag], np.int64), np.empty((sizes[flag], x.shape[1]), np.float32))
            ids_buf, x_buf = out[flag]
            if fill[flag] + n > sizes[flag]:
                raise DataError(f"the pool holds more {'labeled' if flag else 'unlabeled'} rows than the "
                                f"{sizes[flag]} expected; the features do not match the pool state")
            xs = x[rows]
            if not np.isfinite(xs).all():
                bad = np.asarray(batch["sample_id"])[rows][~np.isfinite(xs).all(axis=1)]
                raise DataError(f"features of sample ids {bad[:5].tolist()} are NaN or infinite; "
                                f"check the task model of this cycle")
            ids_buf[fill[flag]:fill[flag] + n] = np.asarray(batch["sample_id"])[rows]
            x_buf[fill[flag]:fill[flag] + n] = xs
            fill[flag] += n
    if fill[True] != num_labeled or fill[False] != num_unlabeled:
        raise DataError(f"the features hold {fill[True]} labeled and {fill[False]} unlabeled rows, expected "
                        f"{num_labeled} and {num_unlabeled}; the features do not match the pool state")
    result = []
    for flag in (True, False):
        ids, x = out.get(flag, (np.zeros(0, np.int64), np.zeros((0, 0), np.float32)))
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(order, np.arange(order.size)):
            ids, x = ids[order], x[order]  # a copy only when the stream came out of order
        result += [ids, x]
    return result[0], result[1], result[2], result[3]


# ====================================================================== k-center greedy
def _sq_norms(x: torch.Tensor, rows: int = 1 << 14) -> torch.Tensor:
    """Squared L2 norm of each row, in row chunks: ``(x * x)`` whole would copy the features."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], rows):
        out[i:i + rows] = (x[i:i + rows] * x[i:i + rows]).sum(dim=1)
    return out


def min_sq_distances(points: torch.Tensor, centres: torch.Tensor, chunk_elems: int = 1 << 22,
                     points_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared distance of every row of ``points`` to its nearest row of ``centres``.

    Computed over tiles of at most ``chunk_elems`` point-centre pairs, so memory is
    O(N + M + chunk) and no N x M matrix is ever formed. ``+inf`` where there are no centres.
    ``points_sq`` are the points' squared norms when the caller has them already.
    """
    n, m = points.shape[0], centres.shape[0]
    out = torch.full((n,), float("inf"), dtype=points.dtype, device=points.device)
    if m == 0 or n == 0:
        return out
    p_sq = _sq_norms(points) if points_sq is None else points_sq
    c_sq = _sq_norms(centres)
    cols = max(1, min(m, chunk_elems // max(1, min(n, 4096))))
    rows = max(1, chunk_elems // cols)
    for i in range(0, n, rows):
        best = out[i:i + rows]
        for j in range(0, m, cols):
            # In place: one tile-sized buffer rather than one per arithmetic step.
            d = (points[i:i + rows] @ centres[j:j + cols].T).mul_(-2.0)
            d.add_(p_sq[i:i + rows, None]).add_(c_sq[None, j:j + cols])
            best = torch.minimum(best, d.min(dim=1).values)
        out[i:i + rows] = best.clamp_min_(0.0)
    return out


def k_center_greedy(unlabeled: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor, k: int,
                    device: Any = None, dtype: torch.dtype = torch.float32,
                    chunk_elems: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): positions of ``k`` rows of ``unlabeled``.

    The ``centres`` (the labeled features) initialise the centres; each step picks the
    unlabeled row farthest (Euclidean) from its nearest centre and makes it a centre.
    Among equal distances the smaller position wins (callers sort rows by ``sample_id``,
    so the smaller id). Memory is O(N + K) besides the features: one distance vector, and
    the first step's distances are computed in tiles (:func:`min_sq_distances`); each
    later step is one matrix-vector product.

    Args:
        unlabeled: ``[N, d]`` features of the candidates, rows in ``sample_id`` order.
        centres: ``[M, d]`` features of the labeled samples (``M`` may be 0: every
            distance is then infinite and the first pick is row 0, the smallest id).
        k: how many to pick, at most ``N``.
        device: torch device to compute on (the experiment's; a GPU when there is one).
        dtype: computation dtype (float32; float64 for exact comparisons in tests).
        chunk_elems: tile size of the first step, in point-centre pairs.

    Returns:
        ``(positions [k] int64, distances [k] float64)``: the picks in order, with each
        pick's distance to its nearest centre at the time it was picked.
    """
    x = torch.as_tensor(unlabeled).to(device=device, dtype=dtype)
    c = torch.as_tensor(centres).to(device=device, dtype=dtype)
    n = x.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (the unlabeled rows), got {k}")
    if c.numel() and c.shape[1] != x.shape[1]:
        raise DataError(f"labeled features have {c.shape[1]} dimensions, unlabeled {x.shape[1]}")
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    x_sq = _sq_norms(x)
    mind = min_sq_distances(x, c.reshape(-1, x.shape[1]), chunk_elems, points_sq=x_sq)
    picks = torch.empty(k, dtype=torch.int64, device=x.device)
    dists = torch.empty(k, dtype=dtype, device=x.device)
    taken = torch.tensor(-1.0, dtype=dtype, device=x.device)
    for t in range(k):
        # torch.argmax returns the first maximal index: ties go to the smaller position.
        i = torch.argmax(mind)
        picks[t] = i
        dists[t] = mind[i]
        d = (x_sq - 2.0 * (x @ x[i]) + x_sq[i]).clamp_min_(0.0)
        torch.minimum(mind, d, out=mind)
        mind[i] = taken  # below every distance: never picked twice, even among duplicates
    # One device->host copy at the end: a .item() per step would sync the GPU K times.
    return picks.cpu().numpy(), dists.double().sqrt().cpu().numpy()


# ====================================================================== D^2 seeding
def _gumbel(n: int, generator: torch.Generator, device: Any) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0 - 1e-16)
    return (-torch.log(-torch.log(u))).to(device)


def euclidean_min_sq(x: torch.Tensor, rows: int = 1 << 13) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(centres) -> [n]``: each row's squared Euclidean distance to its nearest row of
    ``x[centres]``, computed in row chunks so no ``n x len(centres)`` matrix is held.

    ``|x_i - c|^2 = |x_i|^2 + min_c (|c|^2 - 2 x_i . c)``: per chunk, one matrix product
    and one add over the ``rows x centres`` block before its row minimum (the row's own
    norm is added to the minimum); chunks small enough to stay in cache. The block is
    one buffer, written in place by every chunk of every call: a seeding makes thousands
    of passes, and a fresh block each (4 MB at 8,192 x 128 centres) would be mapped,
    faulted in and unmapped each time where large arrays are mapped per use
    (:func:`daal_ray.runtime.return_freed_memory`)."""
    x_sq = _sq_norms(x)
    buf = torch.empty(0, dtype=x.dtype, device=x.device)

    def min_sq(centres: torch.Tensor) -> torch.Tensor:
        nonlocal buf
        c, c_sq = x[centres] * -2.0, x_sq[centres][None]
        if buf.numel() < rows * c.shape[0]:
            buf = torch.empty(rows * c.shape[0], dtype=x.dtype, device=x.device)
        out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(0, x.shape[0], rows):
            r = min(rows, x.shape[0] - i)
            block = torch.addmm(c_sq, x[i:i + r], c.T, out=buf[:r * c.shape[0]].view(r, c.shape[0]))
            torch.amin(block, dim=1, out=out[i:i + r])
        return out.add_(x_sq).clamp_min_(0.0)

    return min_sq


def d2_seeding(n: int, k: int, min_sq: Callable[[torch.Tensor], torch.Tensor], *, seed: int,
               first: Optional[int] = None, log_weights: Optional[torch.Tensor] = None,
               batch: Optional[int] = None, device: Any = None) -> np.ndarray:
    """k-means++ seeding (D^2 sampling; Arthur & Vassilvitskii 2007): positions of ``k`` of ``n`` points.

    Each new centre is drawn with probability proportional to its squared distance to the
    nearest centre so far (times ``exp(log_weights)`` when given), without replacement.
    Draws come ``batch`` at a time (default ``k // 128``, at least 1): one distance pass per
    batch of centres (a matrix product) instead of one per centre, which is what makes
    ``k = 50,000`` affordable. That is an approximation: within one batch the weights are
    those of the pass before it, so two centres of a batch may land close together (for
    ``k < 256`` the default batch is 1 anyway). ``batch=1`` is exact k-means++.

    Random stream (the contract a reference implementation can reproduce): one
    ``torch.Generator`` seeded with ``seed``; the first centre, unless given, is
    ``torch.randint(n, (1,), generator)``; every later draw of ``b`` centres takes
    ``u = torch.rand(n, generator, dtype=float64)`` clamped to ``[1e-300, 1 - 1e-16]`` and
    picks the ``b`` untaken points of largest ``log D^2 + log_weights - log(-log u)``
    (Gumbel-top-b: ``b`` draws without replacement; for ``b = 1`` the Gumbel-max draw of
    one centre with probability proportional to ``D^2 exp(log_weights)``). When fewer
    untaken points than ``b`` have ``D^2 > 0``, all of them are taken and the rest of the
    draw is the untaken points of largest ``-log(-log u)`` (a uniform draw among exact
    duplicates of centres). So a seed gives one answer.

    Args:
        n: how many points.
        k: how many to pick, at most ``n``.
        min_sq: ``min_sq(centres) -> [n]``, every point's squared distance to the nearest
            of the point positions ``centres`` (e.g. :func:`euclidean_min_sq`).
        seed: seeds the draws.
        first: position of the first centre (default: a uniform draw).
        log_weights: ``[n]`` log weights multiplying the D^2 probabilities.
        batch: centres drawn per distance pass (``None`` or 0: ``k // 128``, at least 1).
        device: where the distance vector lives.

    Returns:
        ``[k]`` int64 positions in pick order.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    if k == 0:
        return np.zeros(0, np.int64)
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    batch = max(1, int(batch or k // 128))
    mind = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    start = first if first is not None else int(torch.randint(n, (1,), generator=gen))
    new = torch.tensor([start], dtype=torch.int64, device=device)
    picks = [new]
    got = 1
    while got < k:
        taken[new] = True
        torch.minimum(mind, min_sq(new).to(torch.float64), out=mind)
        b = min(batch, k - got)
        logits = torch.log(mind.clamp_min(0.0))
        if log_weights is not None:
            logits = logits + log_weights.to(device=device, dtype=torch.float64)
        logits[taken] = -math.inf
        off = torch.isfinite(logits)
        if int(off.sum()) >= b:
            new = torch.topk(logits + _gumbel(n, gen, logits.device), b).indices
        else:
            # Fewer points off the centres than draws left: take all of them, then fill the
            # batch uniformly among the untaken points that duplicate a centre (D^2 = 0).
            rest = _gumbel(n, gen, logits.device).masked_fill_(taken | off, -math.inf)
            new = torch.cat([torch.nonzero(off).flatten(), torch.topk(rest, b - int(off.sum())).indices])
        picks.append(new)
        got += b
    return torch.cat(picks).cpu().numpy()


def nearest_centres(x: torch.Tensor, centres: torch.Tensor, rows: int = 1 << 13,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, squared distance)`` of each row of ``x``'s nearest row of ``centres``
    (Euclidean; ties to the smaller index), in row chunks of one matrix product each,
    into one reused block buffer."""
    c_sq = _sq_norms(centres)[None]
    idx = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    buf = torch.empty(min(rows, x.shape[0]) * centres.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], rows):
        r = min(rows, x.shape[0] - i)
        block = torch.addmm(c_sq, x[i:i + r], centres.T, alpha=-2.0, out=buf[:r * centres.shape[0]].view(r, -1))
        torch.min(block, dim=1, out=(dist[i:i + r], idx[i:i + r]))
    return idx, dist.add_(_sq_norms(x)).clamp_min_(0.0)


def kmeans(x: torch.Tensor, m: int, *, seed: int, iters: int = 10,
           rows: int = 1 << 13) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of the rows of ``x`` into ``m`` centres, from a batched k-means++
    seeding (:func:`d2_seeding`); seeded, so one answer per seed.

    Each iteration is one assignment pass (a matrix product per chunk of ``rows``) and one
    scatter-add of the rows into their centres; a centre left empty keeps its position.

    Returns:
        ``(centres [m, d], assignment [n] int64, counts [m] int64)``.
    """
    n = x.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    centres = x[torch.as_tensor(d2_seeding(n, m, euclidean_min_sq(x, rows), seed=seed), device=x.device)].clone()
    assign, _ = nearest_centres(x, centres, rows)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=m)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        full = counts > 0
        centres[full] = sums[full] / counts[full, None].to(x.dtype)
        new, _ = nearest_centres(x, centres, rows)
        if torch.equal(new, assign):
            break
        assign = new
    return centres, assign, torch.bincount(assign, minlength=m)


def proportional_quota(sizes: np.ndarray, k: int) -> np.ndarray:
    """``k`` split over groups of ``sizes`` in proportion to them (largest remainders; ties
    to the earlier group), never more than a group holds."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if not 0 <= k <= total:
        raise ValueError(f"k must be in [0, {total}], got {k}")
    exact = sizes * (k / max(total, 1))
    quota = np.minimum(np.floor(exact).astype(np.int64), sizes)
    room = quota < sizes
    frac = np.where(room, exact - quota, -1.0)
    order = np.lexsort((np.arange(sizes.size), -frac))
    quota[order[:k - int(quota.sum())]] += 1
    return quota


def seed_in_cells(cells: np.ndarray, k: int, min_sq_of: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
                  *, seed: int, first_of: Optional[Callable[[np.ndarray], int]] = None,
                  log_weights: Optional[torch.Tensor] = None, batch: Optional[int] = None,
                  device: Any = None) -> np.ndarray:
    """k-means++ seeding of ``k`` points run separately in each cell of a partition.

    Each cell (the points of one value of ``cells``) gets a share of ``k`` proportional to
    its size (:func:`proportional_quota`) and its own :func:`d2_seeding`, from the point
    ``first_of(positions)`` picks (default: its first). Work is the sum over cells of
    ``size x share``: about ``n k / cells`` for equal cells instead of ``n k``. The
    approximation: D^2 spreads the centres within a cell, not across a cell boundary.

    Args:
        cells: ``[n]`` cell of each point (any integers).
        k: how many to pick, at most ``n``.
        min_sq_of: ``min_sq_of(positions)`` -> the ``min_sq`` function of :func:`d2_seeding`
            over those points only (positions index the cell's points, in order).
        seed: seeds the draws (each cell its own stream, derived from it).
        first_of: the first centre of a cell, as an index into its positions.
        log_weights: ``[n]`` log weights of the D^2 draws.
        batch: centres per distance pass (:func:`d2_seeding`).
        device: where the distance vectors live.

    Returns:
        ``[k]`` int64 positions, cell by cell.
    """
    cells = np.asarray(cells).reshape(-1)
    n = cells.size
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    _, group, counts = np.unique(cells, return_inverse=True, return_counts=True)
    quota = proportional_quota(counts, k)
    members = np.argsort(group, kind="stable")  # cell by cell, positions ascending within each
    starts = np.concatenate([[0], np.cumsum(counts)])
    picks = []
    for c in range(counts.size):
        if quota[c] == 0:
            continue
        pos = members[starts[c]:starts[c + 1]]
        idx = torch.as_tensor(pos)
        lw = log_weights[idx.to(log_weights.device)] if log_weights is not None else None
        sub = d2_seeding(pos.size, int(quota[c]), min_sq_of(idx), seed=(seed + 7919 * (c + 1)) & (2**63 - 1),
                         first=first_of(pos) if first_of is not None else 0, log_weights=lw, batch=batch,
                         device=device)
        picks.append(pos[sub])
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def sharded_d2_seeding(x: torch.Tensor, k: int, *, seed: int, cell_rows: int,
                       log_weights: Optional[torch.Tensor] = None, batch: Optional[int] = None,
                       rows: int = 1 << 13) -> np.ndarray:
    """k-means++ seeding of ``k`` of the rows of ``x`` (Euclidean), in cells of about
    ``cell_rows`` rows: linear time in ``len(x)`` for ``k`` a fixed fraction of it.

    One seeding over all ``n`` rows costs O(n k d): quadratic when ``k`` grows with the pool
    (at 2,000,000 candidates and k = 500,000, 256 TFLOP). With ``n > cell_rows`` the rows
    are cut into ``ceil(n / cell_rows)`` spatial cells by k-means (:func:`kmeans`, 5
    iterations) and :func:`seed_in_cells` seeds each its share of ``k``, from its first
    row (the smallest position: the best-scored candidate when rows come in score order).
    Work is O(k cell_rows d). ``cell_rows <= 0`` or ``n <= cell_rows``: one seeding, from row 0.

    Returns:
        ``[k]`` int64 positions, cell by cell.
    """
    n = x.shape[0]
    if cell_rows <= 0 or n <= cell_rows:
        return d2_seeding(n, k, euclidean_min_sq(x, rows), seed=seed, first=0, log_weights=log_weights, batch=batch)
    _, assign, _ = kmeans(x, math.ceil(n / cell_rows), seed=seed, iters=5, rows=rows)
    return seed_in_cells(assign.cpu().numpy(), k, lambda idx: euclidean_min_sq(x[idx.to(x.device)], rows), seed=seed,
                         log_weights=log_weights, batch=batch)


def gather_rows(features: Any, ids: np.ndarray, columns: Sequence[str],
                batch_size: int = 8192) -> dict[str, np.ndarray]:
    """The unlabeled rows of ``features`` whose ``sample_id`` is in ``ids``, in the order of
    ``ids``, as arrays of ``columns``: memory O(len(ids)), whatever the pool's size. A Ray
    Dataset is filtered where it lives (:func:`daal_ray.shards.keep_ids`), so only those
    rows reach this process. Each row is written once, straight to its place in a
    preallocated array (no concatenation, and no reordering copy when ``ids`` are unique):
    at 2,000,000 candidates of 128 floats that is 1 GB held instead of 3.

    Raises:
        DataError: an id is not among the pool's unlabeled rows, or has more than one row.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    wanted = np.unique(ids)
    unique = wanted.size == ids.size
    # With unique ids, the k-th smallest wanted id goes straight to its place in ``ids``.
    dest = np.argsort(ids, kind="stable") if unique else np.arange(wanted.size)
    cols = ["sample_id", "labeled", *[c for c in columns if c not in ("sample_id", "labeled")]]
    if not isinstance(features, (Mapping, list, tuple)):
        features = features.map_batches(keep_ids, fn_kwargs={"ids": wanted}, batch_format="numpy")
    out: dict[str, np.ndarray] = {}
    found = np.zeros(wanted.size, np.int64)
    for batch in iter_feature_batches(features, cols, batch_size):
        sid = np.asarray(batch["sample_id"], dtype=np.int64)
        keep = labeled_flags(sid, wanted) & ~np.asarray(batch["labeled"]).astype(bool)
        if not keep.any():
            continue
        at = np.searchsorted(wanted, sid[keep])
        np.add.at(found, at, 1)
        for c in columns:
            v = np.asarray(batch[c])[keep]
            if c not in out:
                out[c] = np.empty((dest.size, *v.shape[1:]), v.dtype)
            out[c][dest[at]] = v
    if (found != 1).any():
        missing = wanted[found == 0][:5].tolist()
        if missing:
            raise DataError(f"sample ids {missing} are not unlabeled rows of the pool")
        raise DataError(f"sample ids {wanted[found > 1][:5].tolist()} appear in more than one row of the pool; "
                        f"every sample needs one row")
    got = {c: out.get(c, np.zeros(0)) for c in columns}
    if unique:
        return got
    pos = np.searchsorted(wanted, ids)
    return {c: v[pos] for c, v in got.items()}


def gather_unlabeled(features: Any, num_unlabeled: int, columns: Sequence[str],
                     batch_size: int = 8192) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stream the pool once and keep its unlabeled rows: ``(ids, {column: [n, ...]})``,
    sorted by ``sample_id``, float32 columns, preallocated (memory: the rows themselves).

    Raises:
        DataError: the stream's unlabeled count differs from ``num_unlabeled``, or a value
            is NaN or infinite.
    """
    ids = np.empty(num_unlabeled, np.int64)
    out: dict[str, np.ndarray] = {}
    fill = 0
    for batch in iter_feature_batches(features, ("sample_id", "labeled", *columns), batch_size):
        rows = ~np.asarray(batch["labeled"], dtype=bool)
        n = int(rows.sum())
        if n == 0:
            continue
        if fill + n > num_unlabeled:
            raise DataError(f"the pool holds more than the {num_unlabeled} unlabeled rows expected; "
                            f"the features do not match the pool state")
        ids[fill:fill + n] = np.asarray(batch["sample_id"])[rows]
        for c in columns:
            x = np.asarray(batch[c], dtype=np.float32)
            x = x.reshape(x.shape[0], -1)[rows]
            if not np.isfinite(x).all():
                bad = ids[fill:fill + n][~np.isfinite(x).all(axis=1)]
                raise DataError(f"{c} of sample ids {bad[:5].tolist()} are NaN or infinite; "
                                f"check the task model of this cycle")
            if c not in out:
                out[c] = np.empty((num_unlabeled, x.shape[1]), np.float32)
            out[c][fill:fill + n] = x
        fill += n
    if fill != num_unlabeled:
        raise DataError(f"the features hold {fill} unlabeled rows, expected {num_unlabeled}; "
                        f"the features do not match the pool state")
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(order, np.arange(order.size)):
        ids = ids[order]
        out = {c: v[order] for c, v in out.items()}
    return ids, {c: out.get(c, np.zeros((0, 0), np.float32)) for c in columns}
