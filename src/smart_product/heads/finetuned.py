"""`finetuned`: the classifier fine-tuned with a per-fold backbone, as a head of its own.

Fine-tuning a backbone for fold k trains a linear class head on its embedding too (backbones.finetune);
the features stage keeps it (features/{set}/fold{k}/class_head.npz). This head fits nothing: its
input is that classifier's logits (features.load_class_logits: fold k's rows through fold k's
classifier, which never saw their labels), its probabilities their softmax. It costs a matrix
product a fold, where a kNN or MLP over the same embedding trains a second model on it.
"""

from __future__ import annotations

import numpy as np

from ..data import DataError
from .linear import _softmax_rows


class FinetunedHead:
    logits = True  # the fold loop hands it the set's classifier logits (loop._head_input)

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, X, y, n_classes):
        if X.shape[1] != n_classes:
            raise DataError(f"finetuned head: {X.shape[1]} logits a row for {n_classes} classes")
        self.n_classes = n_classes
        return self

    def predict_proba(self, X):
        return _softmax_rows(np.asarray(X, np.float64)).astype(np.float32)
