"""Neighbour heads: `lfda_knn` (the seed's imbalanced-learn + metric-learn pipeline), `knn`
(cosine neighbours over sparse TF-IDF and/or embeddings: a head that recognises listings it has seen)
and `listing` (the same shop's listings nearest in product id: sellers list in batches)."""

from __future__ import annotations

import warnings

import numpy as np

from ..data import DataError
from .common import _expand


def _stable_eigh(a, b, dim):
    """Top-`dim` generalized eigenpairs, dense and deterministic, signs fixed (largest entry > 0)."""
    from scipy.linalg import eigh

    n = a.shape[0]
    for ridge in (0.0, 1e-6, 1e-4, 1e-2, 1.0):  # a singular within-class scatter (few rows a class): regularise
        try:
            vals, vecs = eigh(
                a, b + ridge * max(np.trace(b) / n, 1e-12) * np.eye(n), subset_by_index=[max(0, n - dim), n - 1]
            )
            break
        except np.linalg.LinAlgError:
            if ridge == 1.0:
                raise
    signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    return vals, vecs * np.where(signs == 0, 1, signs)


def make_lfda(**kw):
    """metric-learn's LFDA with a deterministic eigensolver: its ARPACK call starts from a random
    vector, so two fits on the same data differed and the same seed did not reproduce OOF F1."""
    import metric_learn.lfda as lfda_mod

    class StableLFDA(lfda_mod.LFDA):
        def fit(self, X, y):
            original, lfda_mod._eigh = lfda_mod._eigh, _stable_eigh
            try:
                return super().fit(X, y)
            finally:
                lfda_mod._eigh = original

    return StableLFDA(**kw)


class LfdaKnnHead:
    """RandomOverSampler -> [RandomUnderSampler] -> (scaler, PCA) -> LFDA -> kNN, the seed's pipeline."""

    def __init__(
        self,
        min_count: int = 8,
        max_count: int | None = None,
        pca_dim: int = 128,
        n_components: int = 48,
        lfda_k: int = 7,
        n_neighbors: int = 15,
        seed: int = 0,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def fit(self, X, y, n_classes):
        from imblearn.over_sampling import RandomOverSampler
        from imblearn.pipeline import Pipeline
        from imblearn.under_sampling import RandomUnderSampler
        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.preprocessing import StandardScaler

        self.n_classes = n_classes
        counts = dict(zip(*np.unique(y, return_counts=True)))
        steps = [
            (
                "over",
                RandomOverSampler(
                    sampling_strategy={c: max(n, self.min_count) for c, n in counts.items()}, random_state=self.seed
                ),
            )
        ]
        if self.max_count:
            steps.append(
                (
                    "under",
                    RandomUnderSampler(
                        sampling_strategy={c: min(max(n, self.min_count), self.max_count) for c, n in counts.items()},
                        random_state=self.seed,
                    ),
                )
            )
        dim = min(self.pca_dim, X.shape[1], len(X) - 1)
        steps += [
            ("scale", StandardScaler()),
            ("pca", PCA(dim, random_state=self.seed)),
            ("lfda", make_lfda(n_components=min(self.n_components, dim), k=self.lfda_k)),
            ("knn", KNeighborsClassifier(self.n_neighbors, weights="distance")),
        ]
        self.model = Pipeline(steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(X, y)
        return self

    def predict_proba(self, X):
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


class KnnHead:
    """Cosine kNN over feature blocks (sparse TF-IDF as is, dense embeddings scaled as in
    BlockStacker; rows L2-normalised): class scores from the `n_neighbors` nearest training rows,

        score_c = sum over neighbours i of class c of exp((cos_i - cos_max) / temperature),
        P = (1 - alpha) * score / sum(score) + alpha * prior

    so an exact duplicate (cos 1) outweighs a handful of looser matches, and a row with no
    neighbour at all (no shared TF-IDF term) gets the prior. Sparse inputs use sparse_dot_topn's multi-threaded
    top-n product; dense ones a matrix product and torch's top-k, in chunks of queries whose cosines
    take at most `chunk_bytes` (at 73k training rows of a 1,280-d photo embedding, a 4,096-row chunk
    with argpartition's index array took ~5 GB; 256 MB: ~900 rows)."""

    blocks = True

    def __init__(
        self,
        n_neighbors: int = 20,
        temperature: float = 0.05,
        alpha: float = 0.01,
        dense_weight: float = 0.5,
        chunk: int = 4096,
        chunk_bytes: int = 2**28,
        seed: int = 0,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def _matrix(self, blocks):
        from sklearn.preprocessing import normalize

        X = self.stacker.transform(blocks)
        return normalize(X, norm="l2", copy=False).astype(np.float32)

    def fit(self, blocks, y, n_classes):
        from .common import BlockStacker

        self.n_classes = n_classes
        self.stacker = BlockStacker(self.dense_weight).fit(blocks)
        X = self._matrix(blocks)
        self.y = np.asarray(y)
        self.prior = np.bincount(self.y, minlength=n_classes).astype(np.float32) / len(self.y)
        self.n_train, self.dense = X.shape[0], X.nnz > 0.2 * X.shape[0] * X.shape[1]
        if self.dense:
            import torch

            self.Xd = torch.from_numpy(X.toarray())
        else:
            self.XT = X.T.tocsr()
        return self

    def neighbours(self, blocks):
        """(indices, cosines) of the nearest training rows, n_rows x n_neighbors (-1 / 0 = none)."""
        from ..config import n_cpus

        Q = self._matrix(blocks)
        n, kk = Q.shape[0], min(self.n_neighbors, self.n_train)
        idx = np.full((n, kk), -1, np.int64)
        sim = np.zeros((n, kk), np.float32)
        step = max(1, min(self.chunk, self.chunk_bytes // (4 * self.n_train))) if self.dense else self.chunk
        for s in range(0, n, step):
            q = Q[s : s + step]
            if self.dense:
                import torch

                top = torch.topk(torch.from_numpy(q.toarray()) @ self.Xd.T, kk, dim=1, sorted=False)
                idx[s : s + q.shape[0]], sim[s : s + q.shape[0]] = top.indices.numpy(), top.values.numpy()
                continue
            from sparse_dot_topn import sp_matmul_topn

            S = sp_matmul_topn(q, self.XT, top_n=kk, threshold=1e-6, n_threads=n_cpus()).tocsr()
            for r in range(S.shape[0]):
                a, b = S.indptr[r], S.indptr[r + 1]
                idx[s + r, : b - a], sim[s + r, : b - a] = S.indices[a:b], S.data[a:b]
        return idx, sim

    def predict_proba(self, blocks):
        idx, sim = self.neighbours(blocks)
        sim = np.where(idx >= 0, np.clip(sim, -1, 1), -np.inf)
        w = np.exp((sim - sim.max(1, keepdims=True).clip(-1, None)) / self.temperature).astype(np.float32)
        scores = np.zeros((len(idx), self.n_classes), np.float32)
        rows = np.repeat(np.arange(len(idx)), idx.shape[1])
        np.add.at(scores, (rows, self.y[np.maximum(idx, 0)].ravel()), w.ravel())
        total = scores.sum(1, keepdims=True)
        P = np.where(total > 0, (1 - self.alpha) * scores / np.maximum(total, 1e-30), 0) + self.alpha * self.prior
        return (P / P.sum(1, keepdims=True)).astype(np.float32)


class ListingHead:
    """Neighbours in listing order (`kind: listing`, over a `listing` feature set: shop code, id rank):
    the classes of the `n_neighbors` training listings of the same shop nearest in product-id rank,

        P = (sum over those neighbours of onehot(class) + alpha * prior) / (n found + alpha)

    A row whose shop has no training listing gets the prior. Alone it is weak (ozon OOF 0.53); it
    carries what no text head sees, the seller's upload batches, and the stacker weighs it. On a
    catalogue whose ids carry no order it is the shop's class mix at best."""

    def __init__(self, n_neighbors: int = 1, alpha: float = 0.5, seed: int = 0):
        if int(n_neighbors) < 1 or float(alpha) <= 0:
            raise DataError(
                f"config heads (listing): n_neighbors must be >= 1 and alpha > 0, not {n_neighbors} and {alpha}"
            )
        self.n_neighbors, self.alpha, self.seed = int(n_neighbors), float(alpha), seed

    @staticmethod
    def _keys(X):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != 2:
            raise DataError(
                f"listing head: needs the listing feature set alone (shop code, id rank), got "
                f"{X.shape[1] if X.ndim == 2 else X.ndim} columns"
            )
        shop, rank = X[:, 0].astype(np.int64), X[:, 1].astype(np.int64)
        return shop, rank, shop << 32 | rank

    def fit(self, X, y, n_classes):
        shop, rank, key = self._keys(X)
        order = np.argsort(key, kind="stable")
        self.key, self.shop, self.rank, self.y = key[order], shop[order], rank[order], np.asarray(y)[order]
        self.n_classes = n_classes
        self.prior = (np.bincount(self.y, minlength=n_classes) / len(self.y)).astype(np.float32)
        return self

    def neighbours(self, X):
        """(indices into the sorted training rows, found mask), n_rows x n_neighbors, nearest first:
        the k nearest of a shop's listings lie among the k on each side of the row's place."""
        shop, rank, key = self._keys(X)
        k, n = self.n_neighbors, len(self.key)
        idx = np.searchsorted(self.key, key)[:, None] + np.arange(-k, k)[None, :]
        ok = (idx >= 0) & (idx < n)
        idx = np.clip(idx, 0, n - 1)
        ok &= self.shop[idx] == shop[:, None]
        dist = np.where(ok, np.abs(self.rank[idx] - rank[:, None]), np.iinfo(np.int64).max)
        near = np.argsort(dist, 1, kind="stable")[:, :k]
        return np.take_along_axis(idx, near, 1), np.take_along_axis(ok, near, 1)

    def predict_proba(self, X):
        idx, found = self.neighbours(X)
        counts = np.zeros((len(idx), self.n_classes), np.float32)
        rows = np.repeat(np.arange(len(idx)), idx.shape[1])
        np.add.at(counts, (rows, self.y[idx].ravel()), found.ravel().astype(np.float32))
        P = (counts + self.alpha * self.prior) / (found.sum(1, keepdims=True) + self.alpha)
        return P.astype(np.float32)
