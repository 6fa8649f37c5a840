"""The `catboost` head: scaler -> PCA (or PCA -> LFDA, fit on the inner-fit rows) -> CatBoost MultiClass."""

from __future__ import annotations

import warnings

import numpy as np

from ..config import n_cpus
from ..data import DataError
from .common import _inner_split
from .neighbours import make_lfda


def _reducer(kind: str, X, dim: int, seed: int):
    """Scaler + PCA (unsupervised) or + PCA -> LFDA (supervised; fit on the fold's training rows only)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pca_dim = min(128 if kind == "lfda" else dim, X.shape[1], len(X) - 1)
    steps = [StandardScaler(), PCA(pca_dim, random_state=seed)]
    if kind == "lfda":
        steps.append(make_lfda(n_components=min(dim, pca_dim), k=7))
    elif kind != "pca":
        raise DataError(f"config heads (catboost): reduce must be pca or lfda, not {kind!r}")
    return make_pipeline(*steps)


class CatBoostHead:
    def __init__(
        self,
        reduce: str = "pca",
        dim: int = 64,
        iterations: int = 1000,
        learning_rate: float = 0.1,
        depth: int = 6,
        early_stopping_rounds: int = 50,
        inner_frac: float = 0.1,
        l2_leaf_reg: float = 3.0,
        border_count: int | None = None,
        seed: int = 0,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def fit(self, X, y, n_classes):
        import torch
        from catboost import CatBoostClassifier

        self.n_classes = n_classes
        fit, val = _inner_split(y, self.inner_frac, self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.reducer = _reducer(self.reduce, X[fit], self.dim, self.seed).fit(X[fit], y[fit])
        Z = self.reducer.transform(X)
        gpu = torch.cuda.is_available()
        self.model = CatBoostClassifier(
            loss_function="MultiClass",
            iterations=self.iterations,
            learning_rate=self.learning_rate,
            depth=self.depth,
            l2_leaf_reg=self.l2_leaf_reg,
            random_seed=self.seed,
            verbose=0,
            **({"border_count": int(self.border_count)} if self.border_count else {}),
            thread_count=n_cpus(),
            task_type="GPU" if gpu else "CPU",
            class_names=list(range(n_classes)),
            allow_writing_files=False,
        )
        self.model.fit(
            Z[fit],
            y[fit],
            eval_set=(Z[val], y[val]) if val.any() else None,
            early_stopping_rounds=self.early_stopping_rounds if val.any() else None,
        )
        self.best_iteration = int(self.model.get_best_iteration() or self.iterations)
        self.inner_val = val  # the early-stopping rows (calibration reuses them)
        return self

    def predict_proba(self, X):
        return self.model.predict_proba(self.reducer.transform(X)).astype(np.float32)
