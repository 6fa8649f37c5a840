"""Near-duplicate clusters, the duplicate audit and the `folds.group_col: auto` policy."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from smart_product import dups
from smart_product.folds import assign_folds, choose_grouping, make_folds


def _frame(rows):
    return pd.DataFrame(
        [
            {"product_id": i, "title": t, "description": d, "has_image": False, "image_path": None}
            for i, (t, d) in enumerate(rows)
        ]
    )


def test_text_pairs_precision_on_hand_made_pairs():
    rows = [
        ("Кружка Ромашка Ведано 350 мл", "Керамика. Для чая и кофе. Артикул 48213."),  # 0
        ("Кружка Ромашка Ведано 350 мл", "Керамика. Для чая и кофе. Артикул 48213."),  # 1 exact dup of 0
        ("Кружка Ромашка Ведано 350 мл, размер XL", "Керамика. Для чая и кофе. Артикул 48213."),  # 2 variant of 0
        ("КРУЖКА ромашка ведано 350мл!", "Керамика, для чая и кофе, артикул 48213"),  # 3 re-upload of 0
        ("Новинка", "Свеча ароматическая, воск, аромат ванили, 30 часов горения."),  # 4
        (
            "Новинка",
            "Наушники беспроводные, Bluetooth 5.3, шумоподавление, кейс в комплекте.",
        ),  # 5 same generic title, other product
        ("Palm Tree Girls Jace Skirt", "Wash care: machine wash separately in cold water."),  # 6
        (
            "Reebok Men Run Sports Shoes",
            "Wash care: machine wash separately in cold water.",
        ),  # 7 shared boilerplate only
        ("Чехол для телефона силикон", ""),  # 8
        ("Кроссовки для бега мужские", ""),  # 9 unrelated
    ] + [(f"Товар номер {i} модель {chr(1072 + i % 30)}{i}", f"Описание {i}") for i in range(60)]
    f = _frame(rows)
    frame, stats = dups.find_clusters(f.iloc[:40], f.iloc[40:], {"image_hamming": None})
    cl = frame["cluster"].to_numpy()
    assert cl[0] == cl[1] == cl[2] == cl[3]  # exact, variant and re-upload found
    assert cl[4] != cl[5]  # same generic title, different descriptions
    assert cl[6] != cl[7]  # same boilerplate description, different titles
    assert len({cl[0], cl[4], cl[5], cl[6], cl[7], cl[8], cl[9]}) == 7
    assert stats["rows_in_clusters"] == 4 and stats["largest_cluster"] == 4


@pytest.mark.parametrize("size", [96, 512])  # 512: the competition's photos, hashed from a drafted decode
def test_image_pairs_need_close_hash_and_alike_title(tmp_path, size):
    import imagehash
    from PIL import Image, ImageDraw

    def shot(path, bg, shape):
        im = Image.new("RGB", (96, 96), bg)
        d = ImageDraw.Draw(im)
        (d.ellipse if shape == "circle" else d.rectangle)([20, 25, 70, 80], fill=(200, 40, 40))
        d.polygon([(10, 10), (30, 12), (15, 40)], fill=(30, 30, 30))
        im.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)
        return str(path)

    paths = [
        shot(tmp_path / "a.jpg", (240, 240, 240), "circle"),
        shot(tmp_path / "b.jpg", (215, 235, 225), "circle"),  # the same shot, recoloured
        shot(tmp_path / "c.jpg", (240, 240, 240), "square"),
    ]  # another product
    h, ok = dups.image_hashes(paths + [None, str(tmp_path / "missing.jpg")])
    assert ok.tolist() == [True, True, True, False, False]
    i, j, placeholders = dups.image_edges(h, ok, {**dups.DEFAULTS, "image_hamming": 2})
    assert (0, 1) in set(zip(i.tolist(), j.tolist())) and placeholders == 0
    assert (0, 2) not in set(zip(i.tolist(), j.tolist()))
    for p, got in zip(paths, h):  # within a bit of two of the whole photo's hash
        full = int("".join("1" if b else "0" for b in imagehash.phash(Image.open(p).convert("RGB")).hash.ravel()), 2)
        assert bin(int(got) ^ full).count("1") <= 2
    # found through the image, kept only when the titles are alike too
    f = pd.DataFrame(
        {
            "product_id": [1, 2, 3],
            "title": ["Мяч детский красный", "Мяч детский красный 2", "Футболка оверсайз"],
            "description": ["a b c", "x y z", "q r s"],
            "has_image": True,
            "image_path": paths,
        }
    )
    f2 = f.copy()
    f2.loc[1, "title"] = "Ваза для цветов"
    cfg = {"title_threshold": 0.99, "description_threshold": 0.99}  # no text pairs
    assert dups.find_clusters(f, f.iloc[:0], cfg)[1]["image_edges"] == 1
    assert dups.find_clusters(f2, f2.iloc[:0], cfg)[1]["image_edges"] == 0


def test_placeholder_hash_gives_no_pairs():
    h = np.full(30, 12345, dtype=np.uint64)
    ok = np.ones(30, bool)
    i, j, placeholders = dups.image_edges(h, ok, {**dups.DEFAULTS, "max_hash_rows": 20})
    assert len(i) == 0 and placeholders == 30


def _clustered(seed, n_clusters=400, grouped_test=True):
    """Clusters of 1-4 listings in 40 classes; the test split by cluster or by row."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_clusters)
    cluster = np.repeat(np.arange(n_clusters), sizes)
    y = rng.integers(0, 40, n_clusters)[cluster]
    if grouped_test:
        test = np.isin(cluster, rng.choice(n_clusters, n_clusters // 5, replace=False))
    else:
        test = rng.random(len(cluster)) < 0.2
    return y[~test], cluster[~test], cluster[test]


@pytest.mark.parametrize("grouped_test", [True, False])
def test_auto_groups_only_when_the_test_split_keeps_clusters_apart(grouped_test):
    y, cl_train, cl_test = _clustered(0, grouped_test=grouped_test)
    plain, grouped = assign_folds(y, 5, 1), assign_folds(y, 5, 1, cl_train)
    a = dups.audit(cl_train, cl_test, {"plain": plain, "grouped": grouped})
    use, why = choose_grouping(a, 0.05)
    assert use is grouped_test, why
    assert a["p_oof_grouped"] == 0.0  # clusters are never split across folds
    if grouped_test:
        assert a["p_test"] == 0.0 and a["p_oof_plain"] > 0.3
    else:
        assert a["p_test"] > 0.3 and a["p_oof_plain"] <= a["p_test"] + 0.05


def test_make_folds_auto_on_demo_groups_and_is_reproducible(demo_dir, make_cfg, tmp_path, caplog):
    """The demo's test split keeps each product's variants together: auto must group, whole."""
    cfg = make_cfg(demo_dir)
    make_folds(cfg)
    out = tmp_path / "work" / "folds"
    meta = json.loads((out / "meta.json").read_text())
    a = meta["dup_audit"]
    assert meta["group_col"] == "auto" and meta["policy"].startswith("grouped")
    assert a["p_oof_plain"] - a["p_test"] > 0.3 and a["p_oof_chosen"] == 0.0
    folds = pd.read_csv(out / "folds.csv")
    cl = pd.read_parquet(out / "dups.parquet")
    assert set(cl.columns) == {"product_id", "split", "cluster"}
    m = folds.merge(cl, on="product_id")
    assert (m.groupby("cluster").fold.nunique() == 1).all()  # no cluster across folds
    assert a["clusters"]["largest_cluster"] <= 5  # demo products have at most 5 variants
    # cached clusters, identical folds for the same seed
    first = (out / "folds.csv").read_bytes()
    stamp = (out / "dups.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="smart_product"):
        make_folds(cfg)  # same config and data: the folds stage itself is cached
        assert "folds: cached" in caplog.text
        (out / "meta.json").unlink()
        make_folds(cfg)  # recomputed folds, cached clusters
    assert "dups: cached" in caplog.text
    assert (out / "dups.json").stat().st_mtime_ns == stamp
    assert (out / "folds.csv").read_bytes() == first
    # explicit policies still work beside it
    make_folds(make_cfg(demo_dir, "folds.group_col=null"))
    assert json.loads((out / "meta.json").read_text())["policy"] == "plain stratified"


def test_make_folds_auto_stays_plain_on_a_random_split(demo_dir, tmp_path, make_cfg):
    """The same listings re-split at random (variants cross it): auto keeps plain folds."""
    sol = pd.read_csv(demo_dir / "solution.csv")
    raw = pd.concat(
        [
            pd.read_parquet(demo_dir / "train.parquet"),
            pd.read_parquet(demo_dir / "test.parquet").merge(sol, on="product_id"),
        ],
        ignore_index=True,
    )
    raw = raw.drop(columns=["category_name"])
    rng = np.random.default_rng(0)
    counts = raw.category_id.map(raw.category_id.value_counts())
    is_test = (rng.random(len(raw)) < 0.2) & (counts > 1)
    data = tmp_path / "random"
    (data / "images").mkdir(parents=True)
    raw[~is_test].to_parquet(data / "train.parquet")
    raw[is_test].drop(columns=["category_id"]).to_parquet(data / "test.parquet")
    cfg = make_cfg(data, "folds.dups.image_hamming=null")  # text pairs only: no images copied
    make_folds(cfg)
    meta = json.loads((tmp_path / "work" / "folds" / "meta.json").read_text())
    a = meta["dup_audit"]
    assert meta["policy"] == "plain stratified", meta["why"]
    assert a["p_test"] > 0.4 and a["p_oof_plain"] < a["p_test"] + 0.05


def test_dups_off_keeps_plain_folds(demo_dir, make_cfg, tmp_path):
    make_folds(make_cfg(demo_dir, "folds.dups=false"))
    meta = json.loads((tmp_path / "work" / "folds" / "meta.json").read_text())
    assert meta["policy"] == "plain stratified" and meta["dup_audit"] == {}
    assert not (tmp_path / "work" / "folds" / "dups.parquet").exists()


def test_has_dup_in_training_counts_other_folds_only():
    cluster = np.array([0, 0, 1, 1, 2, 3, 3])
    folds = np.array([0, 1, 2, 2, 0, -1, 1])
    # row 0/1: sibling in another fold; rows 2/3: same fold; row 4 alone; row 5 never validated;
    # row 6: sibling at fold -1 (in every training set)
    assert dups.has_dup_in_training(cluster, folds).tolist() == [True, True, False, False, False, False, True]
    assert dups.has_dup_in_train(np.array([0, 1]), np.array([1, 5])).tolist() == [True, False]


def test_a_class_that_is_one_product_is_never_validated():
    y = np.array([0] * 10 + [1] * 10 + [2, 2, 2])
    groups = np.r_[np.arange(20), [99, 99, 99]]  # class 2: three variants of one product
    folds = assign_folds(y, 5, 0, groups)
    assert (folds[-3:] == -1).all() and (folds[:20] >= 0).all()
