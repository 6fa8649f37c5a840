import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smart_product import heads as heads_mod
from smart_product.data import DataError
from smart_product.features import make_features
from smart_product.folds import make_folds
from smart_product.heads import SoftmaxHead, run_head, train_heads
from smart_product.report import make_report

CHEAP = "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 64}, navec: {kind: navec}}"
FEATS = "[tabular, tfidf, navec]"
HEADS = (
    "heads={"  # logreg: max_iter 200 gives the same OOF F1 in 3x the time
    f"logreg: {{kind: logreg, features: {FEATS}, params: {{C: 0.1, max_iter: 50}}}},"
    f"mlp: {{kind: mlp, features: {FEATS}, params: {{hidden: [256, 128, 64], max_epochs: 60, patience: 8}}}},"
    f"catboost: {{kind: catboost, features: {FEATS}, params: {{reduce: lfda, dim: 24, iterations: 120,"
    f"  learning_rate: 0.2, depth: 4, border_count: 32}}}},"
    f"lfda_knn: {{kind: lfda_knn, features: {FEATS}, params: {{pca_dim: 64, n_components: 32}}}}}}"
)


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    from smart_product.config import load_config

    cfg = load_config(
        None, [f"out_dir={tmp_path_factory.mktemp('heads')}", CHEAP, HEADS, "pseudo.rounds=0"], str(demo_dir)
    )  # pseudo-labels have their own tests
    make_folds(cfg)
    make_features(cfg)
    return cfg, train_heads(cfg)


def test_every_head_far_above_majority_baseline(trained):
    cfg, metrics = trained
    report = make_report(cfg)
    rep = json.loads((report.parent / "report.json").read_text())
    majority = rep["majority"]["weighted_f1"]
    assert majority < 0.1
    for name, m in metrics.items():
        assert m["overall"]["weighted_f1"] > max(0.6, 5 * majority), (name, m["overall"])
    text = report.read_text()
    never = int((pd.read_csv(Path(cfg["out_dir"]) / "folds" / "folds.csv").fold == -1).sum())
    assert never >= 5  # the 5 singletons, + classes that are one product (the folds are grouped)
    assert f"{never} rows never validated" in text and "20 worst classes" in text
    assert (report.parent / "heads.png").stat().st_size > 5000
    assert (report.parent / "per_class_f1.png").stat().st_size > 5000


def test_oof_files_and_nan_rows(trained, demo_dir):
    cfg, _ = trained
    folds = pd.read_csv(Path(cfg["out_dir"]) / "folds" / "folds.csv")
    train = pd.read_parquet(demo_dir / "train.parquet")
    for name in ("logreg", "mlp", "catboost", "lfda_knn"):
        d = Path(cfg["out_dir"]) / "oof" / name
        oof, test, classes = np.load(d / "oof.npy"), np.load(d / "test.npy"), np.load(d / "classes.npy")
        assert oof.shape == (2000, 60) and test.shape[1] == 60 and oof.dtype == np.float32
        assert np.array_equal(classes, np.sort(train.category_id.unique()))
        assert np.array_equal(np.isnan(oof).any(1), (folds.fold == -1).to_numpy())  # NaN = never validated
        assert np.allclose(test.sum(1), 1, atol=1e-3)
        m = json.loads((d / "metrics.json").read_text())
        assert len(m["folds"]) == 5 and m["never_validated_rows"] == int((folds.fold == -1).sum()) >= 5
        assert 0.05 < m["peak_rss_gib"] < 24  # the head's own peak, its features' loading included


def test_same_seed_reproduces_oof_f1(trained):
    cfg, metrics = trained
    for name in ("mlp", "catboost"):  # two folds refit (not all five): the same per-fold scores
        again = run_head(cfg, name, write=False, folds_to_run=[1, 3])
        first = {f["fold"]: f["weighted_f1"] for f in metrics[name]["folds"]}
        assert [round(f["weighted_f1"], 4) for f in again["folds"]] == [round(first[k], 4) for k in (1, 3)], name


class SpyHead:
    """Records the product ids (feature column 0) it was fit on and asked to predict."""

    calls = []

    def __init__(self, seed=0):
        pass

    def fit(self, X, y, n_classes):
        self.n = n_classes
        self.fit_ids = set(X[:, 0].astype(np.int64))
        self.predicted = []
        SpyHead.calls.append(self)
        return self

    def predict_proba(self, X):
        self.predicted.append(X[:, 0].astype(np.int64))
        return np.full((len(X), self.n), 1.0 / self.n, np.float32)


def test_no_oof_prediction_comes_from_a_model_fit_on_that_row(trained, monkeypatch):
    cfg, _ = trained
    # a feature set whose only column is the product id, so the spy sees which rows it gets
    ids_dir = Path(cfg["out_dir"]) / "features" / "ids"
    ids_dir.mkdir(parents=True, exist_ok=True)
    tab = Path(cfg["out_dir"]) / "features" / "tabular"
    for split in ("train", "test"):
        ids = np.load(tab / f"{split}_ids.npy")
        np.save(ids_dir / f"{split}_ids.npy", ids)
        np.save(ids_dir / f"{split}.npy", ids.astype(np.float64)[:, None])
    (ids_dir / "meta.json").write_text("{}")
    cfg = {
        **cfg,
        "features": {"sets": {**cfg["features"]["sets"], "ids": {"kind": "tabular"}}},
        "heads": {"spy": {"kind": "spy", "features": ["ids"]}},
    }
    monkeypatch.setitem(heads_mod.HEADS, "spy", SpyHead)
    SpyHead.calls = []
    run_head(cfg, "spy", write=False)
    folds = pd.read_csv(Path(cfg["out_dir"]) / "folds" / "folds.csv")
    assert len(SpyHead.calls) == 5
    seen_oof = []
    for k, model in enumerate(SpyHead.calls):
        oof_ids = set(model.predicted[0])  # first call: fold k's rows
        assert oof_ids == set(folds.product_id[folds.fold == k])
        assert not oof_ids & model.fit_ids  # never fit on a row it predicts
        seen_oof += list(oof_ids)
    assert len(seen_oof) == len(set(seen_oof)) == (folds.fold >= 0).sum()


def test_bad_head_config_is_a_clear_error(trained):
    cfg, _ = trained
    with pytest.raises(DataError, match="no head named"):
        run_head(cfg, "nope")
    bad = {**cfg, "heads": {"x": {"kind": "svm", "features": ["tabular"]}}}
    with pytest.raises(DataError, match="unknown kind 'svm'"):
        run_head(bad, "x")
    bad = {**cfg, "heads": {"x": {"kind": "mlp", "features": ["tabular"], "params": {"hiden": 3}}}}
    with pytest.raises(DataError, match="hiden"):
        run_head(bad, "x")


def test_tuning_resumes_from_its_sqlite_study(trained):
    import optuna

    from smart_product.heads import tune_head

    cfg, _ = trained
    first = tune_head(cfg, "logreg", n_trials=2, folds_to_run=[0, 1])
    assert first["trials"] == 2 and 0.5 < first["weighted_f1"] <= 1
    db = Path(cfg["out_dir"]) / "oof" / "logreg" / "optuna.db"
    assert db.is_file()
    again = tune_head(cfg, "logreg", n_trials=3, folds_to_run=[0, 1])  # an interrupted search goes on
    assert again["trials"] == 3
    study = optuna.load_study(study_name="logreg", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3
    assert json.loads((db.parent / "best_params.json").read_text())["params"].keys() == {"C"}


def test_wandb_tracking_offline(trained):
    from smart_product.tracking import log_run

    cfg, metrics = trained
    assert log_run(cfg, metrics, Path(cfg["out_dir"]) / "oof") is None  # off by default
    cfg = {**cfg, "tracking": {"wandb": True, "mode": "offline", "project": "test"}}
    report = make_report(cfg)
    run_dir = Path(log_run(cfg, metrics, report.parent))
    assert run_dir.is_dir() and str(run_dir).startswith(cfg["out_dir"])
    run_root = run_dir.parent
    assert list(run_root.glob("*.wandb"))  # the offline run file
    assert len(list(run_dir.rglob("*.png"))) == 2  # report plots logged


def test_linear_head_matches_liblinear_and_lbfgs_and_gives_probabilities():
    """solver: svm spreads the one-vs-rest problems over the cores: the same decisions as a plain
    LinearSVC, probabilities that sum to 1 in the full class order, classes absent from the fit
    rows get 0, and the fit is far above chance; solver: lbfgs (the default) gives sklearn's
    LogisticRegression probabilities."""
    from scipy import sparse
    from sklearn.svm import LinearSVC

    from smart_product.heads import LinearHead

    rng = np.random.default_rng(0)
    n, d, n_classes = 600, 300, 7  # class 6 never appears in the fit rows
    y = rng.integers(0, 6, n)
    X = sparse.random(n, d, density=0.05, random_state=0, format="csr", dtype=np.float32)
    X = sparse.hstack([X, sparse.csr_matrix(np.eye(6, dtype=np.float32)[y] * 0.3)]).tocsr()
    dense = rng.normal(size=(n, 5)).astype(np.float32)
    fit, val = np.arange(n) < 450, np.arange(n) >= 450
    head = LinearHead(C=1.0, solver="svm").fit([X[fit], dense[fit]], y[fit], n_classes)
    P = head.predict_proba([X[val], dense[val]])
    assert P.shape == (val.sum(), n_classes) and np.allclose(P.sum(1), 1, atol=1e-5) and (P[:, 6] == 0).all()
    plain = LinearSVC(C=1.0, random_state=0).fit(head.stacker.transform([X[fit], dense[fit]]), y[fit])
    assert (P.argmax(1) == plain.predict(head.stacker.transform([X[val], dense[val]]))).mean() > 0.99
    assert (P.argmax(1) == y[val]).mean() > 0.9
    # the default solver, lbfgs: sklearn's multinomial LogisticRegression over the same blocks
    from sklearn.linear_model import LogisticRegression

    lr = LinearHead(C=1.0, max_iter=300).fit([X[fit], dense[fit]], y[fit], n_classes)
    P = lr.predict_proba([X[val], dense[val]])
    assert P.shape == (val.sum(), n_classes) and np.allclose(P.sum(1), 1, atol=1e-5) and (P[:, 6] == 0).all()
    ref = LogisticRegression(C=1.0, max_iter=300).fit(lr.stacker.transform([X[fit], dense[fit]]), y[fit])
    assert np.allclose(P[:, :6], ref.predict_proba(lr.stacker.transform([X[val], dense[val]])), atol=1e-6)
    assert (P.argmax(1) == y[val]).mean() > 0.9
    with pytest.raises(DataError, match="solver must be lbfgs or svm"):
        LinearHead(solver="sgd")


def _sparse_problem(seed=0, n=1500, d=2000, n_classes=8, signal=0.25):
    """A noisy sparse problem: each class has its own handful of indicative columns."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    proto = sparse.random(n_classes, d, density=0.01, random_state=seed, format="csr", dtype=np.float32)
    noise = sparse.random(n, d, density=0.01, random_state=seed + 1, format="csr", dtype=np.float32)
    return (noise + proto[y] * signal).tocsr(), y


def test_softmax_head_matches_sklearn_logistic_regression():
    """The torch softmax head is multinomial logistic regression: full-batch (L-BFGS, the same L2)
    its decisions are sklearn LogisticRegression's; the mini-batch path used at scale gets close;
    probabilities sum to 1 in the full class order (0 for a class absent from the fit rows)."""
    from sklearn.linear_model import LogisticRegression

    from smart_product.heads import SoftmaxHead

    X, y = _sparse_problem(signal=0.12)
    fit, val = np.arange(len(y)) < 1100, np.arange(len(y)) >= 1100
    sk = LogisticRegression(C=10, max_iter=3000).fit(X[fit], y[fit])
    sk_pred = sk.predict(X[val])
    sk_acc = (sk_pred == y[val]).mean()
    assert 0.5 < sk_acc < 0.99  # hard enough for the comparison to mean something
    # sklearn minimises ||w||^2 / 2 + C * sum(loss): the mean loss + ||w||^2 / (2 C n)
    exact = SoftmaxHead(optimizer="lbfgs", epochs=500, weight_decay=1 / (10 * fit.sum())).fit([X[fit]], y[fit], 9)
    P = exact.predict_proba([X[val]])  # class 8: no fit rows
    assert P.shape == (val.sum(), 9) and P.dtype == np.float32
    assert np.allclose(P.sum(1), 1, atol=1e-5) and (P[:, 8] == 0).all()
    assert (P.argmax(1) == sk_pred).mean() > 0.98
    assert np.abs(P[:, :8] - sk.predict_proba(X[val])).max() < 0.05
    mini = SoftmaxHead(epochs=5, lr=0.3, batch_size=128, weight_decay=1e-3).fit([X[fit]], y[fit], 9)
    pred = mini.predict_proba([X[val]]).argmax(1)
    assert (pred == sk_pred).mean() > 0.93 and (pred == y[val]).mean() > sk_acc - 0.06
    adam = SoftmaxHead(
        epochs=20,
        lr=0.02,
        optimizer="adam",
        hidden=64,
        batch_size=128,
        label_smoothing=0.1,
        input_dropout=0.1,
        weight_decay=1e-3,
    ).fit([X[fit]], y[fit], 9)
    assert (adam.predict_proba([X[val]]).argmax(1) == y[val]).mean() > sk_acc - 0.1
    with pytest.raises(DataError, match="optimizer must be adagrad, adam or lbfgs"):
        SoftmaxHead(optimizer="sgd")


def test_lazy_row_updates_are_the_textbook_adagrad_and_adam():
    """The softmax head's lazy optimiser updates only the rows a batch touches, in place in buffers
    reused across steps (growing and shrinking with the batch's columns): W and its state must equal
    the textbook Adagrad / Adam updates of those rows, with every other row left alone."""
    import torch

    from smart_product.heads.softmax import LazyRows

    gen = torch.Generator().manual_seed(0)
    for opt in ("adagrad", "adam"):
        W = torch.randn(50, 6, generator=gen)
        ref, lazy = W.clone(), LazyRows(W, opt)
        S, M, V = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(W)
        for t, n in enumerate([10, 30, 5, 50, 20], start=1):
            u = torch.randperm(50, generator=gen)[:n].sort().values
            g = torch.randn(n, 6, generator=gen)
            before = W.clone()
            Wu = lazy.select(u)
            assert torch.equal(Wu, before[u]) and Wu.requires_grad
            gd = g + 0.01 * ref[u]  # with L2: weight_decay * W[u]
            if opt == "adagrad":
                S[u] += gd**2
                ref[u] -= 0.3 * gd / (S[u].sqrt() + 1e-10)
            else:
                M[u] = 0.9 * M[u] + 0.1 * gd
                V[u] = 0.999 * V[u] + 0.001 * gd**2
                ref[u] -= 0.3 * (M[u] / (1 - 0.9**t)) / ((V[u] / (1 - 0.999**t)).sqrt() + 1e-8)
            lazy.step(u, g.clone(), 0.3, weight_decay=0.01)
            assert torch.allclose(W, ref, atol=1e-6), (opt, t)
            untouched = torch.ones(50, dtype=torch.bool)
            untouched[u] = False
            assert torch.equal(W[untouched], before[untouched])
        assert torch.allclose(lazy.state[0], S if opt == "adagrad" else M, atol=1e-6)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_softmax_head_runs_on_cuda():
    from smart_product.heads import SoftmaxHead

    X, y = _sparse_problem()
    head = SoftmaxHead(epochs=5, batch_size=256).fit([X[:1000]], y[:1000], 8)
    assert head.W.device.type == "cuda"
    assert (head.predict_proba([X[1000:]]).argmax(1) == y[1000:]).mean() > 0.5


def test_a_head_over_its_max_classes_is_skipped(demo_dir, make_cfg, caplog):
    """`max_classes`: a liblinear head is skipped (logged) on a catalogue of more classes, unless asked for by name."""
    cfg = make_cfg(
        demo_dir,
        "features.sets={tabular: {kind: tabular}}",
        "heads={small: {kind: logreg, features: [tabular], max_classes: 3, params: {max_iter: 50}},"
        " any: {kind: logreg, features: [tabular], params: {max_iter: 50}}}",
    )
    make_folds(cfg)
    make_features(cfg)
    with caplog.at_level("WARNING"):
        assert set(train_heads(cfg)) == {"any"}
    assert "heads.small: skipped" in caplog.text and "max_classes 3" in caplog.text
    assert not (Path(cfg["out_dir"]) / "oof" / "small").exists()
    assert set(train_heads(cfg, only=["small"])) == {"small"}


def test_softmax_head_c_sets_the_l2_strength_by_rows():
    X, y = _sparse_problem(n=400)
    head = SoftmaxHead(C=0.5, loss="squared_hinge", epochs=2).fit([X[:300]], y[:300], 8)
    assert head.weight_decay == pytest.approx(1 / (0.5 * 300))
    assert (head.predict_proba([X[300:]]).argmax(1) == y[300:]).mean() > 0.5


def test_softmax_bags_average_nets_of_consecutive_seeds():
    """`bags: n`: n nets fit on the same rows with seeds seed..seed+n-1, probabilities averaged;
    each member is the net one would get with that seed alone. On a noisy problem the bag's
    log loss beats its average member's (the point of bagging)."""
    from smart_product.heads.calibrate import log_loss

    X, y = _sparse_problem(n=1200, signal=0.12)
    kw = dict(hidden=32, epochs=3, lr=0.3, batch_size=128)
    bag = SoftmaxHead(bags=3, seed=5, **kw).fit([X[:900]], y[:900], 8)
    assert [m.seed for m in bag.members] == [5, 6, 7]
    P = bag.predict_proba([X[900:]])
    alone = [SoftmaxHead(seed=s, **kw).fit([X[:900]], y[:900], 8).predict_proba([X[900:]]) for s in (5, 6, 7)]
    assert np.allclose(P, sum(alone) / 3, atol=1e-6) and np.allclose(P.sum(1), 1, atol=1e-5)
    assert log_loss(P, y[900:]) < np.mean([log_loss(A, y[900:]) for A in alone])
    assert (P.argmax(1) == y[900:]).mean() > 0.5
    for bad in (0, "3", 2.5):
        with pytest.raises(DataError, match="bags must be an integer >= 1"):
            SoftmaxHead(bags=bad)


def test_naive_bayes_head_matches_sklearn():
    """`nb`: its joint log-likelihood is sklearn's ComplementNB / MultinomialNB's on the same rows
    (computed here in float32 from a sparse indicator), probabilities are softmax(jll / temperature)
    in the full class order (0 for a class absent from the fit rows), it beats chance held out,
    and dense, negative or misconfigured input raises a clear error."""
    from sklearn.naive_bayes import ComplementNB, MultinomialNB

    from smart_product.heads import NaiveBayesHead

    X, y = _sparse_problem(n=1200)
    y = y * 2  # classes 0, 2, ..., 14 of 16: odd ones unseen
    for variant, sk in (("complement", ComplementNB), ("multinomial", MultinomialNB)):
        head = NaiveBayesHead(variant=variant, alpha=0.5, temperature=2.0).fit([X[:900]], y[:900], 16)
        ref = sk(alpha=0.5).fit(X[:900], y[:900])
        jll = head.joint_log_likelihood([X[900:]])
        assert np.allclose(jll, ref.predict_joint_log_proba(X[900:]), rtol=1e-4, atol=1e-3)
        assert (jll.argmax(1) == ref.predict(X[900:]) // 2).mean() > 0.99
        P = head.predict_proba([X[900:]])
        assert P.shape == (300, 16) and np.allclose(P.sum(1), 1, atol=1e-5) and P[:, 1::2].max() == 0
        z = np.exp((jll - jll.max(1, keepdims=True)) / 2.0)
        assert np.allclose(P[:, ::2], z / z.sum(1, keepdims=True), atol=1e-6)
        assert (P.argmax(1) == y[900:]).mean() > 0.5  # chance: 1/8
    with pytest.raises(DataError, match="sparse non-negative blocks"):
        NaiveBayesHead().fit([X[:900], np.ones((900, 3))], y[:900], 16)
    with pytest.raises(DataError, match="negative values"):
        NaiveBayesHead().fit([-X[:900]], y[:900], 16)
    with pytest.raises(DataError, match="variant must be"):
        NaiveBayesHead(variant="bernoulli")
    with pytest.raises(DataError, match="must be > 0"):
        NaiveBayesHead(alpha=0)


ALL_KINDS_FEATS = (
    "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32},"
    " tfidf_sparse: {kind: tfidf_sparse, fields: {all: {word: [1, 2]}}},"  # word n-grams: the svm head 26 -> 9 s
    " listing: {kind: listing, by: shop_id}}"
)
ALL_KINDS = (
    "heads={"
    "logreg: {kind: logreg, features: [tabular, tfidf], params: {C: 0.1, max_iter: 50}, calibrate: true},"
    "linear: {kind: linear, features: [tfidf_sparse], params: {C: 0.5, solver: svm}, calibrate: true,"
    "  test_from: full},"
    "softmax: {kind: softmax, features: [tfidf_sparse], params: {hidden: 32, epochs: 2, batch_size: 256}},"
    "mlp: {kind: mlp, features: [tabular, tfidf], params: {hidden: [64], max_epochs: 8, patience: 3}},"
    "catboost: {kind: catboost, features: [tabular, tfidf], params: {reduce: lfda, dim: 8, iterations: 15,"
    "  depth: 3}},"
    "lfda_knn: {kind: lfda_knn, features: [tfidf], params: {pca_dim: 16, n_components: 8}},"
    "knn: {kind: knn, features: [tfidf_sparse], calibrate: true},"
    "nb: {kind: nb, features: [tfidf_sparse], params: {variant: multinomial, alpha: 0.01}, calibrate: true},"
    "listing: {kind: listing, features: [listing]}}"
)


def test_every_head_kind_predicts_fold_k_without_fold_k_labels(demo_dir, fit_heads, permute_fold, tmp_path):
    """The fold rule for every kind of head, by its effect: permuting fold 2's labels (same folds,
    same label-free features) leaves fold 2's OOF predictions unchanged. Folds 0 and 1 train on
    fold 2's rows, so state carried from one fold's model to the next (a weight tensor shared and
    trained in place, a cache keyed without the fold) would show here; the spy test above only
    sees which rows a model is given."""
    from smart_product.heads import HEADS

    overrides = [ALL_KINDS_FEATS, ALL_KINDS, "pseudo.rounds=0"]
    _, metrics = fit_heads(demo_dir, tmp_path / "a", overrides)
    # every registered kind is covered; `finetuned` reads a fine-tuned set's classifier, so its
    # permutation test is test_features.py's fine-tuning one
    assert set(metrics) == set(HEADS) - {"finetuned"}
    folds_csv = tmp_path / "a" / "folds" / "folds.csv"
    data_b, fold_of, k2 = permute_fold(folds_csv, 2)
    fit_heads(data_b, tmp_path / "b", overrides, folds_csv)
    for head in metrics:
        a = np.load(tmp_path / "a" / "oof" / head / "oof.npy")
        b = np.load(tmp_path / "b" / "oof" / head / "oof.npy")
        assert np.allclose(a[k2], b[k2], atol=1e-5), head
        assert not np.allclose(a[fold_of == 0], b[fold_of == 0], atol=1e-5), head  # fold 0's models saw fold 2


def test_lfda_eigensolver_regularises_a_numerically_indefinite_scatter():
    """A few rows a class leave LFDA's within-class scatter singular, and rounding makes it slightly
    indefinite (an 80-row flipkart sample: eigenvalues down to -5e-4 against a mean of 370). The
    solver raises the ridge until the Cholesky factorisation works, instead of failing the head."""
    from scipy.linalg import eigh

    from smart_product.heads.neighbours import _stable_eigh

    rng = np.random.default_rng(0)
    n = 12
    Q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    b = Q @ np.diag(np.r_[-5e-3, -3e-3, np.zeros(3), rng.uniform(100, 2000, n - 5)]) @ Q.T
    a = np.cov(rng.normal(size=(n, 40)))
    with pytest.raises(np.linalg.LinAlgError):  # the smallest ridge alone is not enough
        eigh(a, b + 1e-6 * np.trace(b) / n * np.eye(n))
    vals, vecs = _stable_eigh(a, b, 4)
    assert vals.shape == (4,) and vecs.shape == (n, 4) and np.isfinite(vecs).all()
    assert np.all(vecs[np.abs(vecs).argmax(0), np.arange(4)] > 0)  # signs fixed


def test_catboost_border_count_reaches_catboost():
    """`border_count` (bins a feature; the demo config uses 32, CatBoost's CPU default is 254) is
    passed to CatBoost, and the head still learns."""
    from smart_product.heads import CatBoostHead

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    X = rng.normal(size=(len(y), 6)) + np.eye(3, 6)[y] * 3
    coarse = CatBoostHead(reduce="pca", dim=4, iterations=30, depth=3, border_count=8).fit(X, y, 3)
    plain = CatBoostHead(reduce="pca", dim=4, iterations=30, depth=3).fit(X, y, 3)
    assert coarse.model.get_all_params()["border_count"] == 8
    assert plain.model.get_all_params()["border_count"] == 254
    assert (coarse.predict_proba(X).argmax(1) == y).mean() > 0.9


def test_finetuned_head_reads_one_fine_tuned_set_and_is_never_calibrated(demo_dir, make_cfg):
    """The `finetuned` head's input is a per-fold set's saved classifier: a shared set, a missing
    class head or a temperature fit on the classifier's own training rows are errors, not garbage."""
    from smart_product.features import load_class_logits
    from smart_product.heads import FinetunedHead

    sets = (
        "features.sets={tab: {kind: tabular}, ft: {kind: text, model: tiny-random-bert, view: title,"
        " finetune: {epochs: 1, train_layers: 1}}}"
    )
    cfg = make_cfg(demo_dir, sets, "heads={cls: {kind: finetuned, features: [ft], calibrate: true}}")
    with pytest.raises(DataError, match="calibrate would fit a temperature"):
        run_head(cfg, "cls")
    ids, classes = np.arange(3), np.arange(2)
    with pytest.raises(DataError, match="one fine-tuned"):
        load_class_logits(cfg, ["tab"], 0, ids, ids, classes)
    with pytest.raises(DataError, match="class_head.npz: missing"):
        load_class_logits(cfg, ["ft"], 0, ids, ids, classes)
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    P = FinetunedHead().fit(z, np.array([0, 1]), 3).predict_proba(z)
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-6)
    assert P[0].argmax() == 0 and np.allclose(P[1], 1 / 3)
    with pytest.raises(DataError, match="3 logits a row for 4 classes"):
        FinetunedHead().fit(z, np.array([0, 1]), 4)
