"""The weighted searches' parts: a blend is P = sum_h w_h * softmax(log P_h / T_h), w_h >= 0, a
temperature T_h per head (or 1). Optuna searches the weights (`search_weights`) on at most
`blend.max_rows` rows (`subsample`); `fold_splits` and `out_of_fold` score a choice of weights
held out, fold k's rows by the weights chosen on the other folds' rows; `fold_tempered_test` gives
a head's test probabilities under a temperature as its OOF rows got it."""

from __future__ import annotations

import numpy as np

from ..heads import scores
from ..heads.calibrate import tempered


def combine(probs: list[np.ndarray], weights, temps=None) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
    temps = temps or [1.0] * len(probs)
    out = np.zeros_like(probs[0], dtype=np.float32)
    for p, wi, t in zip(probs, w, temps):
        if wi > 0:
            out += np.float32(wi) * tempered(p, t)
    return out


def _objective_value(P, y, metric: str) -> float:
    if metric == "logloss":
        return float(-np.log(np.clip(P[np.arange(len(y)), y], 1e-9, 1)).mean())
    return scores(y, P.argmax(1))["weighted_f1"]


def search_weights(probs, y, n_trials: int = 100, temperature: bool = False, metric: str = "f1", seed: int = 0) -> dict:
    """Optuna over non-negative weights (and temperatures) on these rows; returns the best."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    h = len(probs)
    direction = "minimize" if metric == "logloss" else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    for i in range(h):  # each head alone, then the equal-weight mean
        study.enqueue_trial(
            {**{f"w{j}": float(j == i) for j in range(h)}, **({f"t{j}": 1.0 for j in range(h)} if temperature else {})}
        )
    study.enqueue_trial(
        {**{f"w{j}": 1.0 for j in range(h)}, **({f"t{j}": 1.0 for j in range(h)} if temperature else {})}
    )

    def objective(trial):
        w = [trial.suggest_float(f"w{j}", 0.0, 1.0) for j in range(h)]
        if sum(w) == 0:
            return float("inf") if direction == "minimize" else 0.0
        t = [trial.suggest_float(f"t{j}", 0.3, 3.0, log=True) for j in range(h)] if temperature else None
        return _objective_value(combine(probs, w, t), y, metric)

    study.optimize(objective, n_trials=max(n_trials, h + 1))
    p = study.best_params
    w = np.array([p[f"w{j}"] for j in range(h)])
    return {
        "weights": (w / w.sum()).tolist(),
        "temperatures": [p[f"t{j}"] for j in range(h)] if temperature else [1.0] * h,
        "value": study.best_value,
    }


def subsample(rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Indices of the True rows, or a seeded sample of `max_rows` of them (sorted)."""
    idx = np.flatnonzero(rows)
    if len(idx) <= max_rows:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, max_rows, replace=False))


def fold_splits(folds: np.ndarray, has: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(choice rows, scored rows) per fold: fold k's OOF rows are scored by a choice made on the
    other folds' OOF rows, so the choice has 80% of the rows (K=5), as the final blend's has all."""
    return [(has & (folds != k), has & (folds == k)) for k in sorted(set(folds[has].tolist()))]


def out_of_fold(choose, probs: list[np.ndarray], splits) -> np.ndarray:
    """Class predictions of a weight procedure, each fold's rows combined with the weights that
    `choose(rows)` picks on the other folds' rows (`splits`: fold_splits); other rows 0."""
    pred = np.zeros(len(probs[0]), np.int64)
    for fit_rows, score_rows in splits:
        w = choose(fit_rows)
        pred[score_rows] = combine([p[score_rows] for p in probs], w["weights"], w["temperatures"]).argmax(1)
    return pred


def fold_tempered_test(run: dict, T: float) -> np.ndarray:
    """A head's test probabilities for a weight procedure with temperature T. The temperature was
    chosen on OOF rows, each one fold model's prediction, so it is applied to each fold model's
    test probabilities before they are averaged (test_folds.npy); a head whose test.npy is one full
    fit (`test_from: full`) is a single model's already. T = 1: test.npy as it is."""
    full = (run["metrics"].get("fold_keys") or {}).get("-1") is not None
    if T == 1.0 or full or run.get("test_folds") is None:
        return tempered(run["test"], T)
    F = run["test_folds"]
    return sum(tempered(np.asarray(F[k], np.float32), T) for k in range(len(F))) / len(F)
