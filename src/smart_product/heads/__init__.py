"""Stage `train`: the heads. Where things are:

- loop.py        the fold loop (`run_head`, `train_heads`): fit per fold, OOF + test files,
                 calibration and logit adjustment inside the fold, pseudo-label rounds
- linear.py      `logreg`, `linear` (LogisticRegression / one-vs-rest LinearSVC over feature blocks),
                 `nb` (complement / multinomial naive Bayes over TF-IDF)
- softmax.py     `softmax` (torch multinomial logistic regression / one-hidden-layer net over TF-IDF)
- mlp.py         `mlp` (the seed's MLP over dense features)
- trees.py       `catboost`
- neighbours.py  `knn` (cosine neighbours over TF-IDF / embeddings), `lfda_knn` (the seed's LFDA + kNN),
                 `listing` (the same shop's listings nearest in product id)
- calibrate.py   temperature scaling on an inner split, logit adjustment
- pseudo.py      pseudo-labels for round r from fold-k models only
- tune.py        Optuna search of a head's params (`make tune`)

The level-2 model over the heads' OOF probabilities (stacking) sits beside the blend: stack.py.
"""
from __future__ import annotations

from ..data import DataError
from .common import BlockStacker, scores
from .linear import LinearHead, LogRegHead, NaiveBayesHead
from .mlp import MLPHead
from .neighbours import KnnHead, LfdaKnnHead, ListingHead, make_lfda
from .softmax import SoftmaxHead
from .trees import CatBoostHead

HEADS = {"logreg": LogRegHead, "linear": LinearHead, "softmax": SoftmaxHead, "catboost": CatBoostHead,
         "mlp": MLPHead, "lfda_knn": LfdaKnnHead, "knn": KnnHead, "listing": ListingHead,
         "nb": NaiveBayesHead}


def make_head(kind: str, params: dict | None, seed: int = 0):
    if kind not in HEADS:
        raise DataError(f"config heads: unknown kind {kind!r} (one of {sorted(HEADS)})")
    params = dict(params or {})
    params.setdefault("seed", seed)
    try:
        return HEADS[kind](**params)
    except TypeError as exc:
        raise DataError(f"config heads ({kind}): {exc}") from None


from .loop import head_configs, head_names, run_head, train_heads  # noqa: E402  (the loop uses make_head)
from .tune import tune_head  # noqa: E402

__all__ = ["HEADS", "make_head", "run_head", "train_heads", "tune_head", "head_configs", "head_names", "scores",
           "BlockStacker", "LinearHead", "LogRegHead", "NaiveBayesHead", "MLPHead", "KnnHead", "LfdaKnnHead", "ListingHead", "SoftmaxHead",
           "CatBoostHead", "make_lfda"]
