"""Stage `train`: fit each head per fold on the feature matrices; write OOF + test probabilities.

The fold loop (`run_head`): for fold k, fit on rows of the other folds (fold -1 rows included),
predict fold k's rows (OOF) and the test rows; test probabilities are averaged over the folds
(or, with `test_from: full`, taken from one fit on all train rows, fold -1). Early stopping
uses an inner split of the training rows, never fold k.

Heads (config `heads: {name: {kind: ..., features: [...], params: {...}}}`):
- logreg:   StandardScaler -> multinomial LogisticRegression (fast linear baseline)
- linear:   LogisticRegression over feature blocks: sparse TF-IDF as is + scaled dense embeddings
            (or one-vs-rest LinearSVC, `solver: svm`)
- softmax:  the same blocks -> multinomial logistic regression (or one hidden layer) in torch:
            one weight matrix for all classes, sparse row updates, CUDA when present (softmax.py)
- catboost: StandardScaler -> PCA, or PCA -> LFDA (`reduce`, `dim`; fit on the inner-fit rows) ->
            CatBoost MultiClass, early stopping on the inner split; task_type GPU with CUDA
- mlp:      the seed's MLP: 3 hidden layers, dropout 0.5, Adam 1e-3, StepLR, batch 4096,
            classes oversampled to 16 rows; class weights / label smoothing options
- lfda_knn: the seed's imbalanced-learn pipeline: RandomOverSampler (up to `min_count`) ->
            optional RandomUnderSampler (down to `max_count`) -> metric-learn LFDA -> kNN

Artifacts, oof/{head}/: oof.npy (n_train x n_classes float32, NaN rows = never validated),
test.npy (n_test x n_classes), classes.npy (category ids = column order), train_ids.npy,
test_ids.npy, metrics.json (per fold + overall), config.json (the head config it ran with).
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from .config import n_cpus
from .data import ID, TARGET, DataError, load_split
from .features import load_features
from .folds import NEVER, load_folds
from .softmax import SoftmaxHead

log = logging.getLogger(__name__)


def _inner_split(y: np.ndarray, frac: float, seed: int):
    """Early-stopping split of the training rows: `frac` of each class with >= 3 rows."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) >= 3:
            val[rng.choice(idx, max(1, int(round(len(idx) * frac))), replace=False)] = True
    return ~val, val


def _expand(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns for the classes a model saw -> all classes (zeros for unseen ones)."""
    out = np.zeros((len(proba), n_classes), np.float32)
    out[:, seen] = proba
    return out


# ---------------------------------------------------------------- heads

class LogRegHead:
    def __init__(self, C: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, y, n_classes):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.n_classes = n_classes
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter,
                                                                        random_state=self.seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings at max_iter
            self.model.fit(X, y)
        return self

    def predict_proba(self, X):
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


def _stable_eigh(a, b, dim):
    """Top-`dim` generalized eigenpairs, dense and deterministic, signs fixed (largest entry > 0)."""
    from scipy.linalg import eigh

    n = a.shape[0]
    try:
        vals, vecs = eigh(a, b, subset_by_index=[max(0, n - dim), n - 1])
    except np.linalg.LinAlgError:  # singular within-class scatter: regularise it
        vals, vecs = eigh(a, b + 1e-6 * np.trace(b) / n * np.eye(n), subset_by_index=[max(0, n - dim), n - 1])
    signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    return vals, vecs * np.where(signs == 0, 1, signs)


def make_lfda(**kw):
    """metric-learn's LFDA with a deterministic eigensolver: its ARPACK call starts from a random
    vector, so two fits on the same data differed and the same seed did not reproduce OOF F1."""
    import metric_learn.lfda as lfda_mod

    class StableLFDA(lfda_mod.LFDA):
        def fit(self, X, y):
            original, lfda_mod._eigh = lfda_mod._eigh, _stable_eigh
            try:
                return super().fit(X, y)
            finally:
                lfda_mod._eigh = original

    return StableLFDA(**kw)


def _reducer(kind: str, X, dim: int, seed: int):
    """Scaler + PCA (unsupervised) or + PCA -> LFDA (supervised; fit on the fold's training rows only)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pca_dim = min(128 if kind == "lfda" else dim, X.shape[1], len(X) - 1)
    steps = [StandardScaler(), PCA(pca_dim, random_state=seed)]
    if kind == "lfda":
        steps.append(make_lfda(n_components=min(dim, pca_dim), k=7))
    elif kind != "pca":
        raise DataError(f"config heads (catboost): reduce must be pca or lfda, not {kind!r}")
    return make_pipeline(*steps)


class BlockStacker:
    """Feature blocks -> one CSR matrix: sparse blocks (TF-IDF) as they are, each dense block
    standardised on the fit rows and scaled by dense_weight / sqrt(dim), so a 1,000-dim embedding
    neither drowns nor vanishes beside the TF-IDF."""

    def __init__(self, dense_weight: float = 0.5):
        self.dense_weight = dense_weight

    def fit(self, blocks):
        from scipy import sparse

        self.scales = [(None, None) if sparse.issparse(b) else
                       (b.mean(0), self.dense_weight / np.sqrt(b.shape[1]) / (b.std(0) + 1e-6)) for b in blocks]
        return self

    def transform(self, blocks):
        from scipy import sparse

        if len(blocks) != len(self.scales):
            raise DataError(f"{len(blocks)} feature blocks, fit on {len(self.scales)}")
        out = [b if mean is None else sparse.csr_matrix(((b - mean) * scale).astype(np.float32))
               for b, (mean, scale) in zip(blocks, self.scales)]
        return sparse.hstack(out).tocsr().astype(np.float32)


class LinearHead:
    """LogisticRegression or one-vs-rest LinearSVC over feature blocks (see BlockStacker)."""
    blocks = True

    def __init__(self, C: float = 10.0, max_iter: int = 1000, dense_weight: float = 0.5, solver: str = "lbfgs",
                 seed: int = 0):
        """solver: lbfgs (multinomial LogisticRegression) or svm (one-vs-rest LinearSVC, liblinear:
        much faster with many classes and rows; probabilities = softmax of the decision scores)."""
        if solver not in ("lbfgs", "svm"):
            raise DataError(f"config heads (linear): solver must be lbfgs or svm, not {solver!r}")
        self.C, self.max_iter, self.dense_weight, self.solver, self.seed = C, max_iter, dense_weight, solver, seed

    def fit(self, blocks, y, n_classes):
        from sklearn.linear_model import LogisticRegression

        self.n_classes = n_classes
        self.stacker = BlockStacker(self.dense_weight).fit(blocks)
        if self.solver == "svm":
            from sklearn.multiclass import OneVsRestClassifier
            from sklearn.svm import LinearSVC

            # the same one-vs-rest problems liblinear solves in turn, spread over the cores
            svc = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.seed)
            self.model = OneVsRestClassifier(svc, n_jobs=n_cpus()) if n_classes > 2 else svc
        else:
            self.model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self.stacker.transform(blocks), y)
        return self

    def predict_proba(self, blocks):
        X = self.stacker.transform(blocks)
        if self.solver == "svm":
            z = self.model.decision_function(X)
            z = z[:, None] if z.ndim == 1 else z
            if len(self.model.classes_) == 2:
                z = np.hstack([-z, z])
            z = np.exp(z - z.max(1, keepdims=True))
            return _expand(z / z.sum(1, keepdims=True), self.model.classes_, self.n_classes)
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


class CatBoostHead:
    def __init__(self, reduce: str = "pca", dim: int = 64, iterations: int = 1000, learning_rate: float = 0.1,
                 depth: int = 6, early_stopping_rounds: int = 50, inner_frac: float = 0.1,
                 l2_leaf_reg: float = 3.0, seed: int = 0):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def fit(self, X, y, n_classes):
        import torch
        from catboost import CatBoostClassifier

        self.n_classes = n_classes
        fit, val = _inner_split(y, self.inner_frac, self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.reducer = _reducer(self.reduce, X[fit], self.dim, self.seed).fit(X[fit], y[fit])
        Z = self.reducer.transform(X)
        gpu = torch.cuda.is_available()
        self.model = CatBoostClassifier(
            loss_function="MultiClass", iterations=self.iterations, learning_rate=self.learning_rate,
            depth=self.depth, l2_leaf_reg=self.l2_leaf_reg, random_seed=self.seed, verbose=0,
            thread_count=n_cpus(), task_type="GPU" if gpu else "CPU", class_names=list(range(n_classes)),
            allow_writing_files=False)
        self.model.fit(Z[fit], y[fit], eval_set=(Z[val], y[val]) if val.any() else None,
                       early_stopping_rounds=self.early_stopping_rounds if val.any() else None)
        self.best_iteration = int(self.model.get_best_iteration() or self.iterations)
        return self

    def predict_proba(self, X):
        return self.model.predict_proba(self.reducer.transform(X)).astype(np.float32)


class MLPHead:
    """The seed's MLP head; early stopping on an inner split (best epoch's weights are kept)."""

    def __init__(self, hidden=(1024, 512, 256), dropout: float = 0.5, lr: float = 1e-3, batch_size: int = 4096,
                 max_epochs: int = 200, patience: int = 15, step_size: int = 30, gamma: float = 0.5,
                 oversample_to: int = 16, class_weights: bool = False, label_smoothing: float = 0.0,
                 weight_decay: float = 0.0, inner_frac: float = 0.1, seed: int = 0):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def fit(self, X, y, n_classes):
        import torch
        from torch import nn

        from .backbones import device

        dev = device()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.n_classes = n_classes
        self.mean, self.std = X.mean(0), X.std(0) + 1e-6
        Xs = ((X - self.mean) / self.std).astype(np.float32)
        fit, val = _inner_split(y, self.inner_frac, self.seed)
        idx = np.flatnonzero(fit)
        if self.oversample_to:  # classes oversampled to `oversample_to` rows
            extra = [rng.choice(idx[y[idx] == c], self.oversample_to - n) for c, n in
                     zip(*np.unique(y[idx], return_counts=True)) if n < self.oversample_to]
            idx = np.concatenate([idx, *extra]) if extra else idx
        layers, d = [], X.shape[1]
        for h in self.hidden:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(self.dropout)]
            d = h
        self.net = nn.Sequential(*layers, nn.Linear(d, n_classes)).to(dev)
        weight = None
        if self.class_weights:
            cnt = np.bincount(y[fit], minlength=n_classes).astype(np.float32)
            w = np.where(cnt > 0, (cnt.sum() / np.maximum(cnt, 1)) ** 0.5, 0.0)
            weight = torch.tensor(w / w[cnt > 0].mean(), device=dev)
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.label_smoothing)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, self.step_size, self.gamma)
        Xt, yt = torch.tensor(Xs, device=dev), torch.tensor(y, device=dev)
        best, best_state, bad = np.inf, None, 0
        # the seed's batch of 4096 is for ~90k rows; keep >= ~32 steps per epoch on smaller data
        # (at 35k rows a 4,096 batch gave 7 steps an epoch: undertrained, OOF 0.936 vs 0.974 at 512)
        bs = min(self.batch_size, max(256, len(idx) // 32))
        for epoch in range(self.max_epochs):
            self.net.train()
            perm = torch.tensor(rng.permutation(idx), device=dev)
            for b in range(0, len(perm), bs):
                sel = perm[b:b + bs]
                if len(sel) < 2:
                    continue
                loss = loss_fn(self.net(Xt[sel]), yt[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            if not val.any():
                continue
            self.net.eval()
            with torch.no_grad():
                v = nn.functional.cross_entropy(self.net(Xt[val]), yt[val]).item()
            if v < best - 1e-4:
                best, bad = v, 0
                best_state = {k: t.detach().clone() for k, t in self.net.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.best_iteration = epoch + 1 - bad
        return self

    def predict_proba(self, X):
        import torch

        self.net.eval()
        dev = next(self.net.parameters()).device
        Xs = torch.tensor(((X - self.mean) / self.std).astype(np.float32), device=dev)
        with torch.no_grad():
            return torch.softmax(self.net(Xs), 1).cpu().numpy().astype(np.float32)


class LfdaKnnHead:
    """RandomOverSampler -> [RandomUnderSampler] -> (scaler, PCA) -> LFDA -> kNN, the seed's pipeline."""

    def __init__(self, min_count: int = 8, max_count: int | None = None, pca_dim: int = 128,
                 n_components: int = 48, lfda_k: int = 7, n_neighbors: int = 15, seed: int = 0):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def fit(self, X, y, n_classes):
        from imblearn.over_sampling import RandomOverSampler
        from imblearn.pipeline import Pipeline
        from imblearn.under_sampling import RandomUnderSampler
        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.preprocessing import StandardScaler

        self.n_classes = n_classes
        counts = dict(zip(*np.unique(y, return_counts=True)))
        steps = [("over", RandomOverSampler(
            sampling_strategy={c: max(n, self.min_count) for c, n in counts.items()}, random_state=self.seed))]
        if self.max_count:
            steps.append(("under", RandomUnderSampler(
                sampling_strategy={c: min(max(n, self.min_count), self.max_count) for c, n in counts.items()},
                random_state=self.seed)))
        dim = min(self.pca_dim, X.shape[1], len(X) - 1)
        steps += [("scale", StandardScaler()), ("pca", PCA(dim, random_state=self.seed)),
                  ("lfda", make_lfda(n_components=min(self.n_components, dim), k=self.lfda_k)),
                  ("knn", KNeighborsClassifier(self.n_neighbors, weights="distance"))]
        self.model = Pipeline(steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(X, y)
        return self

    def predict_proba(self, X):
        return _expand(self.model.predict_proba(X), self.model.classes_, self.n_classes)


HEADS = {"logreg": LogRegHead, "linear": LinearHead, "softmax": SoftmaxHead, "catboost": CatBoostHead,
         "mlp": MLPHead, "lfda_knn": LfdaKnnHead}


def make_head(kind: str, params: dict | None, seed: int = 0):
    if kind not in HEADS:
        raise DataError(f"config heads: unknown kind {kind!r} (one of {sorted(HEADS)})")
    params = dict(params or {})
    params.setdefault("seed", seed)
    try:
        return HEADS[kind](**params)
    except TypeError as exc:
        raise DataError(f"config heads ({kind}): {exc}") from None


# ---------------------------------------------------------------- metrics

def scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)), "rows": int(len(y_true))}


# ---------------------------------------------------------------- the fold loop

def head_configs(cfg: dict) -> dict:
    heads = cfg.get("heads") or {}
    if not heads:
        raise DataError("config has no heads (heads: {name: {kind: ..., features: [...]}})")
    return heads


def _rows(X, rows):
    return [b[rows] for b in X] if isinstance(X, list) else X[rows]


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


def head_key(cfg: dict, hcfg: dict, params: dict) -> str:
    """Cache key of a head's OOF files: its config, the feature sets' own keys, the folds."""
    from .config import config_hash

    root = Path(cfg["out_dir"])
    feat_keys = []
    for f in hcfg.get("features") or []:
        metas = sorted((root / "features" / f).glob("**/meta.json"))
        feat_keys.append([json.loads(m.read_text()).get("key") for m in metas])
    folds = root / "folds" / "folds.csv"
    return config_hash({"head": hcfg, "params": params, "seed": cfg.get("seed", 0), "k": cfg.get("folds", {}).get("k"),
                        "features": feat_keys, "folds": folds.read_text() if folds.is_file() else None})


def run_head(cfg: dict, name: str, params: dict | None = None, folds_to_run=None, write: bool = True,
             force: bool = False) -> dict:
    """Fit head `name` on every fold; write oof/{name}/; return its metrics.

    `params` overrides the config's params (tuning); `folds_to_run` limits the folds (tuning).
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
    out = Path(cfg["out_dir"]) / "oof" / name
    key = head_key(cfg, hcfg, {**(hcfg.get("params") or {}), **(params or {})})
    if write and not force and folds_to_run is None and (out / "metrics.json").is_file() and (out / "oof.npy").is_file():
        stored = json.loads((out / "metrics.json").read_text())
        if stored.get("key") == key:
            log.info("oof/%s: cached (config, features and folds unchanged), nothing to do", name)
            return stored
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    test = load_split(cfg["data_dir"], "test", parse_text=False)
    fold_of_row = load_folds(cfg, train)
    classes, y = np.unique(train[TARGET].to_numpy(), return_inverse=True)
    n_classes, k = len(classes), int(cfg.get("folds", {}).get("k", 5))
    tr_ids, te_ids = train[ID].to_numpy(), test[ID].to_numpy()
    oof = np.full((len(train), n_classes), np.nan, np.float32)
    test_pred = np.zeros((len(test), n_classes), np.float32)
    params = {**(hcfg.get("params") or {}), **(params or {})}
    folds_to_run = list(range(k)) if folds_to_run is None else list(folds_to_run)
    per_fold, t_all = [], time.time()
    for fold in tqdm(folds_to_run, desc=f"{name} folds", mininterval=1):
        t0 = time.time()
        Xtr, Xte = _head_input(cfg, name, hcfg, fold, tr_ids, te_ids)
        fit_rows, val_rows = fold_of_row != fold, fold_of_row == fold
        model = make_head(hcfg["kind"], params, seed).fit(_rows(Xtr, fit_rows), y[fit_rows], n_classes)
        oof[val_rows] = model.predict_proba(_rows(Xtr, val_rows))
        test_pred += model.predict_proba(Xte) / len(folds_to_run)
        m = scores(y[val_rows], oof[val_rows].argmax(1))
        m.update(fold=fold, seconds=round(time.time() - t0, 2), fit_rows=int(fit_rows.sum()),
                 best_iteration=getattr(model, "best_iteration", None))
        per_fold.append(m)
        log.info("%s fold %d: weighted F1 %.4f, macro F1 %.4f, acc %.4f (%d rows, %.1fs)", name, fold,
                 m["weighted_f1"], m["macro_f1"], m["accuracy"], m["rows"], m["seconds"])
    if hcfg.get("test_from") == "full":  # fold -1: one fit on all train rows for the test predictions
        Xtr, Xte = _head_input(cfg, name, hcfg, -1, tr_ids, te_ids)
        test_pred = make_head(hcfg["kind"], params, seed).fit(Xtr, y, n_classes).predict_proba(Xte)
    has = ~np.isnan(oof).any(1)
    overall = scores(y[has], oof[has].argmax(1))
    never = int((fold_of_row == NEVER).sum())
    metrics = {"head": name, "key": key, "kind": hcfg["kind"], "features": feats, "params": params, "overall": overall,
               "folds": per_fold, "never_validated_rows": never, "n_classes": int(n_classes),
               "seconds": round(time.time() - t_all, 2)}
    log.info("%s OOF: weighted F1 %.4f, macro F1 %.4f, acc %.4f on %d rows (%d never-validated rows "
             "excluded)", name, overall["weighted_f1"], overall["macro_f1"], overall["accuracy"], overall["rows"], never)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # written last: marks the folder finished
        np.save(out / "oof.npy", oof)
        np.save(out / "test.npy", test_pred)
        np.save(out / "classes.npy", classes)
        np.save(out / "train_ids.npy", tr_ids)
        np.save(out / "test_ids.npy", te_ids)
        (out / "config.json").write_text(json.dumps({"head": hcfg, "params": params, "seed": seed,
                                                     "data_dir": cfg["data_dir"]}, indent=2, default=str))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def train_heads(cfg: dict, only: list[str] | None = None, force: bool = False) -> dict:
    """Run the enabled heads (or `only` these). A head with `max_classes: N` is skipped, with a log
    line, on a catalogue of more classes: a one-vs-rest liblinear head fits one problem per class."""
    heads = head_configs(cfg)
    names = only or [n for n, h in heads.items() if h.get("enabled", True)]
    limits = {n: int(heads[n]["max_classes"]) for n in names if not only and (heads.get(n) or {}).get("max_classes")}
    if limits:
        n_classes = load_split(cfg["data_dir"], "train", parse_text=False)[TARGET].nunique()
        for n, limit in limits.items():
            if n_classes > limit:
                log.warning("heads.%s: skipped, the catalogue has %d classes > its max_classes %d", n, n_classes, limit)
                names.remove(n)
    return {n: run_head(cfg, n, force=force) for n in names}


# ---------------------------------------------------------------- tuning (option)

SEARCH_SPACES = {
    "logreg": lambda t: {"C": t.suggest_float("C", 1e-3, 10, log=True)},
    "mlp": lambda t: {"dropout": t.suggest_float("dropout", 0.1, 0.6),
                      "lr": t.suggest_float("lr", 1e-4, 3e-3, log=True),
                      "label_smoothing": t.suggest_float("label_smoothing", 0.0, 0.2),
                      "oversample_to": t.suggest_categorical("oversample_to", [0, 8, 16, 32])},
    "catboost": lambda t: {"dim": t.suggest_int("dim", 16, 96, step=16),
                           "depth": t.suggest_int("depth", 3, 8),
                           "learning_rate": t.suggest_float("learning_rate", 0.03, 0.3, log=True),
                           "l2_leaf_reg": t.suggest_float("l2_leaf_reg", 1, 10, log=True)},
    "lfda_knn": lambda t: {"n_components": t.suggest_int("n_components", 16, 96, step=16),
                           "n_neighbors": t.suggest_int("n_neighbors", 3, 30),
                           "min_count": t.suggest_categorical("min_count", [2, 4, 8, 16])},
}


def tune_head(cfg: dict, name: str, n_trials: int = 20, folds_to_run=None) -> dict:
    """Optuna search of a head's params on OOF weighted F1. The study lives in
    oof/{name}/optuna.db (SQLite), so an interrupted search resumes: a rerun adds trials until
    `n_trials` are complete. Writes oof/{name}/best_params.json; use them with
    `heads.{name}.params.KEY=VALUE` or by copying them into the config."""
    import optuna

    hcfg = head_configs(cfg).get(name)
    if hcfg is None:
        raise DataError(f"no head named {name!r} in the config ({sorted(head_configs(cfg))})")
    space = SEARCH_SPACES.get(hcfg["kind"])
    if space is None:
        raise DataError(f"no search space for head kind {hcfg['kind']!r}")
    out = Path(cfg["out_dir"]) / "oof" / name
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}", load_if_exists=True,
                                direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=int(cfg.get("seed", 0))))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    todo = max(0, n_trials - done)
    log.info("tune %s: %d trials done, %d to go (study %s)", name, done, todo, out / "optuna.db")

    def objective(trial):
        return run_head(cfg, name, params=space(trial), folds_to_run=folds_to_run, write=False)["overall"]["weighted_f1"]

    if todo:
        study.optimize(objective, n_trials=todo)
    best = {"params": study.best_params, "weighted_f1": study.best_value, "trials": len(study.trials)}
    (out / "best_params.json").write_text(json.dumps(best, indent=2))
    log.info("tune %s: best OOF weighted F1 %.4f with %s", name, study.best_value, study.best_params)
    return best
