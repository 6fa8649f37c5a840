"""Linear heads: `logreg` (dense, scaled, multinomial LogisticRegression) and `linear` (feature
blocks: sparse TF-IDF as is + scaled dense embeddings -> LogisticRegression or one-vs-rest LinearSVC)."""
from __future__ import annotations

import warnings

import numpy as np

from ..config import n_cpus
from ..data import DataError
from .common import BlockStacker, _expand


class LogRegHead:
    def __init__(self, C: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, y, n_classes):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.n_classes = n_classes
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter,
                                                                        random_state=self.seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings at max_iter
            self.model.fit(X, y)
        return self

    def predict_proba(self, X):
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


class LinearHead:
    """LogisticRegression or one-vs-rest LinearSVC over feature blocks (see BlockStacker)."""
    blocks = True

    def __init__(self, C: float = 10.0, max_iter: int = 1000, dense_weight: float = 0.5, solver: str = "lbfgs",
                 class_weight: str | None = None, seed: int = 0):
        """solver: lbfgs (multinomial LogisticRegression) or svm (one-vs-rest LinearSVC, liblinear:
        much faster with many classes and rows; probabilities = softmax of the decision scores).
        class_weight: None or "balanced" (a long-tail option, sklearn's: for lbfgs each class's rows
        weigh rows / (classes * its rows); for svm each one-vs-rest problem is balanced)."""
        if solver not in ("lbfgs", "svm"):
            raise DataError(f"config heads (linear): solver must be lbfgs or svm, not {solver!r}")
        self.C, self.max_iter, self.dense_weight, self.solver, self.seed = C, max_iter, dense_weight, solver, seed
        self.class_weight = class_weight

    def fit(self, blocks, y, n_classes):
        from sklearn.linear_model import LogisticRegression

        self.n_classes = n_classes
        self.stacker = BlockStacker(self.dense_weight).fit(blocks)
        if self.solver == "svm":
            from sklearn.multiclass import OneVsRestClassifier
            from sklearn.svm import LinearSVC

            # the same one-vs-rest problems liblinear solves in turn, spread over the cores
            svc = LinearSVC(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight, random_state=self.seed)
            self.model = OneVsRestClassifier(svc, n_jobs=n_cpus()) if n_classes > 2 else svc
        else:
            self.model = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight,
                                            random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self.stacker.transform(blocks), y)
        return self

    def predict_proba(self, blocks):
        X = self.stacker.transform(blocks)
        if self.solver == "svm":
            z = self.model.decision_function(X)
            z = z[:, None] if z.ndim == 1 else z
            if len(self.model.classes_) == 2:
                z = np.hstack([-z, z])
            z = np.exp(z - z.max(1, keepdims=True))
            return _expand(z / z.sum(1, keepdims=True), self.model.classes_, self.n_classes)
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


