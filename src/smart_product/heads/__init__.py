"""Stage `train`: the heads. Where things are:

- kinds.py       `HEADS`, the head kinds by name, and `make_head`
- loop.py        the fold loop (`run_head`): fit per fold, OOF + test files, calibration and
                 logit adjustment inside the fold
- stage.py       `train_heads`, the stage: every enabled head, then the pseudo-label rounds
- linear.py      `logreg`, `linear` (LogisticRegression / one-vs-rest LinearSVC over feature blocks),
                 `nb` (complement / multinomial naive Bayes over TF-IDF)
- softmax.py     `softmax` (torch multinomial logistic regression / one-hidden-layer net over TF-IDF)
- mlp.py         `mlp` (the seed's MLP over dense features)
- trees.py       `catboost`
- neighbours.py  `knn` (cosine neighbours over TF-IDF / embeddings), `lfda_knn` (the seed's LFDA + kNN),
                 `listing` (the same shop's listings nearest in product id)
- finetuned.py   `finetuned` (the classifier trained with a per-fold fine-tuned backbone, fold by fold)
- calibrate.py   temperature scaling on an inner split, logit adjustment
- pseudo.py      pseudo-labels for round r from fold-k models only
- tune.py        Optuna search of a head's params (`make tune`)

The level-2 model over the heads' OOF probabilities (stacking) is one of the blend's procedures: ../blend/stack.py.
"""

from __future__ import annotations

from .common import BlockStacker, scores
from .finetuned import FinetunedHead
from .kinds import HEADS, make_head
from .linear import LinearHead, LogRegHead, NaiveBayesHead
from .loop import head_configs, head_names, run_head
from .mlp import MLPHead
from .neighbours import KnnHead, LfdaKnnHead, ListingHead, make_lfda
from .softmax import SoftmaxHead
from .stage import train_heads
from .trees import CatBoostHead
from .tune import tune_head

__all__ = [
    "HEADS",
    "make_head",
    "run_head",
    "train_heads",
    "tune_head",
    "head_configs",
    "head_names",
    "scores",
    "BlockStacker",
    "LinearHead",
    "LogRegHead",
    "NaiveBayesHead",
    "MLPHead",
    "KnnHead",
    "LfdaKnnHead",
    "ListingHead",
    "SoftmaxHead",
    "CatBoostHead",
    "FinetunedHead",
    "make_lfda",
]
