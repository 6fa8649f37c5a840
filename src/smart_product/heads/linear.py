"""Linear heads: `logreg` (dense, scaled, multinomial LogisticRegression) and `linear` (feature
blocks: sparse TF-IDF as is + scaled dense embeddings -> LogisticRegression or one-vs-rest LinearSVC)."""

from __future__ import annotations

import warnings

import numpy as np

from ..config import n_cpus
from ..data import DataError
from .common import BlockStacker, _expand


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores (decision values, log-likelihoods)."""
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class LogRegHead:
    def __init__(self, C: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, y, n_classes):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.n_classes = n_classes
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings at max_iter
            self.model.fit(X, y)
        return self

    def predict_proba(self, X):
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


class LinearHead:
    """LogisticRegression or one-vs-rest LinearSVC over feature blocks (see BlockStacker)."""

    blocks = True

    def __init__(
        self,
        C: float = 10.0,
        max_iter: int = 1000,
        dense_weight: float = 0.5,
        solver: str = "lbfgs",
        class_weight: str | None = None,
        seed: int = 0,
    ):
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
            self.model = LogisticRegression(
                C=self.C, max_iter=self.max_iter, class_weight=self.class_weight, random_state=self.seed
            )
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
            return _expand(_softmax_rows(z), self.model.classes_, self.n_classes)
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


class NaiveBayesHead:
    """Complement naive Bayes (Rennie et al. 2003; sklearn's ComplementNB weights) or multinomial
    naive Bayes over non-negative sparse blocks (TF-IDF). One pass over the counts, no optimisation,
    and errors unlike the nets' (a cheap, different member for the stacker).

    The weights are computed here in float32, in place, from a sparse class indicator: sklearn's
    `fit` builds a dense rows x classes indicator and classes x features float64 counts plus two
    temporaries of that size (~8 GB at 864 classes x 380k TF-IDF columns; here one 1.3 GB matrix).
    complement: w[c] = -log((n_all + alpha - n[c]) / sum_f (n_all + alpha - n[c])), no class prior
    (as ComplementNB with more than one class); multinomial: w[c] = log((n[c] + alpha) / sum_f (...))
    + the class's log prior. Probabilities: softmax(X @ w.T / temperature) per row; `calibrate:
    true` refines the temperature on an inner split. Dense blocks (which may be negative) are refused;
    tests/test_heads.py checks the scores against sklearn's ComplementNB and MultinomialNB."""

    blocks = True

    def __init__(self, alpha: float = 0.3, variant: str = "complement", temperature: float = 1.0, seed: int = 0):
        if variant not in ("complement", "multinomial"):
            raise DataError(f"config heads (nb): variant must be complement or multinomial, not {variant!r}")
        if not (temperature > 0 and alpha > 0):
            raise DataError(f"config heads (nb): alpha and temperature must be > 0, not {alpha!r}, {temperature!r}")
        self.alpha, self.variant, self.temperature, self.seed = float(alpha), variant, float(temperature), seed

    @staticmethod
    def _stack(blocks):
        from scipy import sparse

        if not all(sparse.issparse(b) for b in blocks):
            raise DataError(
                "heads (nb): naive Bayes takes sparse non-negative blocks (TF-IDF) only; "
                "list no dense feature set for it"
            )
        X = sparse.hstack(blocks).tocsr().astype(np.float32)
        if X.nnz and X.data.min() < 0:
            raise DataError("heads (nb): a feature block has negative values; naive Bayes needs counts or TF-IDF")
        return X

    def fit(self, blocks, y, n_classes):
        from scipy import sparse

        X = self._stack(blocks)
        self.n_classes, self.classes_ = n_classes, np.unique(y)
        k = np.searchsorted(self.classes_, y)
        Y = sparse.csr_matrix((np.ones(len(y), np.float32), (k, np.arange(len(y)))), shape=(len(self.classes_), len(y)))
        W = np.asarray((Y @ X).todense(), dtype=np.float32)  # n[c, f]: classes x features
        if self.variant == "complement":
            np.subtract(W.sum(0, keepdims=True) + self.alpha, W, out=W)
            W /= W.sum(1, keepdims=True)
            np.log(W, out=W)
            W *= -1
            self.bias = np.zeros(len(self.classes_), np.float32)
        else:
            W += self.alpha
            W /= W.sum(1, keepdims=True)
            np.log(W, out=W)
            self.bias = np.log(np.bincount(k) / len(k)).astype(np.float32)
        self.W = W
        return self

    def joint_log_likelihood(self, blocks):
        return np.asarray(self._stack(blocks) @ self.W.T) + self.bias

    def predict_proba(self, blocks):
        return _expand(
            _softmax_rows(self.joint_log_likelihood(blocks) / self.temperature), self.classes_, self.n_classes
        )
