"""Stacking, pseudo-labels, calibration and the kNN head: fold discipline and real behaviour."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from smart_product.blend.stack import Stacker, cross_fit
from smart_product.heads import KnnHead, scores
from smart_product.heads.calibrate import fit_temperature, log_loss, logit_adjusted, tempered


def _synthetic_heads(n=1200, c=30, seed=0):
    """Two noisy heads over a 30-class problem, one over-confident; folds 0..4."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    folds = rng.integers(0, 5, n)
    probs = []
    for noise, sharp in ((1.5, 1.0), (2.5, 4.0)):
        z = rng.normal(0, noise, (n, c))
        z[np.arange(n), y] += 2.0
        e = np.exp(sharp * (z - z.max(1, keepdims=True)))
        probs.append((e / e.sum(1, keepdims=True)).astype(np.float32))
    return probs, y, folds, c


def test_stacker_fold_k_predictions_ignore_fold_k_labels():
    """Level-2 fold discipline: with the heads' OOF held fixed, permuting fold 2's labels leaves
    the stacker's fold-2 predictions unchanged (its stacker is fit on the other folds only), and
    the stacker beats both heads on its own OOF."""
    probs, y, folds, c = _synthetic_heads(n=800)
    has = np.ones(len(y), bool)
    params = {"top": 15, "hidden": 8, "max_steps": 200, "batch_size": 256, "seed": 0}
    test = [p[:50] for p in probs]
    oof, _, info = cross_fit(probs, test, y, folds, has, c, params)
    y2 = y.copy()
    k2 = np.flatnonzero(folds == 2)
    y2[k2] = np.random.default_rng(1).permutation(y[k2])
    assert (y2 != y).any()
    oof2, _, _ = cross_fit(probs, test, y2, folds, has, c, params)
    assert np.array_equal(oof[folds == 2], oof2[folds == 2])
    assert not np.array_equal(oof[folds == 0], oof2[folds == 0])  # other folds did learn from fold 2
    f1 = scores(y, oof.argmax(1))["weighted_f1"]
    assert f1 > max(scores(y, p.argmax(1))["weighted_f1"] for p in probs) + 0.01, f1
    mean_top = np.argsort(-(probs[0] + probs[1]), 1)[:, :15]
    assert info["candidate_recall"] == pytest.approx((mean_top == y[:, None]).any(1).mean(), abs=1e-3)
    assert len(info["folds"]) == 5
    assert np.allclose(oof.sum(1), 1, atol=1e-4)


def test_stacker_scales_with_classes_not_weights_per_class():
    """900 classes: the model's size does not depend on the class count."""
    probs, y, _, c = _synthetic_heads(n=600, c=900)
    st = Stacker(top=15, hidden=8, max_steps=50).fit(probs, y, c)
    small = Stacker(top=15, hidden=8, max_steps=50).fit(
        [p[:, :30] / p[:, :30].sum(1, keepdims=True) for p in probs], np.minimum(y, 29), 30
    )
    n_params = sum(p.numel() for p in st.nets[0].parameters())
    assert n_params == sum(p.numel() for p in small.nets[0].parameters()) < 2000
    assert st.predict_proba(probs).shape == (600, 900)


def test_group_evidence_leaves_out_the_rows_own_fold_and_helps():
    """Group (shop) evidence: a training row's counts leave its own fold out, a predicted row's
    use every training row; with fold 2's labels permuted, fold 2's stacked predictions do not
    move; when groups carry the class, the stacker gains from them."""
    from smart_product.blend.stack import GroupPrior

    codes = np.array([0, 0, 0, 1, 1, 2])
    y = np.array([3, 3, 1, 2, 2, 0])
    folds = np.array([0, 1, 2, 0, 1, 0])
    gp = GroupPrior(alpha=1.0).fit(codes, y, folds, 4, np.full(4, 0.25))
    cand = np.array([[3, 1]] * 3 + [[2, 0]] * 2 + [[0, 1]])
    lp, size = gp.features(codes, cand, folds)
    assert np.exp(size[:, 0]).round().tolist() == [3, 3, 3, 2, 2, 1]  # log(1 + n) of the other folds' rows
    assert lp[0, 0] == pytest.approx(np.log((1 + 0.25) / 3))  # row 0 (class 3, fold 0): only row 1's 3
    assert lp[5, 0] == pytest.approx(np.log(0.25))  # group 2 only in its own fold: the prior
    lp_all, size_all = gp.features(np.array([0, 7, -1]), np.array([[3, 1]] * 3))
    assert lp_all[0].tolist() == pytest.approx([np.log(2.25 / 4), np.log(1.25 / 4)])
    assert size_all[1:].max() == 0 and lp_all[2, 0] == pytest.approx(np.log(0.25))

    probs, y, folds, c = _synthetic_heads(n=1500, seed=3)
    rng = np.random.default_rng(0)
    shop = rng.integers(0, 60, len(y))
    y = np.where(rng.random(len(y)) < 0.7, shop % c, y)  # a shop mostly sells one class
    groups = shop[:, None]
    has = np.ones(len(y), bool)
    params = {"top": 15, "hidden": 8, "max_steps": 300, "batch_size": 256, "seed": 0}
    test, g_test = [p[:50] for p in probs], groups[:50]
    plain, _, _ = cross_fit(probs, test, y, folds, has, c, params)
    with_g, t, _ = cross_fit(
        probs, test, y, folds, has, c, {**params, "groups": ["shop"]}, groups=groups, groups_test=g_test
    )
    f1 = [scores(y, p.argmax(1))["weighted_f1"] for p in (plain, with_g)]
    assert f1[1] > f1[0] + 0.05, f1
    y2 = y.copy()
    k2 = np.flatnonzero(folds == 2)
    y2[k2] = rng.permutation(y[k2])
    with_g2, _, _ = cross_fit(
        probs, test, y2, folds, has, c, {**params, "groups": ["shop"]}, groups=groups, groups_test=g_test
    )
    assert np.array_equal(with_g[folds == 2], with_g2[folds == 2])
    with pytest.raises(ValueError, match="groups"):
        Stacker(groups=["shop"]).fit(probs, y, c)


def test_temperature_lowers_log_loss_of_an_overconfident_head():
    probs, y, _, _ = _synthetic_heads(n=4000)
    P = probs[1]  # sharpened x4: over-confident
    fit, held = slice(0, 2000), slice(2000, 4000)
    T = fit_temperature(P[fit], y[fit])
    assert T > 1.5  # it softens
    assert log_loss(tempered(P[held], T), y[held]) < 0.8 * log_loss(P[held], y[held])
    assert np.array_equal(tempered(P, T).argmax(1), P.argmax(1))  # confidence only, not decisions
    assert np.allclose(tempered(tempered(P, T), 1 / T), P, atol=1e-4)  # undoable (the ablation does it)


def test_logit_adjustment_moves_decisions_to_rare_classes():
    P = np.array([[0.6, 0.4], [0.55, 0.45]], np.float32)
    prior = np.array([0.9, 0.1])
    assert (logit_adjusted(P, prior, 0.0) == P).all()
    assert logit_adjusted(P, prior, 1.0).argmax(1).tolist() == [1, 1]


def test_knn_head_retrieves_an_exact_duplicate_class():
    rng = np.random.default_rng(0)
    X = sparse.random(300, 2000, density=0.01, random_state=0, format="csr", dtype=np.float32)
    y = rng.integers(0, 40, 300)
    head = KnnHead(n_neighbors=10).fit([X], y, 40)
    P = head.predict_proba([X[[5, 17, 250]]])  # exact copies of three training listings
    assert P.argmax(1).tolist() == y[[5, 17, 250]].tolist()
    assert (P.max(1) > 0.9).all()
    dense = rng.normal(size=(300, 16)).astype(np.float32)  # the dense (embedding) path
    hd = KnnHead(n_neighbors=10).fit([dense], y, 40)
    assert hd.predict_proba([dense[[5, 17]]]).argmax(1).tolist() == y[[5, 17]].tolist()
    # in chunks of a few queries (chunk_bytes): the same neighbours as one whole product
    small = KnnHead(n_neighbors=10, chunk_bytes=4 * 300 * 7).fit([dense], y, 40)
    q = rng.normal(size=(50, 16)).astype(np.float32)
    (i_all, s_all), (i_few, s_few) = hd.neighbours([q]), small.neighbours([q])
    assert [set(r) for r in i_all] == [set(r) for r in i_few] and np.allclose(np.sort(s_all), np.sort(s_few))
    cos = hd._matrix([q]).toarray() @ hd.Xd.numpy().T  # the head's own scaled, normalised rows
    assert np.allclose(np.sort(s_all)[:, ::-1], -np.sort(-cos, 1)[:, :10], atol=1e-5)  # the true top 10
    assert np.allclose(hd.predict_proba([q]), small.predict_proba([q]), atol=1e-6)
    empty = head.predict_proba([sparse.csr_matrix((1, 2000), dtype=np.float32)])  # no shared term: the prior
    assert np.allclose(empty[0], np.bincount(y, minlength=40) / 300, atol=1e-6)


def test_listing_head_takes_the_same_shops_nearest_listing():
    """`listing`: the class of the training listing of the same shop nearest in product-id rank;
    another shop's listing, however near, never counts; a shop without training listings gets the
    prior; the feature set ranks ids over train + test and codes shops alike in both splits."""
    from smart_product.data import DataError
    from smart_product.features import listing
    from smart_product.heads import ListingHead

    train = pd.DataFrame({"product_id": [10, 11, 12, 20, 21, 30, 31, 32], "shop_id": [1, 1, 1, 1, 1, 2, 2, 2]})
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    test = pd.DataFrame({"product_id": [13, 19, 22, 29, 40], "shop_id": [1, 1, 1, 1, 3]})
    Xtr, Xte, names = listing(train, test, {"by": "shop_id"})
    assert names == ["shop_code", "id_rank"] and Xtr.dtype == np.float32
    assert Xtr[:, 1].tolist() == [0, 1, 2, 5, 6, 9, 10, 11] and Xte[:, 1].tolist() == [3, 4, 7, 8, 12]
    assert Xte[:, 0].tolist()[:4] == [Xtr[0, 0]] * 4 and Xte[4, 0] not in Xtr[:, 0]
    head = ListingHead(n_neighbors=1, alpha=0.5).fit(Xtr, y, 5)
    P = head.predict_proba(Xte)
    assert P.shape == (5, 5) and np.allclose(P.sum(1), 1, atol=1e-6)
    # 13 -> 12 (class 0); 19 -> 20 (class 1); 22 -> 21 (class 1); 29: shop 1's nearest is 21 (class 1),
    # not shop 2's 30 next to it
    assert P[:4].argmax(1).tolist() == [0, 1, 1, 1]
    assert np.allclose(P[4], np.bincount(y, minlength=5) / len(y))  # shop 3: no training listing
    three = ListingHead(n_neighbors=3).fit(Xtr, y, 5).predict_proba(Xte[:1])  # 12; 11 and 20 (2 ranks away)
    assert three[0, :2] == pytest.approx([(2 + 0.5 * 3 / 8) / 3.5, (1 + 0.5 * 2 / 8) / 3.5])
    with pytest.raises(DataError, match="listing feature set alone"):
        head.predict_proba(np.zeros((2, 3), np.float32))
    missing = listing(
        train.assign(brand=["a"] * 7 + [None]), test.assign(brand=[None, None, "a", "a", "b"]), {"by": "brand"}
    )
    codes = np.concatenate([missing[0][:, 0], missing[1][:, 0]])  # each missing value: a list of its own
    assert len(set(codes[[7, 8, 9]])) == 3 and codes[10] == codes[0] and len(set(codes)) == 5
    with pytest.raises(DataError, match="no column 'seller'"):
        listing(train, test, {"by": "seller", "name": "listing"})


CHEAP = [
    "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32}}",
    "heads={lr: {kind: logreg, features: [tabular, tfidf], params: {C: 0.1, max_iter: 50}, calibrate: true}}",
    "pseudo={rounds: 2, threshold: 0.6, heads: [lr]}",
]


def test_pseudo_label_rounds_keep_fold_k_labels_out_of_fold_k(demo_dir, fit_heads, permute_fold, tmp_path):
    """Permuting fold 1's labels (same folds, same label-free features) changes nothing in fold 1's
    OOF predictions of either round: its models and its pseudo-labels come from folds != 1."""
    _, metrics = fit_heads(demo_dir, tmp_path / "a", CHEAP)
    assert {"lr", "lr_pl1", "lr_pl2"} <= set(metrics)
    m1 = metrics["lr_pl1"]
    assert all(f["pseudo_rows"] > 0 for f in m1["folds"]) and m1["overall"]["weighted_f1"] > 0.5
    assert all(f["pseudo_rows"] == 0 for f in metrics["lr"]["folds"])
    assert "logloss_raw" in metrics["lr"]["overall"]
    folds_csv = tmp_path / "a" / "folds" / "folds.csv"
    data_b, fold_of, k1 = permute_fold(folds_csv, 1)
    fit_heads(data_b, tmp_path / "b", CHEAP, folds_csv)
    for head in ("lr", "lr_pl1", "lr_pl2"):
        a = np.load(tmp_path / "a" / "oof" / head / "oof.npy")
        b = np.load(tmp_path / "b" / "oof" / head / "oof.npy")
        assert np.allclose(a[k1], b[k1], atol=1e-6), head
        assert not np.allclose(a[fold_of == 0], b[fold_of == 0], atol=1e-6)  # other folds saw fold 1
    pl = json.loads((tmp_path / "a" / "oof" / "lr_pl1" / "metrics.json").read_text())
    assert pl["head"] == "lr_pl1" and (tmp_path / "a" / "oof" / "lr_pl1" / "test_folds.npy").is_file()


def test_unknown_stacker_setting_is_a_config_error():
    from smart_product.blend.stack import make_stacker
    from smart_product.data import DataError

    with pytest.raises(DataError, match="config blend.stack"):
        make_stacker({"topp": 10})
    with pytest.raises(DataError, match="bags"):
        make_stacker({"bags": 0})


def test_blend_logit_adjust_grid_that_is_not_numbers_is_a_config_error():
    from smart_product.blend import fold_splits, prior_correction
    from smart_product.data import DataError

    P = np.full((4, 2), 0.5, np.float32)
    y, folds, has = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), np.ones(4, bool)
    with pytest.raises(DataError, match="blend.logit_adjust"):
        prior_correction(P, y, folds, has, fold_splits(folds, has), ["high"])


def test_group_codes_of_columns_title_words_and_joints(demo_dir, make_cfg):
    """Group specs: a column, a text column's first n words (lower case), a joint a*b; one code
    space over train and test; a bad spec is a config error naming the columns."""
    from smart_product.blend.stack import group_codes, row_side
    from smart_product.data import DataError, load_split

    cfg = make_cfg(demo_dir)
    extra, extra_test, g, g_test = row_side(cfg, ["shop_id", "title:1", "shop_id*title:1"])
    train, test = load_split(demo_dir, "train"), load_split(demo_dir, "test")
    assert g.shape == (len(train), 3) and g_test.shape == (len(test), 3)
    assert extra.shape == (len(train), 3) and extra_test.shape == (len(test), 3)
    both = pd.concat([train, test], ignore_index=True)
    codes = np.concatenate([g, g_test])
    first = both["title"].str.lower().str.extract(r"(\w+)")[0]
    for j, key in enumerate([both["shop_id"].astype(str), first, both["shop_id"].astype(str) + "|" + first]):
        assert pd.Series(codes[:, j]).groupby(key.to_numpy()).nunique().max() == 1  # one code a value
        assert pd.Series(key.to_numpy()).groupby(codes[:, j]).nunique().max() == 1  # one value a code
    assert group_codes([train, test], []) == (None, None)
    with pytest.raises(DataError, match="not a column.*columns: product_id"):
        group_codes([train, test], ["brand"])
    with pytest.raises(DataError, match="a list of group specs"):
        group_codes([train, test], "shop_id")


def test_bagged_stacker_averages_nets_early_stopped_on_their_own_inner_splits():
    """bags=3: three nets (one per inner split and seed), the prediction is their mean; `auto`
    uses more nets on fewer rows (at most 5, at least 1); a bad value is an error."""
    import torch

    probs, y, _, c = _synthetic_heads(n=600)
    params = dict(top=10, hidden=8, max_steps=150, batch_size=128, seed=3)
    st = Stacker(bags=3, **params).fit(probs, y, c)
    assert len(st.nets) == 3 and len(st.steps) == 3
    one = Stacker(bags=1, **params).fit(probs, y, c)
    first = st.nets[0].state_dict()
    assert all(torch.equal(first[k], v) for k, v in one.nets[0].state_dict().items())  # net 0 = the unbagged net
    assert not torch.equal(first["linear.weight"], st.nets[1].state_dict()["linear.weight"])
    P = st.predict_proba(probs)
    parts = []
    for net in st.nets:
        st.nets, saved = [net], st.nets
        parts.append(st.predict_proba(probs))
        st.nets = saved
    assert np.allclose(P, sum(parts) / 3, atol=1e-6)
    auto = Stacker(bags="auto", bag_rows=100_000)
    assert (auto.n_bags(600), auto.n_bags(30_000), auto.n_bags(72_760), auto.n_bags(10**6)) == (5, 3, 1, 1)
    for bad in (0, 1.5, "many", True):
        with pytest.raises(ValueError):
            Stacker(bags=bad)


def _fold_models(n, n_test, c=30, k=5, seed=0):
    """Two heads whose OOF rows are each one fold model's view of a row (the row's signal + that
    model's noise) and whose test rows have K such views, one per fold model (test_folds.npy)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n + n_test)
    probs, tests = [], []
    for noise, sharp in ((1.0, 1.5), (1.5, 3.0)):
        z = rng.normal(0, noise, (n + n_test, c))
        z[np.arange(n + n_test), y] += 2.5

        def view(rows, z=z, noise=noise, sharp=sharp):
            zz = z[rows] + rng.normal(0, 0.7 * noise, (len(rows), c))
            e = np.exp(sharp * (zz - zz.max(1, keepdims=True)))
            return (e / e.sum(1, keepdims=True)).astype(np.float32)

        probs.append(view(np.arange(n)))
        tests.append(np.stack([view(np.arange(n, n + n_test)) for _ in range(k)]))
    return probs, tests, y[:n], y[n:], rng.integers(0, k, n), c


def test_stacker_scores_test_rows_from_inputs_of_its_oof_kind():
    """The fold models' mean is smoother than any one model's OOF view (the heads' confidence
    drops); stacker k scores fold k's models' test probabilities instead, so its test outputs are
    distributed as its OOF outputs (mean confidence within 0.02, accuracy within 0.03), unlike
    its outputs over the fold mean; the test prediction is the mean of the K stackers' outputs."""
    from smart_product.blend.stack import make_stacker

    probs, tests, y, y_test, folds, c = _fold_models(2000, 3000)
    conf = [float(p.max(1).mean()) for p in probs]
    assert all(float(T.mean(0).max(1).mean()) < cf - 0.04 for T, cf in zip(tests, conf))  # smoother
    assert all(abs(float(T[0].max(1).mean()) - cf) < 0.02 for T, cf in zip(tests, conf))  # one model: not
    params = {"top": 15, "hidden": 8, "max_steps": 300, "batch_size": 256, "seed": 0}
    has = np.ones(len(y), bool)
    oof, test, info = cross_fit(probs, tests, y, folds, has, c, params)
    assert "fold models' test probabilities" in info["test_from"]
    per_fold = []
    for k in range(5):
        st = make_stacker(params).fit(probs, y, c, rows=folds != k, folds=folds)
        val = st.predict_proba(probs, rows=folds == k)
        assert np.allclose(val, oof[folds == k], atol=1e-6)
        per_fold.append(st.predict_proba([T[k] for T in tests]))
    per_fold = np.stack(per_fold)
    shift = abs(per_fold.max(2).mean() - oof.max(1).mean())
    assert shift < 0.02  # as confident
    assert abs((per_fold.argmax(2) == y_test).mean() - (oof.argmax(1) == y).mean()) < 0.03  # as accurate
    assert np.allclose(test, per_fold.mean(0), atol=1e-6)
    _, from_mean, _ = cross_fit(probs, [T.mean(0) for T in tests], y, folds, has, c, params)
    assert abs(from_mean.max(1).mean() - oof.max(1).mean()) > shift + 0.01  # the fold mean: shifted
    assert (test.argmax(1) == y_test).mean() >= (oof.argmax(1) == y).mean() - 0.02  # OOF predicts test


def test_group_evidence_of_a_test_row_is_counted_like_a_training_rows(monkeypatch):
    """A training row's group counts leave its own fold out (3 of stacker k's 4 folds at K = 5);
    a predicted row's are counted with each training fold left out in turn, so log(1 + n_g) is
    distributed alike for both, not a quarter larger for the predicted rows."""
    from smart_product.blend import stack

    probs, y, folds, c = _synthetic_heads(n=1500, seed=4)
    shop = np.random.default_rng(1).integers(0, 20, len(y))  # ~75 rows a shop
    seen = {"fit": [], "predict": []}
    phase = ["fit"]
    real = stack.GroupPrior.features

    def spy(self, codes, cand, row_folds=None):
        out = real(self, codes, cand, row_folds)
        seen[phase[0]].append(np.expm1(out[1][:, 0]))  # n_g per row
        return out

    monkeypatch.setattr(stack.GroupPrior, "features", spy)
    st = stack.Stacker(top=10, hidden=0, max_steps=50, groups=["shop"]).fit(
        probs, y, c, rows=folds != 0, groups=shop[:, None], folds=folds
    )
    phase[0] = "predict"
    st.predict_proba(probs, rows=folds == 0, groups=shop[:, None])
    assert len(seen["predict"]) == 4  # one pass a left-out fold
    n_fit, n_pred = np.concatenate(seen["fit"]).mean(), np.concatenate(seen["predict"]).mean()
    assert abs(n_pred / n_fit - 1) < 0.05, (n_fit, n_pred)
    all_folds = real(st.group_priors[0], shop[folds == 0], np.zeros(((folds == 0).sum(), 10), np.int64))[1]
    assert np.expm1(all_folds[:, 0]).mean() / n_fit > 1.25  # all training rows: a third more


def test_shift_estimate_sees_a_model_less_sure_on_the_test_rows_without_their_labels():
    """The blend's shift guard (blend/shift.py): a fold model as sure on the test rows as on its OOF
    rows is estimated near no gap; one whose test rows carry less signal (less sure, and in truth
    less often right) is estimated to lose accuracy there, at least half what it truly loses; no test label
    is read."""
    from smart_product.blend.shift import fold_shift

    rng = np.random.default_rng(0)
    n, m, c = 3000, 2000, 20

    def rows(k, signal):
        y = rng.integers(0, c, k)
        z = rng.normal(0, 1.5, (k, c))
        z[np.arange(k), y] += signal
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32), y

    oof, y = rows(n, 3.0)
    folds, has = np.arange(n) % 5, np.ones(n, bool)
    same = [rows(m, 3.0) for _ in range(5)]
    noisy = [rows(m, 2.0) for _ in range(5)]
    est_same = fold_shift(oof, y, folds, has, [P for P, _ in same])
    est_noisy = fold_shift(oof, y, folds, has, [P for P, _ in noisy])
    true_noisy = est_noisy["oof_acc"] - np.mean([(P.argmax(1) == t).mean() for P, t in noisy])
    assert abs(est_same["gap"]) < 0.02
    assert true_noisy > 0.1 and 0.5 * true_noisy < est_noisy["gap"] < true_noisy + 0.03  # ATC errs low
    assert len(est_noisy["folds"]) == 5


def _guard_inputs(shifted: bool, n=1500, n_test=1500, c=20, k=5, seed=0):
    """BlendInputs of three heads over synthetic rows: `lead` is the best out of fold; with
    `shifted` its fold models carry no signal on the test rows (as a head whose OOF outruns
    its unseen score), while the other two read the test rows as they read their OOF rows."""
    from smart_product.blend.inputs import BlendInputs
    from smart_product.blend.weights import fold_splits

    rng = np.random.default_rng(seed)
    y_all = rng.integers(0, c, n + n_test)

    def view(rows, signal, base=None):
        z = rng.normal(0, 1.5, (len(rows), c)) if base is None else base + rng.normal(0, 0.4, base.shape)
        z[np.arange(len(rows)), y_all[rows]] += signal
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    train, test = np.arange(n), np.arange(n, n + n_test)
    heads, oofs, runs = ["lead", "other_a", "other_b"], [], []
    for h, signal in zip(heads, (4.0, 2.5, 2.5)):
        oofs.append(view(train, signal))
        t_signal = 0.0 if (shifted and h == "lead") else signal
        base = rng.normal(0, 1.45, (n_test, c))  # the fold models err alike on a row
        tf = np.stack([view(test, t_signal, base) for _ in range(k)])
        runs.append({"test": tf.mean(0), "test_folds": tf, "metrics": {}, "classes": np.arange(c)})
    folds = rng.integers(0, k, n)
    has = np.ones(n, bool)
    frames = tuple(
        pd.DataFrame({"has_image": np.ones(m), "title": ["t"] * m, "description": ["d"] * m}) for m in (n, n_test)
    )
    cfg = {
        "seed": 0,
        "blend": {
            "procedures": ["best_single", "stack"],
            "stack": {"hidden": 8, "max_steps": 300, "bags": 1},
            "shift_guard": True,
        },
    }
    inp = BlendInputs(cfg, heads, runs, frames, y_all[:n], folds, has, oofs, fold_splits(folds, has))
    return inp, y_all[n:]


@pytest.mark.parametrize("shifted", [True, False])
def test_shift_guard_drops_the_leading_head_only_when_its_test_rows_are_shifted(shifted):
    """The blend's shift guard: the stacker over all heads wins out of fold either way (the lead
    head is the best there); when the lead head's fold models lose their signal on the test rows,
    the guard's estimate (no test label read) ranks the stacker without it first, and that choice
    scores higher on the test rows than the stacker with it; without the shift the stacker with
    every head stays the choice."""
    from smart_product.blend.choose import choose
    from smart_product.blend.procedures import procedures
    from smart_product.heads import scores

    inp, y_test = _guard_inputs(shifted)
    assert (inp.head_shifts["lead"]["gap"] > 0.2) is shifted  # the lead head's estimated drop
    table = procedures(inp)
    assert set(table) - {"stack_without_lead"} == {"best_single", "stack"}
    assert not shifted or "stack_without_lead" in table
    held = {name: scores(inp.y, proc.held_out()) for name, proc in table.items()}
    assert not shifted or held["stack"]["weighted_f1"] > held["stack_without_lead"]["weighted_f1"]
    choice = choose(table, held, inp)
    assert choice.guard["stack"]["estimated_gap"] is not None
    if shifted:
        assert choice.name == "stack_without_lead"
        with_lead = table["stack"].refit()[1]
        assert (choice.test.argmax(1) == y_test).mean() > (with_lead.argmax(1) == y_test).mean() + 0.05
    else:
        assert choice.name == "stack"
        assert abs(choice.guard["stack"]["estimated_gap"]) < 0.03
