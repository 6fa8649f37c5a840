"""Post-hoc corrections of a head's probabilities, fit inside the fold loop on fold-k-free rows.

- Temperature scaling: P_T = softmax(log P / T), T minimising the log loss on an inner split of
  the fold's training rows (never fold k), so one-vs-rest SVM scores (softmax of margins) and
  over-confident nets blend on one scale. One scalar per fold: it changes confidence, not the
  argmax, so a head's own F1 is unchanged.
- Logit adjustment (long tail): P_tau ~ P / prior^tau, the prior from the fold's training rows
  (Menon et al., 2021, post-hoc form). It moves decisions towards rare classes; weighted F1
  rewards frequent ones, so tau is a config choice made on OOF (the bench's ablation prints it).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def log_loss(P: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(P[np.arange(len(y)), y], EPS, 1.0)).mean())


def tempered(P: np.ndarray, T: float) -> np.ndarray:
    """softmax(log P / T), row-wise, float32; classes with P = 0 stay 0."""
    if T == 1.0:
        return P.astype(np.float32, copy=False)
    logp = np.log(np.maximum(P, EPS)) / T
    logp -= logp.max(1, keepdims=True)
    out = np.exp(logp) * (P > 0)
    return (out / np.maximum(out.sum(1, keepdims=True), EPS)).astype(np.float32)


def fit_temperature(P: np.ndarray, y: np.ndarray, bounds=(0.05, 20.0)) -> float:
    """The T in `bounds` that minimises the log loss of softmax(log P / T) on (P, y)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    logp = np.log(np.maximum(P, EPS)).astype(np.float64)
    mask = P > 0

    def nll(log_t):
        z = np.where(mask, logp / np.exp(log_t), -np.inf)
        z -= z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float(-(z[np.arange(len(y)), y] - lse).clip(-50, None).mean())

    res = minimize_scalar(nll, bounds=np.log(bounds), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(res.x))


def class_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class frequencies of these rows, add-one smoothed (a class with no row still has a prior)."""
    cnt = np.bincount(y, minlength=n_classes).astype(np.float64) + 1.0
    return cnt / cnt.sum()


def logit_adjusted(P: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """P / prior^tau, renormalised (tau = 0: unchanged)."""
    if not tau:
        return P
    out = P * (prior**-tau).astype(np.float32)
    return (out / np.maximum(out.sum(1, keepdims=True), EPS)).astype(np.float32)
