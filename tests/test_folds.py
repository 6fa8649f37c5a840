import numpy as np
import pandas as pd
import pytest

from smart_product.data import DataError, load_split
from smart_product.folds import NEVER, assign_folds, load_folds, make_folds


def _labels(seed=0, n=3000, n_classes=80):
    rng = np.random.default_rng(seed)
    y = rng.zipf(1.6, n) % n_classes
    return np.concatenate([y, [1000, 1001, 1002], [2000, 2000], [3000, 3000, 3000]])


@pytest.mark.parametrize("k", [3, 5, 10])
def test_every_class_with_k_rows_in_every_validation_fold(k):
    y = _labels()
    folds = assign_folds(y, k, seed=1)
    counts = pd.Series(y).value_counts()
    for c in counts[counts >= k].index:
        assert set(folds[y == c]) == set(range(k)), f"class {c} missing from a fold"


def test_singletons_never_validated_and_rare_classes_spread():
    y = _labels()
    k = 5
    folds = assign_folds(y, k, seed=1)
    counts = pd.Series(y).value_counts()
    for c in counts[counts == 1].index:
        assert folds[y == c].tolist() == [NEVER]
    assert (folds == NEVER).sum() == (counts == 1).sum()
    # a class with 2..k-1 rows: each row in its own fold, so its other rows always train
    for c in counts[(counts > 1) & (counts < k)].index:
        f = folds[y == c]
        assert len(set(f)) == len(f) and NEVER not in f


def test_folds_are_balanced():
    y = _labels()
    folds = assign_folds(y, 5, seed=3)
    sizes = np.bincount(folds[folds >= 0])
    assert sizes.max() - sizes.min() <= 1


def test_group_option_keeps_groups_whole():
    rng = np.random.default_rng(0)
    y = _labels()
    groups = rng.integers(0, 600, len(y))
    groups[-8] = groups[0]  # y[-8] is a singleton: its group goes to -1 whole
    assert (y == y[-8]).sum() == 1
    folds = assign_folds(y, 5, seed=2, groups=groups)
    per_group = pd.DataFrame({"g": groups, "f": folds}).groupby("g").f.nunique()
    assert (per_group == 1).all()
    assert (folds[groups == groups[0]] == NEVER).all()
    counts = pd.Series(y).value_counts()
    assert (folds[np.isin(y, counts[counts == 1].index)] == NEVER).all()
    # stratification still roughly holds for the big classes
    big = counts.index[0]
    assert set(range(5)) <= set(folds[y == big])


def test_rows_without_group_value_are_their_own_group():
    y = np.repeat(np.arange(4), 10)
    groups = np.array([None] * 40, dtype=object)
    folds = assign_folds(y, 5, seed=0, groups=groups)
    assert len(set(folds)) == 5  # not all lumped into one group


def test_make_folds_writes_file_same_seed_identical(demo_dir, make_cfg, tmp_path):
    cfg = make_cfg(demo_dir)
    path = make_folds(cfg)
    first = path.read_bytes()
    df = pd.read_csv(path)
    train = load_split(demo_dir, "train", parse_text=False)
    assert list(df.columns) == ["product_id", "fold"]
    assert df.product_id.is_unique and set(df.product_id) == set(train.product_id)  # no product in two folds
    assert set(df.fold) == {-1, 0, 1, 2, 3, 4}
    mtime = path.stat().st_mtime_ns
    assert make_folds(cfg).stat().st_mtime_ns == mtime  # cached: not rewritten
    (path.parent / "meta.json").unlink()
    assert make_folds(cfg).read_bytes() == first  # recomputed: the same folds
    other = make_folds(make_cfg(demo_dir, "folds.seed=7"))
    assert other.read_bytes() != first


def test_make_folds_group_col(demo_dir, make_cfg):
    cfg = make_cfg(demo_dir, "folds.group_col=title")
    df = pd.read_csv(make_folds(cfg))
    train = load_split(demo_dir, "train")
    merged = train.merge(df, on="product_id")
    assert (merged.groupby(merged.title.str.lower()).fold.nunique() == 1).all()
    with pytest.raises(DataError, match="group_col"):
        make_folds(make_cfg(demo_dir, "folds.group_col=no_such_column"))


def test_load_folds_rejects_folds_of_other_data(demo_dir, make_cfg, copy_data):
    cfg = make_cfg(demo_dir)
    make_folds(cfg)
    train = load_split(demo_dir, "train", parse_text=False)
    assert len(load_folds(cfg, train)) == len(train)
    with pytest.raises(DataError, match="made for other data"):
        load_folds(cfg, train.iloc[:-3])


def test_make_folds_with_an_empty_fold_is_one_clear_error(demo_dir, make_cfg, copy_data):
    """Too few products of repeated classes for k folds: a DataError naming folds.k, not a crash later
    in a head that is asked to predict no rows."""
    train = pd.read_parquet(demo_dir / "train.parquet")
    tiny = pd.concat([train[train.category_id == c].head(2) for c in train.category_id.unique()[:2]])
    with pytest.raises(DataError, match=r"folds \[\d(, \d)*\] of folds.k=5 get no validation rows"):
        make_folds(make_cfg(copy_data(train=tiny)))
    df = pd.read_csv(make_folds(make_cfg(copy_data(train=tiny), "folds.k=2")))
    assert sorted(df.fold.unique()) == [0, 1]
