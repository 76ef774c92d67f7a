"""A synthetic pool whose right DAAL ranking is known (paper Sec. 3.1's claim).

DAAL claims its score rises with uncertainty (far from the labeled set) *and*
representativeness (inside dense regions of the unlabeled pool). This pool separates the
two: one labeled cluster ``A``; unlabeled near-duplicates of ``A`` (representative but
not uncertain); a dense unlabeled cluster ``B`` far from every labeled sample (both); and
isolated outliers (uncertain but not representative). A DAAL that works ranks ``B`` above
the other two groups. The test suite and ``bench/daal_known_answer.py`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR, DENSE, OUTLIER = 0, 1, 2
GROUP_NAMES = ("near-duplicates of labeled", "dense far cluster", "isolated outliers")


@dataclass(frozen=True)
class KnownAnswerPool:
    """Labeled and unlabeled features with the group of each unlabeled sample.

    Attributes:
        labeled: ``[n_l, d]`` features of the labeled samples (cluster A).
        unlabeled: ``[n_u, d]`` features of the unlabeled samples.
        groups: ``[n_u]`` group of each unlabeled sample: ``NEAR``, ``DENSE`` or ``OUTLIER``.
    """

    labeled: np.ndarray
    unlabeled: np.ndarray
    groups: np.ndarray

    def table(self) -> dict[str, np.ndarray]:
        """The whole pool as inference output: ``sample_id`` (ids that are not positions),
        ``labeled`` and ``features``; labeled rows first, then the unlabeled in order."""
        x = np.concatenate([self.labeled, self.unlabeled])
        return {"sample_id": np.arange(len(x), dtype=np.int64) * 7 + 3,
                "labeled": np.arange(len(x)) < len(self.labeled), "features": x}

    def group_means(self, scores: np.ndarray) -> np.ndarray:
        """Mean score of each group, in the order NEAR, DENSE, OUTLIER."""
        return np.array([float(np.mean(scores[self.groups == g])) for g in (NEAR, DENSE, OUTLIER)])


def known_answer_pool(seed: int = 0, dim: int = 16, n_labeled: int = 200, n_near: int = 200, n_dense: int = 200,
                      n_outliers: int = 20, spread: float = 0.15) -> KnownAnswerPool:
    """Build the pool: clusters of unit-norm centres with Gaussian ``spread``; outliers in
    random directions on the unit sphere (the scale DAAL's normalised features have)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=dim)
    a /= np.linalg.norm(a)
    b = rng.normal(size=dim)
    b -= (b @ a) * a  # orthogonal to A: far from every labeled sample
    b /= np.linalg.norm(b)
    labeled = a + spread * rng.normal(size=(n_labeled, dim))
    near = a + spread * rng.normal(size=(n_near, dim))
    dense = b + spread * rng.normal(size=(n_dense, dim))
    outliers = rng.normal(size=(n_outliers, dim))
    outliers /= np.linalg.norm(outliers, axis=1, keepdims=True)
    unlabeled = np.concatenate([near, dense, outliers]).astype(np.float32)
    groups = np.repeat([NEAR, DENSE, OUTLIER], [n_near, n_dense, n_outliers])
    return KnownAnswerPool(labeled.astype(np.float32), unlabeled, groups)
