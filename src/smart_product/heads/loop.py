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
test_folds.npy (K x n_test x n_classes float16, each fold model's test probabilities: the blend's
stacker scores them fold by fold, as it scored the OOF rows, and pseudo-label rounds read them).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..data import ID, TARGET, DataError, label_array, load_split
from ..features import load_class_logits, load_features
from ..folds import NEVER, load_folds
from .calibrate import class_prior, fit_temperature, log_loss, logit_adjusted, tempered
from .common import _inner_split, scores
from .kinds import HEADS, make_head

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


def _head_input(cfg, name, hcfg, fold, tr_ids, te_ids, classes):
    """The head's features for one fold: a list of blocks for block heads, a fine-tuned set's
    classifier logits for `finetuned` heads, else one dense matrix."""
    kind = hcfg["kind"]
    if getattr(HEADS.get(kind), "logits", False):
        return load_class_logits(cfg, hcfg["features"], fold, tr_ids, te_ids, classes)
    if getattr(HEADS.get(kind), "blocks", False):
        return load_features(cfg, hcfg["features"], fold, tr_ids, te_ids, blocks=True)
    Xtr, Xte = load_features(cfg, hcfg["features"], fold, tr_ids, te_ids)
    if not isinstance(Xtr, np.ndarray):
        raise DataError(
            f"config heads.{name}: kind {kind} needs dense features, but {hcfg['features']} "
            f"include a sparse set; use kind linear, or tfidf (SVD) instead"
        )
    return Xtr, Xte


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


def fold_key(cfg: dict, hcfg: dict, params: dict, fold: int, pseudo_fold=None) -> str:
    """Cache key of one fold's files: the head's config, the folds, and only the feature files that
    fold reads (a fine-tuned set's fold{k}/meta.json), so FOLD=k jobs run in any order."""
    from ..config import config_hash
    from ..features import feature_sets, is_per_fold

    root = Path(cfg["out_dir"])
    sets = feature_sets(cfg)
    feat_keys = []
    for f in hcfg.get("features") or []:
        meta = root / "features" / f / (f"fold{fold}" if f in sets and is_per_fold(sets[f]) else "") / "meta.json"
        if not meta.is_file():
            meta = root / "features" / f / "meta.json"  # a skipped set's marker
        feat_keys.append(json.loads(meta.read_text()).get("key") if meta.is_file() else None)
    folds = root / "folds" / "folds.csv"
    return config_hash(
        {
            "head": hcfg,
            "params": params,
            "seed": cfg.get("seed", 0),
            "k": cfg.get("folds", {}).get("k"),
            "features": feat_keys,
            "folds": folds.read_text() if folds.is_file() else None,
            "fold": fold,
            "pseudo": pseudo_fold,
        }
    )


def _pseudo_fold(pseudo, fold):
    if pseudo is None or fold not in pseudo:
        return None
    mask, labels = pseudo[fold]
    return [np.flatnonzero(mask).tolist(), labels[mask].tolist()]


def _read_fold(folder: Path, key: str):
    """A FOLD=k job's files, if they match `key`: (P_val or None, P_test, metrics)."""
    try:
        m = json.loads((folder / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if m.get("key") != key:
        return None
    P_val = np.load(folder / "oof_rows.npy") if (folder / "oof_rows.npy").is_file() else None
    return P_val, np.load(folder / "test.npy"), m


def _write_fold(folder: Path, key: str, P_val, P_te, m: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").unlink(missing_ok=True)  # written last: marks the fold finished
    if P_val is not None:
        np.save(folder / "oof_rows.npy", P_val)
    np.save(folder / "test.npy", P_te)
    (folder / "metrics.json").write_text(json.dumps({**m, "key": key}, indent=2, default=str))


def run_head(
    cfg: dict,
    name: str,
    params: dict | None = None,
    folds_to_run=None,
    write: bool = True,
    force: bool = False,
    pseudo: dict | None = None,
    out_name: str | None = None,
    fold_job: int | None = None,
) -> dict:
    """Fit head `name` on every fold; write oof/{out_name or name}/; return its metrics.

    `params` overrides the config's params (tuning); `folds_to_run` limits the folds (tuning).
    `pseudo`: {fold: (test_rows_mask, labels)} test rows added to fold k's training rows.
    A head whose config, features and folds are unchanged since its last run is not refit
    (its metrics are returned from oof/{name}/metrics.json) unless `force`.

    Folds as jobs: `fold_job=k` fits fold k alone (k = -1: the full fit of `test_from: full`) and
    writes oof/{name}/fold{k}/ (oof_rows.npy, test.npy, metrics.json with the fold's key); a later
    full run reads every finished fold file instead of refitting it, assembles the same oof.npy /
    test.npy a one-shot run writes (byte for byte), and removes the fold files.
    """
    from tqdm import tqdm

    hcfg = head_configs(cfg).get(name)
    if hcfg is None:
        raise DataError(f"no head named {name!r} in the config ({sorted(head_configs(cfg))})")
    seed = int(cfg.get("seed", 0))
    feats = hcfg.get("features") or []
    if not feats:
        raise DataError(f"config heads.{name}: features list is empty")
    if hcfg.get("calibrate") and getattr(HEADS.get(hcfg["kind"]), "logits", False):
        raise DataError(
            f"config heads.{name}: calibrate would fit a temperature on rows the fine-tuned classifier "
            "was trained on; leave it off (the blend's procedures weigh the head on OOF rows)"
        )
    out_name = out_name or name
    out = Path(cfg["out_dir"]) / "oof" / out_name
    params = {**(hcfg.get("params") or {}), **(params or {})}
    full_fit = hcfg.get("test_from") == "full" and pseudo is None
    k = int(cfg.get("folds", {}).get("k", 5))
    stored = None
    if write and not force and (out / "metrics.json").is_file() and (out / "oof.npy").is_file():
        stored = json.loads((out / "metrics.json").read_text())
    if fold_job is not None:  # one fold, as its own job
        if fold_job == -1 and not full_fit:
            log.info("oof/%s: no full fit (test_from: folds), nothing to do for fold -1", out_name)
            return {}
        if not -1 <= fold_job < k:
            raise DataError(f"FOLD={fold_job}: the folds are 0..{k - 1} (and -1, the full fit)")
        fkey = fold_key(cfg, hcfg, params, fold_job, _pseudo_fold(pseudo, fold_job))
        if stored and stored.get("fold_keys", {}).get(str(fold_job)) == fkey:
            log.info("oof/%s: fold %d already assembled, nothing to do", out_name, fold_job)
            return stored
        if not force and _read_fold(out / f"fold{fold_job}", fkey) is not None:
            log.info("oof/%s/fold%d: cached, nothing to do", out_name, fold_job)
            return json.loads((out / f"fold{fold_job}" / "metrics.json").read_text())
    else:  # the head's key: its folds' keys (config, the feature files each fold reads, the folds, pseudo-labels)
        from ..config import config_hash

        fold_keys = {
            str(f): fold_key(cfg, hcfg, params, f, _pseudo_fold(pseudo, f))
            for f in [*range(k), *([-1] if full_fit else [])]
        }
        key = config_hash(fold_keys)
        if stored and folds_to_run is None and stored.get("key") == key and (out / "test_folds.npy").is_file():
            log.info("oof/%s: cached (config, features and folds unchanged), nothing to do", out_name)
            return stored
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    test = load_split(cfg["data_dir"], "test", parse_text=False)
    fold_of_row = load_folds(cfg, train)
    classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
    n_classes = len(classes)
    tr_ids, te_ids = train[ID].to_numpy(), test[ID].to_numpy()
    calibrate, tau = bool(hcfg.get("calibrate", False)), float(hcfg.get("logit_adjust") or 0.0)

    def fit_fold(fold):
        """(P_val, P_test, metrics) of fold k, float32; fold -1: (None, raw full-fit P_test, {})."""
        t0 = time.time()
        Xtr, Xte = _head_input(cfg, name, hcfg, fold, tr_ids, te_ids, classes)
        if fold == -1:  # one fit on all train rows for the test rows; the folds' temperature comes later
            model = make_head(hcfg["kind"], params, seed).fit(Xtr, y, n_classes)
            P = logit_adjusted(model.predict_proba(Xte), class_prior(y, n_classes), tau)
            return None, P.astype(np.float32), {"fold": -1, "seconds": round(time.time() - t0, 2)}
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
        P_val, P_te = np.asarray(P_val, np.float32), np.asarray(P_te, np.float32)
        m.update(scores(y[val_rows], P_val.argmax(1)))
        m.update(
            fold=fold,
            seconds=round(time.time() - t0, 2),
            fit_rows=int(fit_rows.sum()),
            pseudo_rows=n_pseudo,
            logloss=round(log_loss(P_val, y[val_rows]), 5),
            best_iteration=getattr(model, "best_iteration", None),
        )
        log.info(
            "%s fold %d: weighted F1 %.4f, macro F1 %.4f, acc %.4f (%d rows, %.1fs)%s",
            out_name,
            fold,
            m["weighted_f1"],
            m["macro_f1"],
            m["accuracy"],
            m["rows"],
            m["seconds"],
            f", log loss {m['logloss_raw']:.4f} -> {m['logloss']:.4f} at T={m['temperature']:.3f}" if calibrate else "",
        )
        return P_val, P_te, m

    if fold_job is not None:
        P_val, P_te, m = fit_fold(fold_job)
        _write_fold(out / f"fold{fold_job}", fkey, P_val, P_te, m)
        log.info("oof/%s/fold%d: written (a full `make train` assembles the folds)", out_name, fold_job)
        return m

    oof = np.full((len(train), n_classes), np.nan, np.float32)
    test_pred = np.zeros((len(test), n_classes), np.float32)
    folds_to_run = list(range(k)) if folds_to_run is None else list(folds_to_run)
    test_folds = np.zeros((len(folds_to_run), len(test), n_classes), np.float16) if write else None
    reused, per_fold, t_all, reused_s = [], [], time.time(), 0.0
    runs = folds_to_run + ([-1] if full_fit and write else [])
    for i, fold in enumerate(tqdm(runs, desc=f"{out_name} folds", mininterval=1)):
        done = None if (force or not write) else _read_fold(out / f"fold{fold}", fold_keys[str(fold)])
        if done is not None:
            reused.append(fold)
        P_val, P_te, m = done if done is not None else fit_fold(fold)
        if done is not None:  # its fit time was spent in the FOLD=k job: counted, not lost
            reused_s += float(m.get("seconds") or 0.0)
        m = {k_: v for k_, v in m.items() if k_ != "key"}
        if fold == -1:  # the full fit's test probabilities replace the folds' mean
            test_pred = P_te
            if calibrate:  # the folds' temperatures, geometric mean
                test_pred = tempered(test_pred, float(np.exp(np.mean([np.log(f["temperature"]) for f in per_fold]))))
            test_pred = np.asarray(test_pred, np.float32)
            continue
        oof[fold_of_row == fold] = P_val
        test_pred += P_te / len(folds_to_run)
        if test_folds is not None:
            test_folds[i] = P_te
        per_fold.append(m)
    if reused:
        log.info("oof/%s: folds %s read from FOLD=k jobs' files, not refit", out_name, reused)
    has = ~np.isnan(oof).any(1)
    overall = scores(y[has], oof[has].argmax(1))
    overall["logloss"] = round(log_loss(oof[has], y[has]), 5)
    if calibrate:
        overall["logloss_raw"] = round(
            float(np.average([m["logloss_raw"] for m in per_fold], weights=[m["rows"] for m in per_fold])), 5
        )
    never = int((fold_of_row == NEVER).sum())
    metrics = {
        "head": out_name,
        "key": key,
        "fold_keys": fold_keys,
        "kind": hcfg["kind"],
        "features": feats,
        "params": params,
        "calibrate": calibrate,
        "logit_adjust": tau,
        "overall": overall,
        "folds": per_fold,
        "never_validated_rows": never,
        "n_classes": int(n_classes),
        # fit time: this run's, plus the FOLD=k jobs' for the folds it assembled
        "seconds": round(time.time() - t_all + reused_s, 2),
        "folds_from_jobs": reused,
    }
    log.info(
        "%s OOF: weighted F1 %.4f, macro F1 %.4f, acc %.4f on %d rows (%d never-validated rows excluded)",
        out_name,
        overall["weighted_f1"],
        overall["macro_f1"],
        overall["accuracy"],
        overall["rows"],
        never,
    )
    if write:
        import shutil

        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # written last: marks the folder finished
        np.save(out / "oof.npy", oof)
        np.save(out / "test.npy", test_pred)
        np.save(out / "classes.npy", classes)
        np.save(out / "train_ids.npy", tr_ids)
        np.save(out / "test_ids.npy", te_ids)
        if test_folds is not None:
            np.save(out / "test_folds.npy", test_folds)
        (out / "config.json").write_text(
            json.dumps(
                {"head": hcfg, "params": params, "seed": seed, "data_dir": cfg["data_dir"]}, indent=2, default=str
            )
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        for f in out.glob("fold*"):  # assembled: the fold jobs' files are in oof.npy / test.npy now
            shutil.rmtree(f, ignore_errors=True)
    return metrics
