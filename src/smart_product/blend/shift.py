"""How much worse a model does on the test rows than on its OOF rows, estimated without test labels.

A fold model scores its own fold's rows (OOF) and the test rows. Where the two kinds of row differ
(new products, new shops, another time), a model can be right less often on the test rows than on
its OOF rows: its OOF score then promises more than it delivers, and a blend that weighs the heads
by OOF follows that promise. The labels of the test rows are unknown, but each fold model's
confidence on them is not.

`fold_shift` uses the average thresholded confidence (ATC; Garg et al., ICLR 2022, "Leveraging
unlabeled data to predict out-of-distribution performance"): for fold model k, the threshold t_k
on the top probability above which the share of fold k's OOF rows equals their accuracy; the
estimated test accuracy is the share of test rows above t_k (from fold model k's test
probabilities). The gap is the mean over k of OOF accuracy - estimated test accuracy. No label of
a test row is read, and each fold model is compared only with the rows it never saw.
"""

from __future__ import annotations

import numpy as np


def confidence(P: np.ndarray) -> np.ndarray:
    """A row's confidence: its top probability (NaN rows: NaN)."""
    return np.asarray(P, np.float32).max(1)


def atc_threshold(conf: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(t, w): the confidence t above which the share of rows, counting the rows at exactly t with
    weight w, equals their accuracy (ties matter: float16 test probabilities sit at 1.0 in bulk)."""
    if not len(conf):
        return 0.5, 1.0
    acc = float(np.mean(correct))
    t = float(np.quantile(conf, 1.0 - acc))
    above, at = float(np.mean(conf > t)), float(np.mean(conf == t))
    return t, (float(np.clip((acc - above) / at, 0.0, 1.0)) if at else 1.0)


def share_above(conf: np.ndarray, t: float, w: float) -> float:
    return float(np.mean(conf > t) + w * np.mean(conf == t)) if len(conf) else 0.0


def fold_model_shift(P_oof: np.ndarray, y: np.ndarray, P_test: np.ndarray) -> dict:
    """One fold model: its accuracy on its OOF rows and its estimated accuracy on the test rows."""
    correct = P_oof.argmax(1) == y
    t, w = atc_threshold(confidence(P_oof), correct)
    est = share_above(confidence(np.asarray(P_test, np.float32)), t, w)
    return {"oof_acc": round(float(correct.mean()), 4), "test_acc_est": round(est, 4)}


def shift_summary(per_fold: list[dict]) -> dict:
    """The fold models' mean OOF accuracy, mean estimated test accuracy and their difference (gap)."""
    oof_acc = float(np.mean([f["oof_acc"] for f in per_fold]))
    est = float(np.mean([f["test_acc_est"] for f in per_fold]))
    return {"oof_acc": round(oof_acc, 4), "test_acc_est": round(est, 4), "gap": round(oof_acc - est, 4)}


def fold_shift(oof: np.ndarray, y: np.ndarray, folds: np.ndarray, has: np.ndarray, test_folds) -> dict:
    """Estimated OOF - test accuracy of one model's fold models (module doc). test_folds: fold model
    i's test probabilities for the i-th of the sorted validated folds (a K x n_test x C array or a
    list). Returns {oof_acc, test_acc_est, gap, folds: [{fold, oof_acc, test_acc_est}]}."""
    ks = sorted(set(folds[has].tolist()))
    per = []
    for i, k in enumerate(ks):
        rows = has & (folds == k)
        per.append({"fold": int(k), **fold_model_shift(oof[rows], y[rows], test_folds[i])})
    return {**shift_summary(per), "folds": per}


def agreement_shift(oofs: list, tests: list, folds: np.ndarray, has: np.ndarray) -> list[dict]:
    """Per head: how often it agrees with the other heads' mean (argmax) on the OOF rows against on
    the test rows, fold model k with fold models k (tests: per head the K x n_test x C array). A head
    that drops more than the others on the test rows agrees with them less there than on its OOF
    rows; a shift shared by every head moves every head alike. Returns [{agree_oof, agree_test, drop}]."""
    ks = sorted(set(folds[has].tolist()))
    out = []
    if len(oofs) < 2:
        raise ValueError("agreement_shift: needs two heads or more")
    for h in range(len(oofs)):
        others = [j for j in range(len(oofs)) if j != h]
        a_oof, a_test = [], []
        for i, k in enumerate(ks):
            rows = has & (folds == k)
            ref = sum(oofs[j][rows] for j in others).argmax(1)
            a_oof.append(float(np.mean(oofs[h][rows].argmax(1) == ref)))
            ref_t = sum(np.asarray(tests[j][i], np.float32) for j in others).argmax(1)
            a_test.append(float(np.mean(np.asarray(tests[h][i], np.float32).argmax(1) == ref_t)))
        out.append({"agree_oof": float(np.mean(a_oof)), "agree_test": float(np.mean(a_test))})
        out[-1]["drop"] = out[-1]["agree_oof"] - out[-1]["agree_test"]
    return out


def head_shifts(heads: list[str], oofs: list, runs: list[dict], y, folds, has) -> dict:
    """{head: {oof_acc, test_acc_est, gap, agree_oof, agree_test, drop}} of the heads that keep their
    fold models' test probabilities (every head the stacker can read)."""
    keep = [i for i, r in enumerate(runs) if r.get("test_folds") is not None]
    if not keep:
        return {}
    agree = (
        agreement_shift([oofs[i] for i in keep], [runs[i]["test_folds"] for i in keep], folds, has)
        if len(keep) > 1
        else [{}] * len(keep)  # one head: no other to agree with
    )
    out = {}
    for i, a in zip(keep, agree):
        est = fold_shift(oofs[i], y, folds, has, runs[i]["test_folds"])
        out[heads[i]] = {k: round(v, 4) for k, v in {**est, **a}.items() if k != "folds"}
    return out
