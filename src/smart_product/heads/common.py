"""What every head shares: the inner split, the class-column expansion, the block stacker, scores."""

from __future__ import annotations

import numpy as np

from ..data import DataError


def _inner_split(y: np.ndarray, frac: float, seed: int):
    """Early-stopping split of the training rows: `frac` of each class with >= 3 rows."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) >= 3:
            val[rng.choice(idx, max(1, int(round(len(idx) * frac))), replace=False)] = True
    return ~val, val


def _expand(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns for the classes a model saw -> all classes (zeros for unseen ones)."""
    out = np.zeros((len(proba), n_classes), np.float32)
    out[:, seen] = proba
    return out


class BlockStacker:
    """Feature blocks -> one CSR matrix: sparse blocks (TF-IDF) as they are, each dense block
    standardised on the fit rows and scaled by dense_weight / sqrt(dim), so a 1,000-dim embedding
    neither drowns nor vanishes beside the TF-IDF."""

    def __init__(self, dense_weight: float = 0.5):
        self.dense_weight = dense_weight

    def fit(self, blocks):
        from scipy import sparse

        self.scales = [
            (None, None)
            if sparse.issparse(b)
            else (b.mean(0), self.dense_weight / np.sqrt(b.shape[1]) / (b.std(0) + 1e-6))
            for b in blocks
        ]
        return self

    def transform(self, blocks):
        from scipy import sparse

        if len(blocks) != len(self.scales):
            raise DataError(f"{len(blocks)} feature blocks, fit on {len(self.scales)}")
        out = [
            b if mean is None else sparse.csr_matrix(((b - mean) * scale).astype(np.float32))
            for b, (mean, scale) in zip(blocks, self.scales)
        ]
        return sparse.hstack(out).tocsr().astype(np.float32)


def scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "rows": int(len(y_true)),
    }
