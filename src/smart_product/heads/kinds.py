"""The head kinds by name (`kind:` in a config's heads) and `make_head`."""

from __future__ import annotations

from ..data import DataError
from .finetuned import FinetunedHead
from .linear import LinearHead, LogRegHead, NaiveBayesHead
from .mlp import MLPHead
from .neighbours import KnnHead, LfdaKnnHead, ListingHead
from .softmax import SoftmaxHead
from .trees import CatBoostHead

HEADS = {
    "logreg": LogRegHead,
    "linear": LinearHead,
    "softmax": SoftmaxHead,
    "catboost": CatBoostHead,
    "mlp": MLPHead,
    "lfda_knn": LfdaKnnHead,
    "knn": KnnHead,
    "listing": ListingHead,
    "nb": NaiveBayesHead,
    "finetuned": FinetunedHead,
}


def make_head(kind: str, params: dict | None, seed: int = 0):
    if kind not in HEADS:
        raise DataError(f"config heads: unknown kind {kind!r} (one of {sorted(HEADS)})")
    params = dict(params or {})
    params.setdefault("seed", seed)
    try:
        return HEADS[kind](**params)
    except TypeError as exc:
        raise DataError(f"config heads ({kind}): {exc}") from None
