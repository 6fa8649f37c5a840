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

Artifacts: oof/{head}/, in the format src/smart_product/oof.py owns (OOF and test probabilities,
classes, ids, each fold model's test probabilities, config.json, metrics.json last).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import oof as oof_files
from ..data import ID, TARGET, DataError, label_array, load_split
from ..features import load_class_logits, load_features
from ..folds import NEVER, load_folds
from ..memory import PeakWindow
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


@dataclass
class HeadRun:
    """One head's run: its config, where it writes, its cache keys and, once `load`ed, the labels and
    folds. `fit_fold` fits one fold; `fold_result` reads a finished FOLD=k job's files instead."""

    cfg: dict
    name: str
    hcfg: dict
    params: dict
    out_name: str
    pseudo: dict | None = None
    data: dict = field(default_factory=dict)

    @classmethod
    def make(cls, cfg, name, params=None, pseudo=None, out_name=None) -> HeadRun:
        hcfg = head_configs(cfg).get(name)
        if hcfg is None:
            raise DataError(f"no head named {name!r} in the config ({sorted(head_configs(cfg))})")
        if not hcfg.get("features"):
            raise DataError(f"config heads.{name}: features list is empty")
        if hcfg.get("calibrate") and getattr(HEADS.get(hcfg["kind"]), "logits", False):
            raise DataError(
                f"config heads.{name}: calibrate would fit a temperature on rows the fine-tuned classifier "
                "was trained on; leave it off (the blend's procedures weigh the head on OOF rows)"
            )
        params = {**(hcfg.get("params") or {}), **(params or {})}
        return cls(cfg, name, hcfg, params, out_name or name, pseudo)

    @property
    def out(self) -> Path:
        return oof_files.folder(self.cfg["out_dir"], self.out_name)

    @property
    def k(self) -> int:
        return int(self.cfg.get("folds", {}).get("k", 5))

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @property
    def full_fit(self) -> bool:
        """Test rows from one fit on all train rows (fold -1), not the folds' mean."""
        return self.hcfg.get("test_from") == "full" and self.pseudo is None

    def fold_key(self, fold: int) -> str:
        return fold_key(self.cfg, self.hcfg, self.params, fold, _pseudo_fold(self.pseudo, fold))

    def fold_keys(self) -> dict:
        return {str(f): self.fold_key(f) for f in [*range(self.k), *([-1] if self.full_fit else [])]}

    def stored(self) -> dict | None:
        """The metrics of the head's last finished run, if its files are there."""
        return oof_files.read_metrics(self.cfg["out_dir"], self.out_name)

    def load(self) -> HeadRun:
        train = load_split(self.cfg["data_dir"], "train", parse_text=False)
        test = load_split(self.cfg["data_dir"], "test", parse_text=False)
        classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
        self.data = dict(
            y=y,
            classes=classes,
            fold_of_row=load_folds(self.cfg, train),
            tr_ids=train[ID].to_numpy(),
            te_ids=test[ID].to_numpy(),
        )
        return self

    def fold_result(self, fold: int, keys: dict, reuse: bool):
        """(P_val, P_test, metrics, reused): a FOLD=k job's files when `reuse` and they match, else a fit."""
        done = _read_fold(self.out / f"fold{fold}", keys[str(fold)]) if reuse else None
        return (*done, True) if done is not None else (*self.fit_fold(fold), False)

    def fit_fold(self, fold: int):
        """(P_val, P_test, metrics) of fold k, float32; fold -1: (None, raw full-fit P_test, {})."""
        d, hcfg, params, seed = self.data, self.hcfg, self.params, self.seed
        y, n_classes, tau = d["y"], len(d["classes"]), float(hcfg.get("logit_adjust") or 0.0)
        t0 = time.time()
        Xtr, Xte = _head_input(self.cfg, self.name, hcfg, fold, d["tr_ids"], d["te_ids"], d["classes"])
        if fold == -1:  # one fit on all train rows for the test rows; the folds' temperature comes later
            model = make_head(hcfg["kind"], params, seed).fit(Xtr, y, n_classes)
            P = logit_adjusted(model.predict_proba(Xte), class_prior(y, n_classes), tau)
            return None, P.astype(np.float32), {"fold": -1, "seconds": round(time.time() - t0, 2)}
        fit_rows, val_rows = d["fold_of_row"] != fold, d["fold_of_row"] == fold
        Xfit, yfit = _rows(Xtr, fit_rows), y[fit_rows]
        n_pseudo = 0
        if self.pseudo is not None and fold in self.pseudo:
            mask, labels = self.pseudo[fold]
            n_pseudo = int(mask.sum())
            Xfit, yfit = _concat(Xfit, _rows(Xte, mask)), np.concatenate([y[fit_rows], labels[mask]])
        model = make_head(hcfg["kind"], params, seed).fit(Xfit, yfit, n_classes)
        prior = class_prior(y[fit_rows], n_classes)

        def post(P):
            return logit_adjusted(P, prior, tau)

        P_val = post(model.predict_proba(_rows(Xtr, val_rows)))
        P_te = post(model.predict_proba(Xte))
        m = {}
        if hcfg.get("calibrate"):
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
            self.out_name,
            fold,
            m["weighted_f1"],
            m["macro_f1"],
            m["accuracy"],
            m["rows"],
            m["seconds"],
            f", log loss {m['logloss_raw']:.4f} -> {m['logloss']:.4f} at T={m['temperature']:.3f}"
            if "temperature" in m
            else "",
        )
        return P_val, P_te, m

    def full_fit_test(self, P_te, per_fold: list) -> np.ndarray:
        """The full fit's test probabilities, tempered by the folds' temperatures' geometric mean."""
        if self.hcfg.get("calibrate"):
            P_te = tempered(P_te, float(np.exp(np.mean([np.log(f["temperature"]) for f in per_fold]))))
        return np.asarray(P_te, np.float32)

    def metrics(self, oof, per_fold: list, key: str, fold_keys: dict, seconds: float, reused: list) -> dict:
        d = self.data
        has = ~np.isnan(oof).any(1)
        overall = scores(d["y"][has], oof[has].argmax(1))
        overall["logloss"] = round(log_loss(oof[has], d["y"][has]), 5)
        calibrate = bool(self.hcfg.get("calibrate", False))
        if calibrate:
            overall["logloss_raw"] = round(
                float(np.average([m["logloss_raw"] for m in per_fold], weights=[m["rows"] for m in per_fold])), 5
            )
        never = int((d["fold_of_row"] == NEVER).sum())
        log.info(
            "%s OOF: weighted F1 %.4f, macro F1 %.4f, acc %.4f on %d rows (%d never-validated rows excluded)",
            self.out_name,
            overall["weighted_f1"],
            overall["macro_f1"],
            overall["accuracy"],
            overall["rows"],
            never,
        )
        return {
            "head": self.out_name,
            "key": key,
            "fold_keys": fold_keys,
            "kind": self.hcfg["kind"],
            "features": self.hcfg.get("features") or [],
            "params": self.params,
            "calibrate": calibrate,
            "logit_adjust": float(self.hcfg.get("logit_adjust") or 0.0),
            "overall": overall,
            "folds": per_fold,
            "never_validated_rows": never,
            "n_classes": int(len(d["classes"])),
            # fit time: this run's, plus the FOLD=k jobs' for the folds it assembled
            "seconds": seconds,
            "folds_from_jobs": reused,
        }

    def write(self, oof, test_pred, test_folds, metrics: dict) -> None:
        import shutil

        d = self.data
        arrays = dict(oof=oof, test=test_pred, classes=d["classes"], train_ids=d["tr_ids"], test_ids=d["te_ids"])
        config = {"head": self.hcfg, "params": self.params, "seed": self.seed, "data_dir": self.cfg["data_dir"]}
        oof_files.write(self.cfg["out_dir"], self.out_name, arrays, metrics, test_folds, config)
        for f in self.out.glob("fold*"):  # assembled: the fold jobs' files are in oof.npy / test.npy now
            shutil.rmtree(f, ignore_errors=True)


def _run_fold_job(run: HeadRun, fold: int, force: bool) -> dict:
    """`FOLD=k`: fit fold k alone (k = -1: the full fit of `test_from: full`) into oof/{head}/fold{k}/."""
    if fold == -1 and not run.full_fit:
        log.info("oof/%s: no full fit (test_from: folds), nothing to do for fold -1", run.out_name)
        return {}
    if not -1 <= fold < run.k:
        raise DataError(f"FOLD={fold}: the folds are 0..{run.k - 1} (and -1, the full fit)")
    fkey, stored = run.fold_key(fold), None if force else run.stored()
    if stored and stored.get("fold_keys", {}).get(str(fold)) == fkey:
        log.info("oof/%s: fold %d already assembled, nothing to do", run.out_name, fold)
        return stored
    if not force and _read_fold(run.out / f"fold{fold}", fkey) is not None:
        log.info("oof/%s/fold%d: cached, nothing to do", run.out_name, fold)
        return json.loads((run.out / f"fold{fold}" / "metrics.json").read_text())
    P_val, P_te, m = run.load().fit_fold(fold)
    _write_fold(run.out / f"fold{fold}", fkey, P_val, P_te, m)
    log.info("oof/%s/fold%d: written (a full `make train` assembles the folds)", run.out_name, fold)
    return m


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

    from ..config import config_hash

    run = HeadRun.make(cfg, name, params, pseudo, out_name)
    if fold_job is not None:
        return _run_fold_job(run, fold_job, force)
    keys = run.fold_keys()  # the head's key: its folds' (config, the feature files each reads, folds, pseudo-labels)
    key, stored = config_hash(keys), run.stored() if write and not force else None
    if stored and folds_to_run is None and stored.get("key") == key and (run.out / "test_folds.npy").is_file():
        log.info("oof/%s: cached (config, features and folds unchanged), nothing to do", run.out_name)
        return {**stored, "cached": True}
    peak = PeakWindow()  # the head's own peak RSS, its features' loading included
    d = run.load().data
    folds = list(range(run.k)) if folds_to_run is None else list(folds_to_run)
    oof = np.full((len(d["y"]), len(d["classes"])), np.nan, np.float32)
    test_pred = np.zeros((len(d["te_ids"]), len(d["classes"])), np.float32)
    test_folds = np.zeros((len(folds), *test_pred.shape), np.float16) if write else None
    per_fold, reused, t0, reused_s = [], [], time.time(), 0.0
    for i, fold in enumerate(
        tqdm(folds + ([-1] if run.full_fit and write else []), desc=f"{run.out_name} folds", mininterval=1)
    ):
        P_val, P_te, m, from_job = run.fold_result(fold, keys, reuse=write and not force)
        if from_job:  # its fit time was spent in the FOLD=k job: counted, not lost
            reused.append(fold)
            reused_s += float(m.get("seconds") or 0.0)
        m = {k_: v for k_, v in m.items() if k_ != "key"}
        if fold == -1:  # the full fit's test probabilities replace the folds' mean
            test_pred = run.full_fit_test(P_te, per_fold)
            continue
        oof[d["fold_of_row"] == fold] = P_val
        test_pred += P_te / len(folds)
        if test_folds is not None:
            test_folds[i] = P_te
        per_fold.append(m)
    if reused:
        log.info("oof/%s: folds %s read from FOLD=k jobs' files, not refit", run.out_name, reused)
    # the jobs' fit time added to this run's, unrounded: never below the folds' own sum
    metrics = run.metrics(oof, per_fold, key, keys, round(time.time() - t0, 2) + reused_s, reused)
    metrics["peak_rss_gib"] = peak.gib()
    log.info("oof/%s: %.1fs, peak RSS %.2f GiB", run.out_name, time.time() - t0, metrics["peak_rss_gib"])
    if write:
        run.write(oof, test_pred, test_folds, metrics)
    return metrics
