"""The errors stage (src/smart_product/errors.py): confused pairs by the F1 they cost, contact sheets,
per-class figures and label-noise suspects, read from the OOF files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_competition_like
from PIL import Image
from sklearn.metrics import f1_score

from smart_product.cli import main
from smart_product.data import DataError
from smart_product.errors import confusion, contact_sheet, make_errors, pair_costs, per_class


def test_pair_cost_is_the_weighted_f1_gained_by_righting_the_pair():
    rng = np.random.default_rng(0)
    C = 12
    y = rng.integers(0, C, 600)
    pred = np.where(rng.random(600) < 0.7, y, rng.integers(0, C, 600))
    base = f1_score(y, pred, average="weighted", zero_division=0)
    pairs = pair_costs(confusion(y, pred, C))
    assert (np.diff(pairs.f1_cost) <= 1e-12).all()  # ranked, largest first
    for p in pairs.head(5).itertuples():
        fixed = pred.copy()
        fixed[((y == p.a) & (pred == p.b)) | ((y == p.b) & (pred == p.a))] = y[
            ((y == p.a) & (pred == p.b)) | ((y == p.b) & (pred == p.a))
        ]
        assert p.a_as_b == ((y == p.a) & (pred == p.b)).sum() and p.b_as_a == ((y == p.b) & (pred == p.a)).sum()
        assert p.f1_cost == pytest.approx(f1_score(y, fixed, average="weighted", zero_division=0) - base, abs=1e-12)
    pc = per_class(confusion(y, pred, C))
    assert np.allclose(pc.f1, f1_score(y, pred, average=None, labels=np.arange(C), zero_division=0))
    off = confusion(y, pred, C) - np.diag(np.diag(confusion(y, pred, C)))
    assert (pc.mistaken_for.to_numpy() == off.argmax(1)).all()


def test_a_sheet_shows_a_no_photo_tile_where_the_photo_is_missing(tmp_path, demo_dir):
    photo = next((demo_dir / "images" / "train").glob("*.jpg"))
    rows = pd.DataFrame(
        {
            "image_path": [str(photo), None, str(tmp_path / "gone.jpg")],
            "title": ["a title", "another", "third"],
            "shop_title": ["shop", "shop", "shop"],
            "true": "1 a",
            "pred": "2 b",
            "p_pred": [0.9, 0.8, 0.7],
            "p_true": [0.05, 0.1, 0.2],
        }
    )
    path = tmp_path / "sheet.png"
    assert contact_sheet(path, "a -> b", [("true a -> b", rows), ("true b -> a", rows.head(0))], 4, 64) == 2
    with Image.open(path) as im:
        tall = im.size[1]
        assert im.size[0] > 400 and tall > 300
    text_only = rows.assign(image_path=None)  # a catalogue without photos: text cards, shorter
    assert contact_sheet(path, "a -> b", [("true a -> b", text_only), ("true b -> a", text_only)], 4, 64) == 6
    with Image.open(path) as im:
        assert im.size[1] < tall


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """A competition-like catalogue (60 classes of 24 rows, each named by its own words) with 6 rows of
    class a labelled b and 6 of b labelled a, then folds, TF-IDF features, two heads and the blend."""
    from smart_product.blend import run_blend
    from smart_product.config import load_config
    from smart_product.features import make_features
    from smart_product.folds import make_folds
    from smart_product.heads import train_heads

    root = tmp_path_factory.mktemp("swapped")
    data = make_competition_like(root / "data", n_classes=60, per_class=24, singletons=2, seed=1)
    train = pd.read_parquet(data / "train.parquet")
    a, b = 10_005, 10_006
    words = train.text_fields.map(lambda s: json.loads(s)["title"].split())
    second = {c: set(words[train.category_id == c].str[1]) for c in (a, b)}
    picked = {}
    for c, other in ((a, b), (b, a)):  # rows whose words tie them to their own class only: their title's
        # second word is not in the other class's titles (nor its own word), one row per second word
        # (two swapped rows alike would vouch for each other's wrong label through a kNN)
        taken = second[other]
        ok = words[(train.category_id == c) & words.map(lambda w, taken=taken: w[1] not in taken | {w[0]})]
        firsts = ok.map(lambda w: w[1]).drop_duplicates()
        assert len(firsts) >= 6, "the constructed catalogue gave too few distinct rows to swap"
        picked[c] = firsts.index[:6]
    rows_a, rows_b = picked[a], picked[b]
    train.loc[rows_a, "category_id"] = b
    train.loc[rows_b, "category_id"] = a
    train.to_parquet(data / "train.parquet", index=False)
    cfg = load_config(
        None,
        [
            f"out_dir={root / 'out'}",
            "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 64}}",
            "heads={lr_text: {kind: logreg, features: [tfidf], params: {C: 1.0}},"
            " knn_text: {kind: knn, features: [tfidf]}}",
            "blend.trials=20",
            "blend.procedures=[optuna_logloss, best_single]",
        ],
        str(data),
    )
    make_folds(cfg)
    make_features(cfg)
    train_heads(cfg)
    run_blend(cfg)
    swapped_ids = set(train.product_id[rows_a]) | set(train.product_id[rows_b])
    return cfg, {a, b}, swapped_ids


def test_swapped_classes_are_the_top_pair_and_their_rows_the_suspects(swapped, capsys):
    cfg, pair, swapped_ids = swapped
    assert main(["errors", "--data", cfg["data_dir"], "--config", "configs/cpu.yaml", f"out_dir={cfg['out_dir']}"]) == 0
    assert "errors: " in capsys.readouterr().out
    out = Path(cfg["out_dir"]) / "oof" / "errors"
    report = json.loads((out / "errors.json").read_text())
    top = report["pairs"][0]
    assert {top["a_id"], top["b_id"]} == pair and top["a_as_b"] + top["b_as_a"] >= 10
    assert report["source"] == "blend" and 1 <= len(report["pairs"]) <= 20
    md = (out / "errors.md").read_text()
    for p in report["pairs"]:  # every sheet linked and written
        assert f"]({p['sheet']})" in md and (out / p["sheet"]).stat().st_size > 10_000
    sus = pd.read_parquet(out / "suspects.parquet")
    assert swapped_ids <= set(sus.product_id)  # every swapped row is a suspect
    assert len(sus) < 0.1 * report["validated_rows"]  # and the suspects are not half the catalogue
    first = sus.head(len(swapped_ids))
    assert first.product_id.isin(swapped_ids).mean() >= 0.8  # the swapped rows rank near the top
    row = sus[sus.product_id.isin(swapped_ids)].iloc[0]
    assert {int(row.given), int(row.suggested)} == pair and row.p_suggested > row.p_given
    assert {"cluster_rows", "twin_rows", "twin_other_label"} <= set(sus.columns)
    per_class = {c["category_id"]: c for c in report["suspects"]["per_class"]}
    assert all(per_class[c]["suspects"] >= 6 for c in pair)
    worst = pd.DataFrame(report["classes"])
    assert set(worst.category_id.head(2)) == pair  # the two classes lose the most F1


def test_one_head_and_a_missing_one(swapped):
    cfg, pair, _ = swapped
    path = make_errors(cfg, "lr_text")
    report = json.loads((path.parent / "errors.json").read_text())
    assert report["source"] == "lr_text" and {report["pairs"][0]["a_id"], report["pairs"][0]["b_id"]} == pair
    with pytest.raises(DataError, match=r"oof/nohead: no finished OOF predictions \(`make train"):
        make_errors(cfg, "nohead")
