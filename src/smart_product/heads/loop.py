"""The fold loop (`run_head`): for fold k, fit on rows of the other folds (fold -1 rows included),
predict fold k's rows (OOF) and the test rows; test probabilities are averaged over the folds
(or, with `test_from: full`, taken from one fit on all train rows, fold -1). Early stopping,
calibration and anything else fit on labels use an inner split of the training rows, never fold k.

Per head, beside `kind`, `features` and `params`:
- `calibrate: true`: a temperature per fold fit on an inner split (10%) of fold k's training
  rows: from the head's own early-stopping split when it has one (mlp), else from one extra fit
  on the other 90%. OOF log loss before and after goes into metrics.json.
- `logit_adjust: tau`: P / prior^tau with the fold's class prior (calibrate.py).
- `test_from: folds | full`, `max_classes: N`, `enabled: false`.

Pseudo-labels (config `pseudo: {rounds, threshold, heads, sources}`; pseudo.py): round r
refits each of `heads` as `{head}_pl{r}`, its fold k trained on fold k's training rows plus the
test rows that fold k's round r-1 models (of `sources`, default `heads`) label with probability
>= threshold. Fold k's labels never reach them: those models were fit on folds != k.

Artifacts, oof/{head}/: oof.npy (n_train x n_classes float32, NaN rows = never validated),
test.npy (n_test x n_classes), classes.npy (category ids = column order), train_ids.npy,
test_ids.npy, metrics.json (per fold + overall), config.json (the head config it ran with),
test_folds.npy (K x n_test x n_classes float16, each fold model's test probabilities; only for
heads that feed pseudo-labels).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..data import ID, TARGET, DataError, load_split
from ..features import load_features
from ..folds import NEVER, load_folds
from . import HEADS, make_head
from .calibrate import class_prior, fit_temperature, log_loss, logit_adjusted, tempered
from .common import _inner_split, scores

log = logging.getLogger(__name__)


def head_configs(cfg: dict) -> dict:
    heads = cfg.get("heads") or {}
    if not heads:
        raise DataError("config has no heads (heads: {name: {kind: ..., features: [...]}})")
    return heads


def head_names(cfg: dict) -> list[str]:
    """Enabled heads, then their pseudo-label rounds ({head}_pl{r}): what the blend may use."""
    names = [n for n, h in (cfg.get("heads") or {}).items() if (h or {}).get("enabled", True)]
    p = cfg.get("pseudo") or {}
    names += [f"{h}_pl{r}" for r in range(1, int(p.get("rounds", 0)) + 1) for h in p.get("heads") or []]
    return names


def _rows(X, rows):
    return [b[rows] for b in X] if isinstance(X, list) else X[rows]


def _concat(a, b):
    """Rows of b under rows of a (dense matrices, or lists of sparse / dense blocks)."""
    from scipy import sparse

    if isinstance(a, list):
        return [sparse.vstack([x, z]).tocsr() if sparse.issparse(x) else np.concatenate([x, z]) for x, z in zip(a, b)]
    return np.concatenate([a, b])


def _head_input(cfg, name, hcfg, fold, tr_ids, te_ids):
    """The head's features for one fold: a list of blocks for block heads, else one dense matrix."""
    kind = hcfg["kind"]
    if getattr(HEADS.get(kind), "blocks", False):
        return load_features(cfg, hcfg["features"], fold, tr_ids, te_ids, blocks=True)
    Xtr, Xte = load_features(cfg, hcfg["features"], fold, tr_ids, te_ids)
    if not isinstance(Xtr, np.ndarray):
        raise DataError(f"config heads.{name}: kind {kind} needs dense features, but {hcfg['features']} "
                        f"include a sparse set; use kind linear, or tfidf (SVD) instead")
    return Xtr, Xte


def head_key(cfg: dict, hcfg: dict, params: dict, extra=None) -> str:
    """Cache key of a head's OOF files: its config, the feature sets' own keys, the folds."""
    from ..config import config_hash

    root = Path(cfg["out_dir"])
    feat_keys = []
    for f in hcfg.get("features") or []:
        metas = sorted((root / "features" / f).glob("**/meta.json"))
        feat_keys.append([json.loads(m.read_text()).get("key") for m in metas])
    folds = root / "folds" / "folds.csv"
    return config_hash({"head": hcfg, "params": params, "seed": cfg.get("seed", 0), "k": cfg.get("folds", {}).get("k"),
                        "features": feat_keys, "folds": folds.read_text() if folds.is_file() else None,
                        **({"extra": extra} if extra else {})})


def _temperature(hcfg, params, seed, model, Xfit, yfit, n_true, n_classes, post):
    """Fold temperature from an inner split of the fold's training rows (the first n_true of Xfit
    are train rows, pseudo-labelled test rows follow). A head with its own early-stopping split
    (mlp, catboost) is calibrated on that split, which in a pseudo-label round may hold
    pseudo-labelled rows too; otherwise pseudo-labelled rows always stay in the inner fit."""
    inner_val = getattr(model, "inner_val", None)
    if inner_val is not None and inner_val.any():  # the head's own early-stopping split
        P = post(model.predict_proba(_rows(Xfit, inner_val)))
        return fit_temperature(P, yfit[inner_val])
    fit, val = _inner_split(yfit[:n_true], 0.1, seed)
    if not val.any():
        return 1.0
    fit = np.concatenate([fit, np.ones(len(yfit) - n_true, bool)])
    val = np.concatenate([val, np.zeros(len(yfit) - n_true, bool)])
    inner = make_head(hcfg["kind"], params, seed).fit(_rows(Xfit, fit), yfit[fit], n_classes)
    return fit_temperature(post(inner.predict_proba(_rows(Xfit, val))), yfit[val])


def run_head(cfg: dict, name: str, params: dict | None = None, folds_to_run=None, write: bool = True,
             force: bool = False, pseudo: dict | None = None, out_name: str | None = None,
             save_test_folds: bool = False) -> dict:
    """Fit head `name` on every fold; write oof/{out_name or name}/; return its metrics.

    `params` overrides the config's params (tuning); `folds_to_run` limits the folds (tuning).
    `pseudo`: {fold: (test_rows_mask, labels)} test rows added to fold k's training rows.
    A head whose config, features and folds are unchanged since its last run is not refit
    (its metrics are returned from oof/{name}/metrics.json) unless `force`.
    """
    from tqdm import tqdm

    hcfg = head_configs(cfg).get(name)
    if hcfg is None:
        raise DataError(f"no head named {name!r} in the config ({sorted(head_configs(cfg))})")
    seed = int(cfg.get("seed", 0))
    feats = hcfg.get("features") or []
    if not feats:
        raise DataError(f"config heads.{name}: features list is empty")
    out_name = out_name or name
    out = Path(cfg["out_dir"]) / "oof" / out_name
    params = {**(hcfg.get("params") or {}), **(params or {})}
    pseudo_key = None if pseudo is None else {k: [np.flatnonzero(m).tolist(), lab[m].tolist()]
                                              for k, (m, lab) in sorted(pseudo.items())}
    key = head_key(cfg, hcfg, params, pseudo_key)
    if write and not force and folds_to_run is None and (out / "metrics.json").is_file() and (out / "oof.npy").is_file():
        stored = json.loads((out / "metrics.json").read_text())
        if stored.get("key") == key and (not save_test_folds or (out / "test_folds.npy").is_file()):
            log.info("oof/%s: cached (config, features and folds unchanged), nothing to do", out_name)
            return stored
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    test = load_split(cfg["data_dir"], "test", parse_text=False)
    fold_of_row = load_folds(cfg, train)
    classes, y = np.unique(train[TARGET].to_numpy(), return_inverse=True)
    n_classes, k = len(classes), int(cfg.get("folds", {}).get("k", 5))
    tr_ids, te_ids = train[ID].to_numpy(), test[ID].to_numpy()
    oof = np.full((len(train), n_classes), np.nan, np.float32)
    test_pred = np.zeros((len(test), n_classes), np.float32)
    folds_to_run = list(range(k)) if folds_to_run is None else list(folds_to_run)
    test_folds = np.zeros((len(folds_to_run), len(test), n_classes), np.float16) if save_test_folds else None
    calibrate, tau = bool(hcfg.get("calibrate", False)), float(hcfg.get("logit_adjust") or 0.0)
    per_fold, t_all = [], time.time()
    for i, fold in enumerate(tqdm(folds_to_run, desc=f"{out_name} folds", mininterval=1)):
        t0 = time.time()
        Xtr, Xte = _head_input(cfg, name, hcfg, fold, tr_ids, te_ids)
        fit_rows, val_rows = fold_of_row != fold, fold_of_row == fold
        Xfit, yfit = _rows(Xtr, fit_rows), y[fit_rows]
        n_pseudo = 0
        if pseudo is not None and fold in pseudo:
            mask, labels = pseudo[fold]
            n_pseudo = int(mask.sum())
            Xfit, yfit = _concat(Xfit, _rows(Xte, mask)), np.concatenate([y[fit_rows], labels[mask]])
        model = make_head(hcfg["kind"], params, seed).fit(Xfit, yfit, n_classes)
        prior = class_prior(y[fit_rows], n_classes)

        def post(P):
            return logit_adjusted(P, prior, tau)

        P_val = post(model.predict_proba(_rows(Xtr, val_rows)))
        P_te = post(model.predict_proba(Xte))
        m = {}
        if calibrate:
            T = _temperature(hcfg, params, seed, model, Xfit, yfit, int(fit_rows.sum()), n_classes, post)
            ll_raw = log_loss(P_val, y[val_rows])
            P_val, P_te = tempered(P_val, T), tempered(P_te, T)
            m.update(temperature=round(T, 4), logloss_raw=round(ll_raw, 5))
        oof[val_rows] = P_val
        test_pred += P_te / len(folds_to_run)
        if test_folds is not None:
            test_folds[i] = P_te
        m.update(scores(y[val_rows], oof[val_rows].argmax(1)))
        m.update(fold=fold, seconds=round(time.time() - t0, 2), fit_rows=int(fit_rows.sum()), pseudo_rows=n_pseudo,
                 logloss=round(log_loss(oof[val_rows], y[val_rows]), 5),
                 best_iteration=getattr(model, "best_iteration", None))
        per_fold.append(m)
        log.info("%s fold %d: weighted F1 %.4f, macro F1 %.4f, acc %.4f (%d rows, %.1fs)%s", out_name, fold,
                 m["weighted_f1"], m["macro_f1"], m["accuracy"], m["rows"], m["seconds"],
                 f", log loss {m['logloss_raw']:.4f} -> {m['logloss']:.4f} at T={m['temperature']:.3f}" if calibrate else "")
    if hcfg.get("test_from") == "full" and pseudo is None:  # fold -1: one fit on all train rows for the test rows
        Xtr, Xte = _head_input(cfg, name, hcfg, -1, tr_ids, te_ids)
        test_pred = logit_adjusted(make_head(hcfg["kind"], params, seed).fit(Xtr, y, n_classes).predict_proba(Xte),
                                   class_prior(y, n_classes), tau)
        if calibrate:  # the folds' temperatures, geometric mean
            test_pred = tempered(test_pred, float(np.exp(np.mean([np.log(m["temperature"]) for m in per_fold]))))
    has = ~np.isnan(oof).any(1)
    overall = scores(y[has], oof[has].argmax(1))
    overall["logloss"] = round(log_loss(oof[has], y[has]), 5)
    if calibrate:
        overall["logloss_raw"] = round(float(np.average([m["logloss_raw"] for m in per_fold],
                                                        weights=[m["rows"] for m in per_fold])), 5)
    never = int((fold_of_row == NEVER).sum())
    metrics = {"head": out_name, "key": key, "kind": hcfg["kind"], "features": feats, "params": params,
               "calibrate": calibrate, "logit_adjust": tau, "overall": overall,
               "folds": per_fold, "never_validated_rows": never, "n_classes": int(n_classes),
               "seconds": round(time.time() - t_all, 2)}
    log.info("%s OOF: weighted F1 %.4f, macro F1 %.4f, acc %.4f on %d rows (%d never-validated rows "
             "excluded)", out_name, overall["weighted_f1"], overall["macro_f1"], overall["accuracy"], overall["rows"], never)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # written last: marks the folder finished
        np.save(out / "oof.npy", oof)
        np.save(out / "test.npy", test_pred)
        np.save(out / "classes.npy", classes)
        np.save(out / "train_ids.npy", tr_ids)
        np.save(out / "test_ids.npy", te_ids)
        if test_folds is not None:
            np.save(out / "test_folds.npy", test_folds)
        (out / "config.json").write_text(json.dumps({"head": hcfg, "params": params, "seed": seed,
                                                     "data_dir": cfg["data_dir"]}, indent=2, default=str))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def train_heads(cfg: dict, only: list[str] | None = None, force: bool = False) -> dict:
    """Run the enabled heads (or `only` these), then the pseudo-label rounds. A head with
    `max_classes: N` is skipped, with a log line, on a catalogue of more classes: a one-vs-rest
    liblinear head fits one problem per class."""
    from .pseudo import pseudo_config, run_pseudo_rounds

    heads = head_configs(cfg)
    names = only or [n for n, h in heads.items() if h.get("enabled", True)]
    limits = {n: int(heads[n]["max_classes"]) for n in names if not only and (heads.get(n) or {}).get("max_classes")}
    if limits:
        n_classes = load_split(cfg["data_dir"], "train", parse_text=False)[TARGET].nunique()
        for n, limit in limits.items():
            if n_classes > limit:
                log.warning("heads.%s: skipped, the catalogue has %d classes > its max_classes %d", n, n_classes, limit)
                names.remove(n)
    pcfg = pseudo_config(cfg)
    skipped = [h for h in pcfg["heads"] + pcfg["sources"] if h not in names and not only]
    if pcfg["rounds"] and skipped:
        log.warning("pseudo: %s skipped on this catalogue; no pseudo-label rounds", sorted(set(skipped)))
        pcfg["rounds"] = 0
    sources = set(pcfg["sources"]) if pcfg["rounds"] else set()
    results = {n: run_head(cfg, n, force=force, save_test_folds=n in sources) for n in names}
    if pcfg["rounds"] and not only:
        results.update(run_pseudo_rounds(cfg, pcfg, force=force))
    return results
